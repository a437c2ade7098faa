"""Write the SavedModel a recipe serves from, with its label names beside it."""

import json
import os
import shutil

import tensorflow as tf


def save(recipe, config, model, data, directory):
    """Export ``recipe``'s serving module for ``model`` to ``directory`` (chief only).

    The new export is written next to the old one and swapped in when complete, so a
    failure leaves the previous export intact.
    """
    # A fresh copy of the model: the trained one is compiled with Horovod's optimizer, whose
    # functions (with HorovodAllreduce ops) would otherwise be saved and make the export
    # unloadable where Horovod is not installed.
    clean_model = recipe.build_model(config, data)
    clean_model.set_weights(model.get_weights())
    serving = recipe.build_serving(config, clean_model, data)
    staging = directory.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    tf.saved_model.save(serving, staging, signatures=serving.signatures())
    with open(os.path.join(staging, "labels.json"), "w") as stream:
        json.dump({"class_names": list(data.class_names), "recipe": recipe.name}, stream,
                  indent=2)
    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.replace(staging, directory)
    return directory
