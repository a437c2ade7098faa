"""Pieces the classification recipes share."""

import tf_keras as keras


def build_loss(config):
    """Cross-entropy on integer labels and float32 logits."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_metrics(config):
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
