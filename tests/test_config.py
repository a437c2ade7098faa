"""Typed configs: overrides parsed by type, unknown keys and bad values named."""

import dataclasses
import os
import typing

import pytest

from recipes import image
from toolkit import config as config_lib
from toolkit import errors

pytestmark = pytest.mark.fast


def test_overrides_are_parsed_by_declared_type():
    config = config_lib.build(image.ImageConfig, {
        "epochs": "3", "base_learning_rate": "0.01", "augment": "false",
        "optimizer": "sgd", "data_dir": "/data/x"})
    assert config.epochs == 3 and isinstance(config.epochs, int)
    assert config.base_learning_rate == 0.01
    assert config.augment is False
    assert config.optimizer == "sgd"
    assert config.data_dir == "/data/x"


def test_defaults_are_kept_when_not_overridden():
    assert config_lib.build(image.ImageConfig, {}) == image.ImageConfig()


def test_unknown_key_names_the_nearest_valid_key():
    with pytest.raises(errors.ConfigError) as error:
        config_lib.build(image.ImageConfig, {"epoch": "2"})
    assert "unknown config key 'epoch'" in str(error.value)
    assert "did you mean 'epochs'" in str(error.value)


@pytest.mark.parametrize("key, value, expected", [
    ("epochs", "two", "expects an integer, got 'two'"),
    ("base_learning_rate", "fast", "expects a number, got 'fast'"),
    ("augment", "maybe", "expects a boolean"),
    ("optimizer", "adagrad", "valid values: 'adam', 'adamw', 'sgd'"),
])
def test_wrong_type_names_key_value_and_what_is_valid(key, value, expected):
    with pytest.raises(errors.ConfigError) as error:
        config_lib.build(image.ImageConfig, {key: value})
    assert key in str(error.value) and expected in str(error.value)


@pytest.mark.parametrize("key, value", [("epochs", "-1"), ("batch_size_per_worker", "-1"),
                                        ("channels", "2"), ("base_learning_rate", "0"),
                                        ("label_smoothing", "1"), ("label_smoothing", "-0.1")])
def test_out_of_range_values_are_rejected(key, value):
    with pytest.raises(errors.ConfigError, match=key):
        config_lib.build(image.ImageConfig, {key: value})


@pytest.mark.parametrize("key", ["checkpoint_every_steps", "max_steps_per_epoch"])
def test_steps_that_would_split_an_accumulated_update_are_rejected(key):
    """A checkpoint between two accumulated batches would lose the first one's gradients
    (the accumulators are not saved), so a resumed run would differ."""
    with pytest.raises(errors.ConfigError) as error:
        config_lib.build(image.ImageConfig, {"backward_passes_per_step": "2", key: "5"})
    assert key in str(error.value) and "multiple of backward_passes_per_step (2)" in str(
        error.value)
    config_lib.build(image.ImageConfig, {"backward_passes_per_step": "2", key: "6"})


@pytest.mark.parametrize("key, value", [("backward_passes_per_step", "2"), ("adasum", "true")])
def test_local_sgd_refuses_what_would_change_its_all_reduce(key, value):
    with pytest.raises(errors.ConfigError) as error:
        config_lib.build(image.ImageConfig, {"sync": "local_sgd", key: value})
    assert key in str(error.value) and "sync=local_sgd" in str(error.value)
    config_lib.build(image.ImageConfig, {key: value})  # fine when synchronous
    with pytest.raises(errors.ConfigError, match="local_steps"):
        config_lib.build(image.ImageConfig, {"sync": "local_sgd", "local_steps": "0"})


def test_override_syntax_is_checked():
    assert config_lib.split_overrides(["--epochs=2", "--data-dir=/x=y"]) == {
        "epochs": "2", "data_dir": "/x=y"}
    with pytest.raises(errors.ConfigError, match="--key=value"):
        config_lib.split_overrides(["epochs=2"])


def test_every_field_has_a_parseable_type():
    for field_type in config_lib.field_types(image.ImageConfig).values():
        assert field_type in (int, float, bool, str) or (
            typing.get_origin(field_type) is typing.Literal)


