"""Every registered recipe builds and trains through the real path (Model Garden style)."""

import math
import os

import pytest

from conftest import read_json, train_single
from toolkit import recipe as recipe_lib


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(recipe_lib.UnknownRecipeError) as error:
        recipe_lib.get("nope")
    assert "known recipes: " + ", ".join(recipe_lib.names()) in str(error.value)


@pytest.mark.parametrize("name", recipe_lib.names())
def test_recipe_trains_two_steps_and_exports(name, run_dir):
    recipe = recipe_lib.get(name)
    arguments = [f"--{key}={value}" for key, value in recipe.tiny_overrides.items()]
    train_single(run_dir, name, arguments + ["--epochs=1", "--max_steps_per_epoch=2"])
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["global_steps"] == 2
    assert summary["world_size"] == 1
    assert all(math.isfinite(value) for value in summary["validation"].values())
    assert os.path.exists(os.path.join(run_dir, "export", "saved_model.pb"))
    config = read_json(os.path.join(run_dir, "config.json"))
    assert config["recipe"] == name and config["versions"]["horovod"] == "0.28.1"
