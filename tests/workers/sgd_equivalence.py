"""Run alone or under horovodrun by tests/test_multiprocess.py: train a linear classifier
through the toolkit's trainer with plain SGD on a fixed global batch, unshuffled.

    python tests/workers/sgd_equivalence.py RUN_DIR [key=value ...]

The recipe below is defined here, not registered: any object that fits the Recipe
contract can be trained. Its data is a fixed sequence of examples; worker r of n takes
examples r, r+n, ... and batches them in order, so that the global batch k holds
the same examples whatever n is. With no batch-coupled layers (no batch norm, no dropout)
and plain SGD, n workers must then reach the weights one worker reaches, if gradients are
averaged (not summed) and the learning rate follows the global batch.
"""

import dataclasses
import sys
import typing

import numpy as np

import toolkit  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from recipe_helpers import classification
from toolkit import config as config_lib
from toolkit import data as data_lib
from toolkit import recipe as recipe_lib
from toolkit.worker import train

FEATURES, CLASSES, TRAIN, VALIDATION = 8, 3, 512, 64


@dataclasses.dataclass
class LinearConfig(config_lib.TrainConfig):
    optimizer: typing.Literal["adam", "adamw", "sgd"] = "sgd"
    momentum: float = 0.0
    warmup_epochs: float = 0.0
    lr_decay: typing.Literal["cosine", "linear", "none"] = "none"
    base_learning_rate: float = 0.05


def examples(count, seed):
    generator = np.random.default_rng(seed)
    features = generator.normal(size=(count, FEATURES)).astype(np.float32)
    labels = np.argmax(features[:, :CLASSES], axis=1).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((features, labels)), count


def build_data(config, shard):
    (train_set, train_count), (validation_set, validation_count) = (
        examples(TRAIN, seed=1), examples(VALIDATION, seed=2))
    return data_lib.Data(
        train=shard.take(train_set, train_count).batch(config.batch_size_per_worker,
                                                       drop_remainder=True),
        validation=shard.take(validation_set, validation_count).batch(32),
        train_examples=shard.size(train_count), validation_examples=shard.size(validation_count),
        class_names=[str(index) for index in range(CLASSES)], description="linear test data")


def build_model(config, data):
    inputs = keras.Input((FEATURES,))
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(inputs))


RECIPE = recipe_lib.Recipe(
    name="linear", description="linear classifier for the SGD equivalence test",
    config_class=LinearConfig, build_data=build_data, build_model=build_model,
    build_loss=classification.build_loss, build_metrics=classification.build_metrics,
    build_serving=lambda config, model, data: None, tiny_overrides={})


def main():
    run_dir, overrides = sys.argv[1], dict(item.split("=", 1) for item in sys.argv[2:])
    config = config_lib.build(LinearConfig, dict(overrides, export="false",
                                                 confusion_matrix="false"))
    train.train(RECIPE, config, run_dir)


if __name__ == "__main__":
    main()
