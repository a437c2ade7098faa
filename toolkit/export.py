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
    serving = recipe.build_serving(config, model, data)
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
