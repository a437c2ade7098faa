"""The recipe contract and registry; every registered recipe trains through the real path
(Model Garden style)."""

import math
import os

import pytest

from helpers import read_json, tiny_arguments, train_single
from recipes import image
from toolkit import errors
from toolkit import recipe as recipe_lib


@pytest.mark.fast
def test_every_module_in_recipes_is_registered_and_unknown_names_list_them():
    folder = os.path.join(os.path.dirname(recipe_lib.__file__), "..", "recipes")
    modules = sorted(name[:-3] for name in os.listdir(folder)
                     if name.endswith(".py") and not name.startswith("_"))
    assert recipe_lib.names() == modules == ["bert", "image", "speech"]
    with pytest.raises(errors.UnknownRecipeError) as error:
        recipe_lib.get("imag")
    assert "known recipes: bert, image, speech" in str(error.value)
    assert "did you mean 'image'" in str(error.value)


@pytest.mark.fast
def test_a_recipe_whose_functions_do_not_fit_the_contract_is_refused():
    def build_data(config):  # the contract passes (config, shard)
        raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"build_data must take \(config, shard\), but "
                                        r".*build_data takes \(config\)"):
        recipe_lib.Recipe(
            name="broken", description="", config_class=image.ImageConfig,
            build_data=build_data, build_model=image.build_model,
            build_loss=image.RECIPE.build_loss, build_metrics=image.RECIPE.build_metrics,
            build_serving=image.build_serving, tiny_overrides={})
    with pytest.raises(TypeError, match="config_class must be a dataclass deriving from"):
        recipe_lib.Recipe(
            name="broken", description="", config_class=dict, build_data=image.build_data,
            build_model=image.build_model, build_loss=image.RECIPE.build_loss,
            build_metrics=image.RECIPE.build_metrics, build_serving=image.build_serving,
            tiny_overrides={})
    with pytest.raises(errors.ConfigError, match="unknown config key 'widht'"):
        recipe_lib.Recipe(
            name="broken", description="", config_class=image.ImageConfig,
            build_data=image.build_data, build_model=image.build_model,
            build_loss=image.RECIPE.build_loss, build_metrics=image.RECIPE.build_metrics,
            build_serving=image.build_serving, tiny_overrides={"widht": "8"})


@pytest.mark.parametrize("name", recipe_lib.names())
def test_recipe_trains_two_steps_and_exports(name, run_dir):
    train_single(run_dir, name, tiny_arguments(name) + ["--epochs=1", "--max_steps_per_epoch=2"])
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["global_steps"] == 2
    assert summary["world_size"] == 1
    assert all(math.isfinite(value) for value in summary["validation"].values())
    assert os.path.exists(os.path.join(run_dir, "export", "1", "saved_model.pb"))
    config = read_json(os.path.join(run_dir, "config.json"))
    assert config["recipe"] == name and config["versions"]["horovod"] == "0.28.1"
    assert config["runtime"]["horovod_cycle_time_ms"] == 5.0  # a CPU worker's
