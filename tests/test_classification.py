"""The classification recipes' loss: plain or label-smoothed cross-entropy."""

import numpy as np
import pytest
import tensorflow as tf

from recipe_helpers import classification
from recipes import bert
from recipes import image
from recipes import speech
from toolkit import config as config_lib

pytestmark = pytest.mark.fast

LOGITS = np.array([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 3.0, -2.0]], np.float32)
LABELS = np.array([0, 3])


def _expected(smoothing):
    """Mean over the batch of -sum_j q_j log p_j, q = (1 - s) one-hot + s / classes."""
    classes = LOGITS.shape[1]
    log_p = LOGITS - np.log(np.exp(LOGITS).sum(axis=1, keepdims=True))
    targets = np.full(LOGITS.shape, smoothing / classes)
    targets[np.arange(len(LABELS)), LABELS] += 1 - smoothing
    return float(-(targets * log_p).sum(axis=1).mean())


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_the_loss_is_cross_entropy_against_smoothed_targets(smoothing):
    config = config_lib.build(image.ImageConfig, {"label_smoothing": str(smoothing)})
    loss = classification.build_loss(config)
    # Labels come as [batch] or [batch, 1], logits in bfloat16 under mixed precision.
    for labels in (LABELS, LABELS[:, None]):
        value = float(loss(tf.constant(labels), tf.constant(LOGITS)))
        assert value == pytest.approx(_expected(smoothing), rel=1e-5)
    value = float(loss(tf.constant(LABELS), tf.cast(LOGITS, tf.bfloat16)))
    assert value == pytest.approx(_expected(smoothing), rel=2e-2)


def test_every_classification_recipe_takes_the_key():
    for config_class in (image.ImageConfig, bert.BertConfig, speech.SpeechConfig):
        config = config_lib.build(config_class, {"label_smoothing": "0.2"})
        assert classification.build_loss(config).label_smoothing == 0.2


def test_a_recipe_config_without_the_key_gets_plain_cross_entropy():
    """Recipes written before the key (a TrainConfig of their own) keep working."""
    loss = classification.build_loss(config_lib.TrainConfig())
    value = float(loss(tf.constant(LABELS), tf.constant(LOGITS)))
    assert value == pytest.approx(_expected(0.0), rel=1e-5)
