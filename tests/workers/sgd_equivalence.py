"""Run alone or under horovodrun by tests/test_multiprocess.py: train a linear classifier
through the toolkit's trainer with plain SGD on a fixed global batch.

    python tests/workers/sgd_equivalence.py RUN_DIR [key=value ...]

The recipe below is defined here, not registered: any object that fits the Recipe
contract can be trained. Its data goes through the toolkit's training stream, in which
global batch k holds the same examples whatever the number of workers n is (see
toolkit.data). With no batch-coupled layers (no batch norm, no dropout)
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
    # float32: what is compared is the distributed arithmetic; bfloat16 compute (auto's
    # choice on CPUs that have it) would round the runs apart at every step.
    mixed_precision: typing.Literal["auto", "true", "false"] = "false"


def examples(count, seed):
    generator = np.random.default_rng(seed)
    features = generator.normal(size=(count, FEATURES)).astype(np.float32)
    labels = np.argmax(features[:, :CLASSES], axis=1).astype(np.int32)
    return data_lib.Examples((features, labels), count)


def build_data(config, shard):
    validation, validation_count = data_lib.evaluation_pipeline(
        examples(VALIDATION, seed=2), shard=shard, config=config)
    return data_lib.Data(
        train=data_lib.training_stream(examples(TRAIN, seed=1), shard=shard, config=config),
        validation=validation, validation_examples=validation_count,
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
