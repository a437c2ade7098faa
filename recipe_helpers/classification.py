"""Loss, metrics and the serving head of every classification recipe."""

import typing

import tensorflow as tf
import tf_keras as keras

from toolkit import config as config_lib


def build_loss(config: config_lib.TrainConfig) -> keras.losses.Loss:
    """Cross-entropy on integer labels and float32 logits."""
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
