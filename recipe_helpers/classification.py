"""Config, loss, metrics and the serving head of every classification recipe."""

import dataclasses
import typing

import tensorflow as tf
import tf_keras as keras

from toolkit import config as config_lib


@dataclasses.dataclass
class ClassifierConfig(config_lib.TrainConfig):
    """The keys every classification recipe adds to the shared ones."""
    # Trains toward (1 - s) on the true class and s / classes spread over all (Szegedy et
    # al. 2016); 0 = plain cross-entropy. The loss logged (and `val_loss`) includes it.
    label_smoothing: float = 0.0

    def validate(self) -> None:
        super().validate()
        config_lib.require(self, "label_smoothing", 0 <= self.label_smoothing < 1,
                           "a number in [0, 1)")


class SmoothedCrossEntropy(keras.losses.Loss):
    """Cross-entropy of integer labels, smoothed toward the uniform distribution."""

    def __init__(self, label_smoothing: float, name: str = "smoothed_cross_entropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, labels, logits):
        logits = tf.cast(logits, tf.float32)
        labels = tf.reshape(tf.cast(labels, tf.int32), tf.shape(logits)[:-1])
        targets = tf.one_hot(labels, tf.shape(logits)[-1])
        return keras.losses.categorical_crossentropy(targets, logits, from_logits=True,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def build_loss(config: config_lib.TrainConfig) -> keras.losses.Loss:
    """Cross-entropy on integer labels and float32 logits, label-smoothed if configured.
    A recipe whose config is not a ClassifierConfig (one written before the key) gets
    plain cross-entropy."""
    if getattr(config, "label_smoothing", 0.0):
        return SmoothedCrossEntropy(config.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_metrics(config: config_lib.TrainConfig) -> typing.List[keras.metrics.Metric]:
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


class ClassifierServing(tf.Module):
    """Base of every recipe's export: turns the model's logits into the outputs a client
    reads, the same for all recipes. A subclass adds ``tf.function`` s that take raw
    inputs, turn them into model inputs and return ``self.classify(model_inputs)``, and
    lists them in ``signatures()``.

    Outputs: ``label`` (the class name), ``label_id`` (int32) and ``probabilities``
    (float32 softmax, also under mixed precision), each with the batch as first axis.
    """

    def __init__(self, model: keras.Model, class_names: typing.Sequence[str]):
        super().__init__()
        self.model = model
        self.class_names = tf.constant(list(class_names))

    def classify(self, model_inputs) -> typing.Dict[str, tf.Tensor]:
        return self.outputs(self.model(model_inputs, training=False))

    def outputs(self, logits) -> typing.Dict[str, tf.Tensor]:
        """The outputs for the model's logits, [batch, classes]."""
        logits = tf.cast(logits, tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        label_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"label": tf.gather(self.class_names, label_ids), "label_id": label_ids,
                "probabilities": probabilities}

    def signatures(self) -> typing.Dict[str, typing.Callable[..., typing.Any]]:
        raise NotImplementedError("a recipe's serving module lists its signatures")
