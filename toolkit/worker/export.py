"""Write the SavedModel a recipe serves from, with its label names beside it."""

import json
import os
import shutil
import time

import tensorflow as tf
import tf_keras as keras


def save(recipe, config, model, data, directory):
    """Export ``recipe``'s serving module for ``model`` as the next version under
    ``directory`` (chief only); return the version's folder.

    ``directory`` is laid out as a TF Serving model base path: one folder per version,
    named by an integer (``export/1/``, ``export/2/`` after a resumed run exports again),
    each a SavedModel with its ``labels.json``. The version is written under a name TF
    Serving does not take for a version (``.partial-<n>``) and renamed when complete, so a
    server watching the folder never loads half an export and a failed export leaves the
    earlier versions as they were.
    """
    # A fresh copy of the model: the trained one is compiled with Horovod's optimizer, whose
    # functions (with HorovodAllreduce ops) would otherwise be saved and make the export
    # unloadable where Horovod is not installed.
    started = time.monotonic()
    print(f"[toolkit] exporting the model to {directory} ...", flush=True)
    # Built and traced in float32 whatever the run computed in: the weights are float32
    # under every mixed policy, and a server without bfloat16 arithmetic would otherwise
    # emulate it (slowly, and rounding each request differently depending on what it is
    # batched with).
    trained_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        clean_model = recipe.build_model(config, data)
        clean_model.set_weights(model.get_weights())
        serving = recipe.build_serving(config, clean_model, data)
        os.makedirs(directory, exist_ok=True)
        version = max(versions(directory), default=0) + 1
        staging = os.path.join(directory, f".partial-{version}")
        shutil.rmtree(staging, ignore_errors=True)
        tf.saved_model.save(serving, staging, signatures=serving.signatures())
    finally:
        keras.mixed_precision.set_global_policy(trained_policy)
    with open(os.path.join(staging, "labels.json"), "w") as stream:
        json.dump({"class_names": list(data.class_names), "recipe": recipe.name,
                   "version": version}, stream, indent=2)
    final = os.path.join(directory, str(version))
    os.replace(staging, final)
    print(f"[toolkit] export {final} written in {time.monotonic() - started:.0f} s", flush=True)
    return final


def versions(directory):
    """The version numbers exported under ``directory`` (TF Serving's base path)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def latest(directory):
    """The newest version's folder under ``directory``, or None."""
    found = versions(directory)
    return os.path.join(directory, str(found[-1])) if found else None
