"""Run alone by tests/test_multiprocess.py: what an elastic reset does to gradients
accumulated since the last all-reduce (``backward_passes_per_step=2``, one worker).

Prints ``RESULT {"weights_unchanged_by_first_batch", "cleared_equals_fresh",
"uncleared_equals_fresh"}``: a model that accumulated batch A, then had its sums
cleared (as the trainer does at every elastic reset) and trained on B and C, must hold
the weights a fresh model reaches on B and C; without the clearing it would not.
"""

import json

import numpy as np

import toolkit  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from toolkit import config as config_lib
from toolkit.worker import distributed


def model_and_optimizer(config):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    optimizer = distributed.wrap_optimizer(keras.optimizers.SGD(0.5), config)
    model.compile(optimizer=optimizer, loss="mse")
    return model, optimizer


def main():
    distributed.init()
    config = config_lib.build(config_lib.TrainConfig, {"backward_passes_per_step": "2"})
    generator = np.random.default_rng(0)
    a, b, c = ((generator.normal(size=(8, 4)).astype(np.float32),
                generator.normal(size=(8, 2)).astype(np.float32)) for _ in range(3))

    fresh, _ = model_and_optimizer(config)
    for batch in (b, c):
        fresh.train_on_batch(*batch)

    outcomes = {}
    for clear in (True, False):
        model, optimizer = model_and_optimizer(config)
        initial = [weight.copy() for weight in model.get_weights()]
        model.train_on_batch(*a)
        outcomes["weights_unchanged_by_first_batch"] = all(
            np.array_equal(old, new) for old, new in zip(initial, model.get_weights()))
        if clear:
            distributed.clear_accumulated_gradients(optimizer)
        for batch in (b, c):
            model.train_on_batch(*batch)
        outcomes["cleared_equals_fresh" if clear else "uncleared_equals_fresh"] = all(
            np.allclose(mine, theirs, rtol=1e-6) for mine, theirs in zip(
                model.get_weights(), fresh.get_weights()))
    print("RESULT " + json.dumps(outcomes), flush=True)


if __name__ == "__main__":
    main()
