"""Local SGD (--sync=local_sgd, toolkit.worker.local_sgd): workers step alone and their
weights are averaged every local_steps steps; it resumes exactly and all-reduces
local_steps times less often."""

import os

import numpy as np
import pytest

from helpers import (TINY_IMAGE, event_steps, faults, horovodrun, kill_after_checkpoint, launch,
                     read_json, results, tiny_arguments)
from toolkit import recipe as recipe_lib

pytestmark = pytest.mark.multiprocess

STEPS_PER_EPOCH = 12
BASE = ["--recipe=image", "--np=2", *TINY_IMAGE, "--deterministic=true", "--export=false",
        "--confusion_matrix=false", "--augment=false"]
COMMON = BASE + ["--epochs=2", f"--max_steps_per_epoch={STEPS_PER_EPOCH}"]
# Plain SGD: averaging the weights after every step is then averaging the gradients.
# Four steps: the network has kinks (ReLU), so rounding differences that move
# an activation across one change a gradient by far more than rounding; over 8 steps that
# happened on one CPU (4.5e-5) and not on another (2.4e-7), over 4 steps on neither.
# float32: bfloat16 compute would round the two runs' float32 weights apart at each step.
PLAIN_SGD = BASE + ["--epochs=1", "--max_steps_per_epoch=4", "--optimizer=sgd", "--momentum=0",
                    "--base_learning_rate=0.05", "--warmup_epochs=0", "--mixed_precision=false"]


def final_weights(run_dir):
    """The trained weights (not the batch-norm statistics: the synchronous run's first
    batch ends with Horovod's broadcast of rank 0's, so they differ by design)."""
    import tensorflow as tf

    prefix = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_dtype_map()
            if name.startswith("model/") and "/moving_" not in name}


def largest_difference(first, second):
    assert first.keys() == second.keys()
    return max(float(np.max(np.abs(first[name] - second[name]))) for name in first)


def trained(tmp_path, name, arguments):
    run_dir = str(tmp_path / name)
    launch(arguments + [f"--run_dir={run_dir}"], timeout=300)
    return run_dir


@pytest.mark.timeout(600)
def test_averaging_every_step_is_synchronous_sgd_and_every_fourth_step_is_not(tmp_path):
    synchronous = final_weights(trained(tmp_path, "allreduce", PLAIN_SGD))
    every_step = final_weights(trained(tmp_path, "k1", PLAIN_SGD + [
        "--sync=local_sgd", "--local_steps=1"]))
    every_fourth = trained(tmp_path, "k4", PLAIN_SGD + ["--sync=local_sgd", "--local_steps=4"])
    rounding = largest_difference(synchronous, every_step)
    local = largest_difference(synchronous, final_weights(every_fourth))
    # Same updates, summed in another order: float32 rounding only.
    assert rounding < 1e-5, rounding
    # Four local steps between averages is another algorithm: the weights differ far more.
    assert local > 100 * max(rounding, 1e-7), (local, rounding)
    summary = read_json(os.path.join(every_fourth, "summary.json"))
    assert summary["weights_identical_on_all_ranks"]  # averaged before the end


@pytest.mark.timeout(600)
def test_local_sgd_all_reduces_local_steps_times_less_often(tmp_path):
    synchronous = trained(tmp_path, "allreduce", COMMON)
    local = trained(tmp_path, "local", COMMON + ["--sync=local_sgd", "--local_steps=4"])
    for epoch in (1, 2):
        every_step = event_steps(synchronous, "train", "epoch_allreduce_rounds")[epoch - 1]
        averaged = event_steps(local, "train", "epoch_allreduce_rounds")[epoch - 1]
        # One gradient all-reduce per step, and one averaging before each validation.
        assert every_step == STEPS_PER_EPOCH + 1
        assert averaged == STEPS_PER_EPOCH / 4 + 1
    # Bytes: gradients every step (and the batch-norm statistics before validation),
    # against all weights every 4 steps (and, before validation, with Adam's slots).
    sizes = checkpoint_bytes(local)
    gradients = sizes["model"] - sizes["statistics"]
    assert event_steps(synchronous, "train", "epoch_allreduce_megabytes")[1] == pytest.approx(
        (STEPS_PER_EPOCH * gradients + sizes["statistics"]) / 2 ** 20)
    assert event_steps(local, "train", "epoch_allreduce_megabytes")[1] == pytest.approx(
        (STEPS_PER_EPOCH / 4 * sizes["model"] + sizes["model"] + sizes["optimizer"]) / 2 ** 20)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", recipe_lib.names())
def test_every_recipe_trains_under_local_sgd(tmp_path, name):
    """Local SGD is the toolkit's, not a recipe's: every registered recipe trains with it
    on two workers, ends with one model on both, and all-reduces every other step."""
    run_dir = trained(tmp_path, name, [
        f"--recipe={name}", "--np=2", *tiny_arguments(name), "--epochs=1",
        "--max_steps_per_epoch=4", "--sync=local_sgd", "--local_steps=2", "--export=false"])
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["global_steps"] == 4 and summary["world_size"] == 2
    assert summary["weights_identical_on_all_ranks"]
    assert all(np.isfinite(value) for value in summary["validation"].values())
    # Averagings after steps 2 and 4, and the one before validation.
    assert event_steps(run_dir, "train", "epoch_allreduce_rounds") == {0: 4 / 2 + 1}


