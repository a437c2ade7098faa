"""The one place that reconciles Horovod 0.28.1 with TensorFlow >= 2.16.

Two facts about the stack force this module to exist:

* Horovod's Keras API needs Keras 2. Since TensorFlow 2.16, Keras 2 is the
  separate ``tf_keras`` package, and ``tf.keras`` only resolves to it when
  ``TF_USE_LEGACY_KERAS=1`` is set *before TensorFlow is first imported*. Without
  it a single process trains (misleadingly) but two ranks fail with
  ``'Variable' object has no attribute 'ref'``. Importing this module sets the
  variable, and ``toolkit/__init__.py`` imports it first, so every rank and every
  test gets it.
* ``horovod.tensorflow.keras`` and its ``callbacks`` module run
  ``from keras import backend as K`` at import time. Under TF >= 2.16 plain
  ``keras`` is Keras 3, whose backend lacks ``get_value``/``set_value``/
  ``constant``, so ``MetricAverageCallback`` and the LR callbacks would crash.
  :func:`import_horovod_keras` makes ``keras`` resolve to ``tf_keras`` for exactly
  the duration of that import and restores whatever was there afterwards.
"""

import contextlib
import importlib
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"


@contextlib.contextmanager
def _keras_resolves_to_tf_keras():
    """Temporarily alias the ``keras`` module (and ``keras.backend``) to tf_keras."""
    import tf_keras

    saved = {name: sys.modules.get(name) for name in ("keras", "keras.backend")}
    sys.modules["keras"] = tf_keras
    sys.modules["keras.backend"] = tf_keras.backend
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def import_horovod_keras():
    """Import and return ``horovod.tensorflow.keras`` bound to tf_keras' backend."""
    if "horovod.tensorflow.keras" in sys.modules:
        return sys.modules["horovod.tensorflow.keras"]
    with _keras_resolves_to_tf_keras():
        return importlib.import_module("horovod.tensorflow.keras")
