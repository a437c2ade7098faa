"""Run under horovodrun by tests/test_multiprocess.py: build a trainer session for a
model with dropout and print the dropout masks this rank draws in training mode.

    python tests/workers/dropout_masks.py RUN_DIR DETERMINISTIC
"""

import dataclasses
import hashlib
import json
import sys

import sgd_equivalence as linear
import tensorflow as tf
import tf_keras as keras

from toolkit import config as config_lib
from toolkit import run_folder
from toolkit.worker import faults
from toolkit.worker import train


def build_model(config, data):
    inputs = keras.Input((linear.FEATURES,))
    dropped = keras.layers.Dropout(0.5)(inputs)
    return keras.Model(inputs, keras.layers.Dense(linear.CLASSES)(dropped))


def main():
    run_dir, deterministic = sys.argv[1:3]
    recipe = dataclasses.replace(linear.RECIPE, build_model=build_model)
    config = config_lib.build(linear.LinearConfig, {"deterministic": deterministic,
                                                    "export": "false"})
    paths = run_folder.RunPaths.of(run_dir)
    world, chosen = train.set_up_world(config, paths, verbose=False)
    session = train.build_session(recipe, config, world, paths, chosen, faults.Faults())
    [dropout] = [layer for layer in session.model.layers
                 if isinstance(layer, keras.layers.Dropout)]
    masks = tf.function(lambda ones: dropout(ones, training=True))(tf.ones([16, 64]))
    weights = hashlib.sha256(session.model.get_weights()[0].tobytes()).hexdigest()
    print("RESULT " + json.dumps({
        "rank": world.rank, "weights": weights,
        "masks": hashlib.sha256(masks.numpy().tobytes()).hexdigest()}), flush=True)


if __name__ == "__main__":
    main()