def checkpoint_bytes(run_dir):
    """Bytes of a run's floating-point model variables, of their batch-norm statistics,
    and of the optimizer's slots, from its newest checkpoint."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
        os.path.join(run_dir, "checkpoints")))
    sizes = {"model": 0, "statistics": 0, "optimizer": 0}
    shapes = reader.get_variable_to_shape_map()
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if not dtype.is_floating:
            continue
        size = int(np.prod(shapes[name])) * dtype.size
        if name.startswith("model/"):
            sizes["model"] += size
        if name.startswith("optimizer/_variables/"):  # its slots
            sizes["optimizer"] += size
        if name.startswith("model/") and "/moving_" in name:
            sizes["statistics"] += size
    return sizes


@pytest.mark.timeout(600)
def test_a_local_sgd_run_killed_mid_epoch_then_rerun_gives_identical_weights(tmp_path):
    """Adam's slots stay per worker between averages; a checkpoint (every 3 steps, not a
    multiple of 4) averages them too, and the uninterrupted run does the same there."""
    arguments = COMMON + ["--sync=local_sgd", "--local_steps=4",
                          "--local_sgd_warmup_epochs=0.25", "--checkpoint_every_steps=3"]
    reference = trained(tmp_path, "uninterrupted", arguments)
    expected = read_json(os.path.join(reference, "summary.json"))
    run_dir = str(tmp_path / "killed")
    kill_after_checkpoint(arguments, run_dir, 15)
    launch(arguments + [f"--run_dir={run_dir}"], timeout=300)
    resumed = read_json(os.path.join(run_dir, "summary.json"))
    assert resumed["resumed_from_step"] % STEPS_PER_EPOCH != 0, "resume was not mid-epoch"
    assert resumed["global_steps"] == expected["global_steps"] == 2 * STEPS_PER_EPOCH
    assert resumed["weights_sha256"] == expected["weights_sha256"]


@pytest.mark.timeout(300)
def test_an_averaging_gives_every_worker_the_mean_rank_0s_counters_and_all_verdicts():
    """One round of collectives (distributed.average_variables_gathering): floating-point
    variables become the mean over workers, counters rank 0's, and each worker's few
    integers (local SGD's non-finite verdicts) reach every worker in rank order."""
    by_rank = results(horovodrun(2, ["tests/workers/average_and_gather.py"]).stdout)
    assert sorted(by_rank) == [0, 1]
    for result in by_rank.values():
        assert result["weights"] == pytest.approx([1.5, 3.0, 10.0])  # [1, 2, 10], [2, 4, 10]
        assert result["counter"] == 100
        assert result["shares"] == [[0, 0], [1, 7]]
        assert result["bytes"] == 3 * 4  # the float variable only


@pytest.mark.timeout(300)
def test_a_nan_on_one_worker_stops_every_worker_at_the_next_averaging(tmp_path):
    """Rank 1's loss turns NaN at step 13: rank 1 skips that step alone (its own
    gradients), and the verdict reaches rank 0 at the averaging after step 16, where both
    stop; had rank 1 stopped alone, rank 0 would wait for it in that averaging."""
    import tensorflow as tf

    run_dir = str(tmp_path / "nan")
    result = launch(BASE + ["--epochs=2", "--max_steps_per_epoch=10", "--sync=local_sgd",
                            "--local_steps=4", "--checkpoint_every_steps=4",
                            "--stall_check_seconds=20", "--stall_shutdown_seconds=40",
                            f"--run_dir={run_dir}"],
                    check=False, env=faults(nan_at_step=13, nan_rank=1))
    assert result.returncode != 0
    assert "became NaN/Inf at global step 13" in result.stderr
    # Stopped at step 16, whose checkpoint is not written: the last good one stays.
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    assert latest.endswith("ckpt-12"), latest
    assert not os.path.exists(os.path.join(run_dir, "summary.json"))


@pytest.mark.timeout(300)
def test_nan_steps_skipped_under_local_sgd_are_counted_for_each_worker(tmp_path):
    """With on_nonfinite=skip, rank 1 alone skips step 13; the run goes on and
    summary.json counts the skip where it happened."""
    run_dir = str(tmp_path / "skip")
    launch(COMMON + ["--sync=local_sgd", "--local_steps=4", "--on_nonfinite=skip",
                     f"--run_dir={run_dir}"], timeout=300, env=faults(nan_at_step=13, nan_rank=1))
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["nonfinite_steps_skipped_per_rank"] == [0, 1]
    assert summary["nonfinite_steps_skipped"] == 1
    assert summary["global_steps"] == summary["planned_global_steps"] == 2 * STEPS_PER_EPOCH
    assert summary["weights_identical_on_all_ranks"]
