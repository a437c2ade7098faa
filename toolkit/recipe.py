"""What a recipe is, and the registry of recipes by name.

A recipe is single-process Keras: a typed config, a data builder, a model builder, the
loss and metrics, and a serving module for the export. It never imports Horovod; the
toolkit shards its data, wraps its optimizer and runs it on every worker.

To add a recipe, write ``recipes/<name>.py`` that defines ``RECIPE = Recipe(...)`` and add
one line to ``RECIPE_MODULES`` below. Modules are imported only when their recipe is used,
so an image run does not pay for importing transformers.
"""

import dataclasses
import difflib
import importlib
import typing

from toolkit import config as config_lib

RECIPE_MODULES = {
    "bert": "recipes.bert",
    "image": "recipes.image",
    "speech": "recipes.speech",
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The pieces of single-process Keras code the toolkit needs to train a model.

    ``build_data(config, shard) -> toolkit.data.Data``: this worker's datasets.
    ``build_model(config, data) -> keras.Model``: uncompiled, outputs in float32.
    ``build_loss(config)`` and ``build_metrics(config)``: as passed to ``compile``.
    ``build_serving(config, model, data) -> tf.Module``: exported as the SavedModel; its
    ``signatures()`` method names the functions to export, ``serving_default`` among them,
    which take raw inputs (encoded images, strings, waveforms).
    ``build_reports(config, model, data) -> dict`` (optional): extra evaluations run on the
    chief after training (e.g. accuracy per group on a test split), saved in summary.json
    under ``reports``; it must not perform collectives.
    ``check_data(config)`` (optional): quick checks of the configured data (paths exist,
    files readable, labels valid) that the launcher runs before starting any worker; it
    raises ``toolkit.data.DataError``.
    ``tiny_overrides``: config overrides for a seconds-long run through the real code
    (the tests train every registered recipe with them).
    """

    name: str
    description: str
    config_class: typing.Type[config_lib.TrainConfig]
    build_data: typing.Callable
    build_model: typing.Callable
    build_loss: typing.Callable
    build_metrics: typing.Callable
    build_serving: typing.Callable
    tiny_overrides: typing.Dict[str, str]
    build_reports: typing.Optional[typing.Callable] = None
    check_data: typing.Optional[typing.Callable] = None


class UnknownRecipeError(ValueError):
    """The recipe name is not registered."""


def names():
    return sorted(RECIPE_MODULES)


def get(name):
    """Import and return the recipe registered as ``name``."""
    if name not in RECIPE_MODULES:
        message = f"unknown recipe {name!r}; known recipes: {', '.join(names())}"
        nearest = difflib.get_close_matches(name, names(), n=1)
        if nearest:
            message += f" (did you mean {nearest[0]!r}?)"
        raise UnknownRecipeError(message)
    recipe = importlib.import_module(RECIPE_MODULES[name]).RECIPE
    if recipe.name != name:
        raise RuntimeError(f"{RECIPE_MODULES[name]} registers recipe {recipe.name!r}, "
                           f"expected {name!r}")
    return recipe
