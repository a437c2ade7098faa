"""Recipes: plain single-process Keras code that the toolkit trains across workers.

Every public module here is a recipe, registered under its module name (see
``toolkit/recipe.py``); their shared helpers live in ``recipe_helpers/``. ``toolkit`` is
imported first so that ``TF_USE_LEGACY_KERAS=1`` is set before any recipe imports
TensorFlow.
"""

import toolkit  # noqa: F401
