"""Recipes: plain single-process Keras code that the toolkit trains across workers.

They are registered by name in ``toolkit/recipe.py``. ``toolkit`` is imported first so
that ``TF_USE_LEGACY_KERAS=1`` is set before any recipe imports TensorFlow.
"""

import toolkit  # noqa: F401