def test_describe_lists_every_key():
    lines = "\n".join(config_lib.describe(image.ImageConfig))
    for field in dataclasses.fields(image.ImageConfig):
        assert f"--{field.name}=" in lines


@pytest.mark.parametrize("recipe, overrides, steps, epochs, why", [
    ("image", {}, 468, 12, "Fashion-MNIST"),
    ("image", {"data_dir": "x"}, 10, 60, "10 steps per epoch"),
    ("image", {"data_dir": "x"}, 100, 20, "at least 8 epochs and 2,000 steps"),
    ("image", {"data_dir": "x"}, 1000, 8, "at most 60 epochs"),
    ("bert", {}, 312, 1, "20,000 WordNet definitions"),
    ("bert", {"train_file": "a.csv", "validation_file": "b.csv"}, 100, 3,
     "about 6,400 examples"),
    ("bert", {"train_file": "a.csv", "validation_file": "b.csv"}, 1000, 2,
     "about 64,000 examples"),
    ("speech", {}, 26, 40, "generated clips"),
    ("speech", {"data_dir": "x"}, 664, 10, "664 steps per epoch"),
])
def test_epochs_left_to_the_recipe_follow_the_data(recipe, overrides, steps, epochs, why):
    """epochs=0 (every recipe's default): the demo sets keep their tuned schedules, and a
    user's data gets the field's usual one for its size, with the reason."""
    import types

    from toolkit import recipe as recipe_lib
    from toolkit.worker import train

    chosen = recipe_lib.get(recipe)
    config = config_lib.build(chosen.config_class, overrides)
    data = types.SimpleNamespace(train=types.SimpleNamespace(global_batch_size=64))
    count, note = train.choose_epochs(chosen, config, data, steps)
    assert count == epochs and note.startswith(f"{epochs} epochs: ") and why in note, note
    given = config_lib.build(chosen.config_class, dict(overrides, epochs="5"))
    assert train.choose_epochs(chosen, given, data, steps) == (5, "5 epochs (--epochs)")


@pytest.mark.parametrize("setting, native, gpu, policy", [
    ("false", True, None, "float32"),
    ("auto", False, None, "float32"),  # emulated bfloat16 is slower than float32
    ("auto", True, None, "mixed_bfloat16"),
    ("auto", True, "/physical_device:GPU:0", "mixed_bfloat16"),  # never float16 unasked
    ("true", False, None, "mixed_bfloat16"),
    ("true", False, "/physical_device:GPU:0", "mixed_float16"),
])
def test_mixed_precision_auto_takes_bfloat16_only_where_the_hardware_has_it(
        monkeypatch, setting, native, gpu, policy):
    from toolkit.worker import runtime

    monkeypatch.setattr(runtime, "native_bfloat16", lambda device: native)
    config = config_lib.build(image.ImageConfig, {"mixed_precision": setting})
    assert runtime.precision_policy(config, gpu) == policy


def test_native_bfloat16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    from toolkit.worker import runtime

    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(runtime, "CPUINFO", str(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not runtime.native_bfloat16(None)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n")
    assert runtime.native_bfloat16(None)


@pytest.mark.parametrize("overrides, gpus, environment", [
    ({}, False, "5.0"),  # CPU workers: Horovod's 1 ms polling costs them compute
    ({}, True, "1.0"),  # GPU hosts: Horovod's own default
    ({"cycle_time_ms": "2.5"}, False, "2.5"),  # the user's value wins
    ({"cycle_time_ms": "2.5", "autotune": "true"}, True, "2.5"),
    ({"autotune": "true"}, False, None),  # left unset: set, autotune could not tune it
])
def test_horovod_cycle_time_suits_the_device(monkeypatch, overrides, gpus, environment):
    from toolkit.worker import runtime

    monkeypatch.setattr(runtime, "_nvidia_device_files", lambda: gpus)
    for name in ("HOROVOD_CYCLE_TIME", "HOROVOD_AUTOTUNE", "HOROVOD_STALL_CHECK_TIME_SECONDS",
                 "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    config = config_lib.build(image.ImageConfig, overrides)
    chosen = runtime.configure_horovod(config, paths=None)
    assert os.environ.get("HOROVOD_CYCLE_TIME") == environment
    assert chosen == float(environment or 1.0)
