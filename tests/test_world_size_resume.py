"""A run requeued on another number of workers goes on with the plan it started.

Two workers are stopped inside their second checkpoint save (so the run resumes from the
first, mid-epoch, at step 4) and the run folder is resumed on one and on three workers.
With a fixed global batch the resumed runs must train exactly the global batches of the
uninterrupted run (the same example ids), at the same learning rate, to the same last
step. Without one, the global batch follows the world: the run goes on at the same point
of its epoch, counted in examples, on the new world's plan and learning rate.
"""

import os
import shutil

import pytest

from helpers import (TINY_IMAGE, event_steps, faults, kill_inside_checkpoint_save, launch,
                     read_json, recorded_examples)

pytestmark = pytest.mark.multiprocess

STEPS_PER_EPOCH, EPOCHS, EVERY = 10, 2, 4
COMMON = ["--recipe=image", *TINY_IMAGE, "--log_every_steps=1", f"--epochs={EPOCHS}",
          f"--max_steps_per_epoch={STEPS_PER_EPOCH}", f"--checkpoint_every_steps={EVERY}",
          "--max_train_examples=2400", "--export=false"]
FIXED = COMMON + ["--global_batch_size=48"]
FOLLOWING = COMMON + ["--batch_size_per_worker=24"]  # after TINY_IMAGE's 32: it wins


def run_recorded(arguments, run_dir, np, records):
    os.makedirs(records, exist_ok=True)
    launch(arguments + [f"--np={np}", f"--run_dir={run_dir}"], timeout=300,
           env=faults(record_examples=records))
    return read_json(os.path.join(run_dir, "summary.json"))


def stopped_at_step_4(arguments, run_dir, marker):
    """Two workers, killed inside the 2nd checkpoint save (ckpt-8): ckpt-4 is the last."""
    interrupted = kill_inside_checkpoint_save(
        arguments + ["--np=2", f"--run_dir={run_dir}"], marker, count=2)
    assert interrupted.endswith("ckpt-8")


@pytest.fixture(scope="module")
def fixed_batch_runs(tmp_path_factory):
    """The uninterrupted two-worker run and the stopped one, with a fixed global batch."""
    root = tmp_path_factory.mktemp("fixed")
    reference = run_recorded(FIXED, str(root / "uninterrupted"), 2, str(root / "records"))
    stopped_at_step_4(FIXED, str(root / "stopped"), str(root / "marker"))
    return root, reference


@pytest.mark.timeout(900)
@pytest.mark.parametrize("np", [1, 3])
def test_fixed_global_batch_resumed_on_another_np_trains_the_same_batches(
        fixed_batch_runs, tmp_path, np):
    root, reference = fixed_batch_runs
    run_dir = str(tmp_path / "resumed")
    shutil.copytree(root / "stopped", run_dir)
    resumed = run_recorded(FIXED, run_dir, np, str(tmp_path / "records"))

    planned = EPOCHS * STEPS_PER_EPOCH
    assert resumed["resumed_from_step"] == 4
    assert resumed["global_steps"] == resumed["planned_global_steps"] == planned
    assert resumed["world_sizes"] == [
        {"world_size": 2, "global_batch_size": 48, "from_global_step": 0},
        {"world_size": np, "global_batch_size": 48, "from_global_step": 4}]
    # The same examples in every global batch after the resume (the rest of epoch 1 and
    # the start of epoch 2), in the same order.
    expected_ids = recorded_examples(str(root / "records"))
    resumed_ids = recorded_examples(str(tmp_path / "records"))
    for step in range(4, 14):
        assert resumed_ids[step] == expected_ids[step], f"global step {step}"
    # The same learning rate at every step (logged after each step, for the next one).
    expected_rates = event_steps(str(root / "uninterrupted"), "train", "step/learning_rate")
    rates = event_steps(run_dir, "train", "step/learning_rate")
    for step in range(5, planned + 1):
        assert rates[step] == pytest.approx(expected_rates[step], rel=1e-6), f"step {step}"
    # Batch normalisation sees other per-worker batches, so the weights differ a little.
    assert abs(resumed["validation"]["accuracy"]
               - reference["validation"]["accuracy"]) <= 0.05


@pytest.mark.timeout(900)
def test_following_global_batch_resumed_on_more_workers_goes_on_at_the_same_point(tmp_path):
    """24 per worker: 48 examples a step on two workers, 72 on three. Step 4 of the
    two-worker plan is 192 examples into epoch 1, which is step 2 of the three-worker
    plan (144 examples; nothing is skipped, 48 are seen again)."""
    run_dir = str(tmp_path / "run")
    stopped_at_step_4(FOLLOWING, run_dir, str(tmp_path / "marker"))
    reference_dir = str(tmp_path / "three_workers")
    reference = run_recorded(FOLLOWING, reference_dir, 3, str(tmp_path / "reference"))
    resumed = run_recorded(FOLLOWING, run_dir, 3, str(tmp_path / "records"))

    assert resumed["resumed_from_step"] == 2
    assert resumed["global_steps"] == resumed["planned_global_steps"] == (
        reference["planned_global_steps"])
    assert resumed["world_sizes"] == [
        {"world_size": 2, "global_batch_size": 48, "from_global_step": 0},
        {"world_size": 3, "global_batch_size": 72, "from_global_step": 2}]
    # From there on it is the three-worker run: its batches and its learning rates.
    expected_ids = recorded_examples(str(tmp_path / "reference"))
    resumed_ids = recorded_examples(str(tmp_path / "records"))
    for step in range(2, 12):
        assert resumed_ids[step] == expected_ids[step], f"global step {step}"
    expected_rates = event_steps(reference_dir, "train", "step/learning_rate")
    rates = event_steps(run_dir, "train", "step/learning_rate")
    for step in range(3, resumed["planned_global_steps"] + 1):
        assert rates[step] == pytest.approx(expected_rates[step], rel=1e-6), f"step {step}"


def test_a_fixed_global_batch_that_does_not_split_over_np_is_refused_before_launch(tmp_path):
    run_dir = str(tmp_path / "run")
    result = launch(FIXED + ["--np=5", f"--run_dir={run_dir}", "--dry_run"], check=False)
    assert result.returncode == 2
    assert "global_batch_size=48 cannot be split evenly over NP=5" in result.stderr
    assert not os.path.exists(run_dir)
