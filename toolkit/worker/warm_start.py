"""Warm starts: a new run's model starts from an earlier run's trained weights.

``--init_from=<RUN_DIR or checkpoint path>`` (TrainConfig.init_from) is read once, by the
chief, when the new run starts at step 0 (a run that resumes from its own checkpoint
ignores it); the broadcast that follows gives every worker the same weights. Only the
model's weights are taken: the optimizer, step counter and plan start fresh.

The earlier run must be of the same recipe (its ``config.json`` says which) and build
the same architecture: every model variable must be found in the checkpoint with the
same shape, or the run stops with a message saying which. When the class lists differ,
``--new_head=true`` keeps everything but the classification head (the recipe's
``head_layer``), which keeps its fresh initialisation for the new classes; without it the
run is refused naming the classes that differ.
"""

import dataclasses
import json
import os
import typing

import tensorflow as tf

from toolkit import errors


@dataclasses.dataclass(frozen=True)
class Source:
    checkpoint: str  # the checkpoint prefix read
    recipe: typing.Optional[str]  # from the earlier run's config.json, when there is one
    class_names: typing.Optional[typing.List[str]]


def find(init_from: str) -> Source:
    """The checkpoint and run description ``init_from`` names: a run folder (its newest
    checkpoint), a checkpoints folder, or a checkpoint prefix."""
    path = os.path.abspath(init_from)
    run_dir = None
    if os.path.isdir(os.path.join(path, "checkpoints")):
        run_dir, folder = path, os.path.join(path, "checkpoints")
        prefix = tf.train.latest_checkpoint(folder)
    elif os.path.isdir(path):
        folder = path
        prefix = tf.train.latest_checkpoint(folder)
    else:
        folder, prefix = os.path.dirname(path), path
        if not tf.io.gfile.exists(prefix + ".index"):
            prefix = None
    if prefix is None:
        raise errors.ConfigError(
            f"init_from={init_from}: no checkpoint there; give a run folder (RUN_DIR with "
            "checkpoints/), its checkpoints folder, or a checkpoint prefix such as "
            "RUN_DIR/checkpoints/ckpt-12")
    if run_dir is None and os.path.basename(os.path.normpath(folder)) == "checkpoints":
        run_dir = os.path.dirname(os.path.normpath(folder))
    recipe, class_names = None, None
    config_path = os.path.join(run_dir, "config.json") if run_dir else ""
    if config_path and os.path.exists(config_path):
        with open(config_path) as stream:
            saved = json.load(stream)
        recipe, class_names = saved.get("recipe"), saved.get("class_names")
    return Source(checkpoint=prefix, recipe=recipe, class_names=class_names)


def check(source: Source, init_from: str, recipe_name: str, class_names: typing.Sequence[str],
          new_head: bool) -> bool:
    """Raise ConfigError when ``source`` cannot start this run; return whether the
    classification head must be left out."""
    if source.recipe is not None and source.recipe != recipe_name:
        raise errors.ConfigError(
            f"init_from={init_from} is a run of recipe {source.recipe!r}; this run is "
            f"{recipe_name!r}: a warm start needs the same recipe and architecture")
    if source.class_names is None or list(source.class_names) == list(class_names):
        return new_head
    if not new_head:
        missing = [name for name in class_names if name not in source.class_names]
        dropped = [name for name in source.class_names if name not in class_names]
        detail = "; ".join(part for part in (
            f"new here: {missing}" if missing else "",
            f"not here: {dropped}" if dropped else "",
            "same classes in another order" if not (missing or dropped) else "") if part)
        raise errors.ConfigError(
            f"init_from={init_from} was trained on other classes ({detail}); "
            "--new_head=true starts a new classification head for this data's classes")
    return True


def is_head(variable: tf.Variable, head_layer: str) -> bool:
    return head_layer in variable.name.split("/")[:-1]


def load(source: Source, init_from: str, model: typing.Any, source_model: typing.Any,
         leave_out_head: bool, head_layer: str) -> int:
    """Read ``source``'s model weights into ``source_model`` (an uncompiled model built
    for its classes) and copy them into ``model``, all but the head's when
    ``leave_out_head``; integer variables (random generator states) stay this run's own.
    Returns the number of variables taken."""
    try:
        status = tf.train.Checkpoint(model=source_model).read(source.checkpoint)
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise errors.ConfigError(
            f"init_from={init_from}: the checkpoint {source.checkpoint} lacks some of this "
            f"model's variables; the architecture differs ({str(error)[:300]})") from None
    except (ValueError, tf.errors.InvalidArgumentError) as error:
        raise errors.ConfigError(
            f"init_from={init_from}: the checkpoint's shapes differ from this model's; the "
            f"architecture differs ({str(error)[:300]})") from None
    taken = 0
    for saved, variable in zip(source_model.weights, model.weights):
        if not variable.dtype.is_floating or (leave_out_head
                                                and is_head(variable, head_layer)):
            continue
        if saved.shape != variable.shape:
            raise errors.ConfigError(
                f"init_from={init_from}: {variable.name} has shape {variable.shape} here and "
                f"{saved.shape} in the checkpoint; the architecture differs")
        variable.assign(saved)
        taken += 1
    return taken
