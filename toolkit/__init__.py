"""Distributed training toolkit for TensorFlow/Keras on Horovod.

``keras_compat`` is imported first on purpose: it sets ``TF_USE_LEGACY_KERAS=1``,
which only takes effect if it happens before TensorFlow is imported anywhere.
"""

from toolkit import keras_compat  # noqa: F401  (must precede any TensorFlow import)
