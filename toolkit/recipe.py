"""What a recipe is, and the registry of recipes by name.

A recipe is single-process Keras: a typed config, a data builder, a model builder, the
loss and metrics, and a serving module for the export. It never imports Horovod; the
toolkit shards its data, wraps its optimizer and runs it on every worker.

The registry is the ``recipes`` package: ``recipes/<name>.py`` defining
``RECIPE = Recipe(name="<name>", ...)`` is the recipe ``<name>``; nothing else needs
editing. Modules are imported only when their recipe is used, so an image run does not
pay for importing transformers (nor the launcher for TensorFlow before it needs it: the
types below are annotations only).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import pkgutil
import typing

from toolkit import config as config_lib
from toolkit import errors

if typing.TYPE_CHECKING:
    import tf_keras as keras

    from toolkit import data as data_lib

ConfigT = typing.TypeVar("ConfigT", bound=config_lib.TrainConfig)

RECIPES_PACKAGE = "recipes"


class Serving(typing.Protocol):
    """What ``build_serving`` returns: a ``tf.Module`` that is saved as the export.

    ``signatures()`` maps signature names to the ``tf.function`` s to export under them,
    ``"serving_default"`` among them. They take what a client naturally has (encoded
    images, strings, waveforms) and return ``label``, ``label_id`` and ``probabilities``
    (see ``recipe_helpers.classification.ClassifierServing``).
    """

    def signatures(self) -> typing.Dict[str, typing.Callable[..., typing.Any]]: ...


@dataclasses.dataclass(frozen=True)
class Recipe(typing.Generic[ConfigT]):
    """The pieces of single-process Keras code the toolkit needs to train a model.

    Each ``build_*`` function takes the recipe's own config (an instance of
    ``config_class``) first; their signatures are checked when the recipe is created.
    """

    name: str  # the module's name in recipes/, and RECIPE= on the command line
    description: str  # one line, shown by make config
    config_class: typing.Type[ConfigT]  # a dataclass deriving from TrainConfig
    # This worker's datasets for this worker's shard (see toolkit.data.make_pipeline).
    build_data: typing.Callable[[ConfigT, data_lib.Shard], data_lib.Data]
    # Uncompiled; float32 outputs (logits) even under mixed precision.
    build_model: typing.Callable[[ConfigT, data_lib.Data], keras.Model]
    # As passed to compile().
    build_loss: typing.Callable[[ConfigT], keras.losses.Loss]
    build_metrics: typing.Callable[[ConfigT], typing.List[keras.metrics.Metric]]
    # The export: a tf.Module for a clean copy of the trained model (see Serving).
    build_serving: typing.Callable[[ConfigT, keras.Model, data_lib.Data], Serving]
    # Overrides for a seconds-long run through the real code; the tests train every
    # registered recipe with them.
    tiny_overrides: typing.Mapping[str, str]
    # Extra evaluations on the chief after training (e.g. accuracy per group on a test
    # split), saved in summary.json under "reports". Must not perform collectives.
    build_reports: typing.Optional[
        typing.Callable[[ConfigT, keras.Model, data_lib.Data],
                        typing.Dict[str, typing.Any]]] = None
    # Quick checks of the configured data that the launcher runs before starting any
    # worker (paths exist, files readable, labels valid); raises errors.DataError.
    check_data: typing.Optional[typing.Callable[[ConfigT], None]] = None
    # The number of epochs when the config's ``epochs`` is 0 (the recipes' default), for
    # the data at hand: (epochs, why), the why printed in the run's first line.
    choose_epochs: typing.Optional[
        typing.Callable[[ConfigT, data_lib.Data, int], typing.Tuple[int, str]]] = None
    # The name of the layer whose outputs are the classes: --new_head re-initialises its
    # variables (those with this name in their path) when warm-starting on other classes.
    head_layer: str = "logits"

    def __post_init__(self):
        if not (isinstance(self.config_class, type)
                and issubclass(self.config_class, config_lib.TrainConfig)):
            raise TypeError(f"recipe {self.name!r}: config_class must be a dataclass "
                            f"deriving from TrainConfig, got {self.config_class!r}")
        for field, arguments in _ARGUMENTS.items():
            function = getattr(self, field)
            if function is None and field in ("build_reports", "check_data", "choose_epochs"):
                continue
            _check_signature(self.name, field, function, arguments)
        config_lib.build(self.config_class, self.tiny_overrides)


# The parameters each function of the contract is called with, by name.
_ARGUMENTS = {
    "build_data": ("config", "shard"),
    "build_model": ("config", "data"),
    "build_loss": ("config",),
    "build_metrics": ("config",),
    "build_serving": ("config", "model", "data"),
    "build_reports": ("config", "model", "data"),
    "check_data": ("config",),
    "choose_epochs": ("config", "data", "steps_per_epoch"),
}


def _check_signature(recipe_name, field, function, arguments):
    """Raise TypeError unless ``function`` can be called with ``arguments`` positionally."""
    if not callable(function):
        raise TypeError(f"recipe {recipe_name!r}: {field} must be a function, got {function!r}")
    try:
        inspect.signature(function).bind(*arguments)
    except TypeError:
        raise TypeError(f"recipe {recipe_name!r}: {field} must take ({', '.join(arguments)}), "
                        f"but {function.__qualname__} takes "
                        f"{inspect.signature(function)}") from None


def names() -> typing.List[str]:
    """The registered recipe names: the public modules of the recipes package."""
    package = importlib.import_module(RECIPES_PACKAGE)
    return sorted(module.name for module in pkgutil.iter_modules(package.__path__)
                  if not module.ispkg and not module.name.startswith("_"))


def get(name: str) -> Recipe:
    """Import and return the recipe registered as ``name``."""
    known = names()
    if name not in known:
        message = f"unknown recipe {name!r}; known recipes: {', '.join(known)}"
        nearest = difflib.get_close_matches(name, known, n=1)
        if nearest:
            message += f" (did you mean {nearest[0]!r}?)"
        raise errors.UnknownRecipeError(message)
    module = importlib.import_module(f"{RECIPES_PACKAGE}.{name}")
    recipe = getattr(module, "RECIPE", None)
    if not isinstance(recipe, Recipe) or recipe.name != name:
        raise TypeError(f"{module.__file__} must define RECIPE = Recipe(name={name!r}, ...)")
    return recipe
