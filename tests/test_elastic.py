"""Elastic training: the world grows and shrinks while training goes on, on one plan."""

import json
import os
import signal
import socket

import numpy as np
import psutil
import pytest
import tensorflow as tf

from helpers import (TINY_IMAGE, checkpoint_steps, kill_session, launch, read_json,
                     start_launch, wait_for, worker_pids)

pytestmark = pytest.mark.multiprocess


def three_local_host_names():
    """Three names for this machine that horovodrun treats as three hosts."""
    address = next(entry.address for name, entries in psutil.net_if_addrs().items()
                   for entry in entries if entry.family == socket.AF_INET and name != "lo")
    return ["localhost", "127.0.0.1", address]


def trainable_kernels(run_dir, step):
    """The model's kernels (trainable weights) in checkpoint ``ckpt-<step>``."""
    reader = tf.train.load_checkpoint(os.path.join(run_dir, "checkpoints", f"ckpt-{step}"))
    names = sorted(name for name in reader.get_variable_to_shape_map()
                   if name.startswith("model/") and "/kernel/.ATTRIBUTES" in name
                   and "/.OPTIMIZER_SLOT/" not in name)
    assert names
    return [reader.get_tensor(name) for name in names]


def finish_after_killing_rank_2(process, run_dir, timeout):
    """SIGKILL rank 2's worker, let the job finish without it, return its summary.json."""
    os.kill(worker_pids(run_dir)[2], signal.SIGKILL)
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-5000:]
    return read_json(os.path.join(run_dir, "summary.json"))


@pytest.mark.timeout(600)
def test_the_world_grows_and_shrinks_with_one_schedule_and_identical_weights(tmp_path):
    """Two workers; a third host is added to the hostfile (the world grows to 3), then
    that worker is killed and its host removed (it shrinks back to 2). The joining
    worker starts in a world larger than the starting one: it must still use the run's
    learning-rate schedule, derived from the fixed global batch, not its own world.
    Gradients are accumulated over 2 batches, so commits and resets must fall between
    updates. (Here the survivors learn of the lost worker at a commit, with nothing
    accumulated; what a reset does to half-done sums is tested in test_multiprocess.)"""
    names = three_local_host_names()
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"{name} slots=1\n" for name in names[:2]))
    run_dir = str(tmp_path / "elastic")
    epochs, steps = 6, 30
    process = start_launch(
        ["--recipe=image", "--np=2", f"--hostfile={hostfile}",
         "--elastic", "--min_np=2", "--max_np=3", f"--run_dir={run_dir}",
         "--global_batch_size=96", "--batch_size_per_worker=32", f"--epochs={epochs}",
         f"--max_steps_per_epoch={steps}", "--max_validation_examples=300",
         "--backward_passes_per_step=2", "--elastic_commit_steps=6",
         "--checkpoint_every_steps=6", "--intra_op_threads=1",
         "--export=false"])

    def trained_past(step):
        return wait_for(lambda: max(checkpoint_steps(run_dir), default=0) >= step, timeout=180)

    try:
        assert wait_for(lambda: len(worker_pids(run_dir)) == 2, timeout=180)
        assert trained_past(10)
        hostfile.write_text("".join(f"{name} slots=1\n" for name in names))
        assert wait_for(lambda: len(worker_pids(run_dir)) == 3, timeout=120), "never grew"
        # Three workers train (and commit) for a while: checkpoints come every 6 steps.
        assert trained_past(max(checkpoint_steps(run_dir)) + 12)
        hostfile.write_text("".join(f"{name} slots=1\n" for name in names[:2]))
        summary = finish_after_killing_rank_2(process, run_dir, timeout=500)
    finally:
        kill_session(process)
    resets = summary["elastic_resets"]
    sizes = [reset["world_size"] for reset in resets]
    assert sizes[0] == 2 and sizes[-1] == 2 and 3 in sizes, sizes
    for reset in resets:
        # After every reset: identical weights, and one learning rate on every rank.
        assert reset["weights_identical_on_all_ranks"], reset
        assert len(set(reset["learning_rate_by_rank"])) == 1, reset
    steps_at_reset = [reset["global_step"] for reset in resets]
    assert steps_at_reset == sorted(steps_at_reset)
    assert [world["world_size"] for world in summary["world_sizes"]] == [
        size for index, size in enumerate(sizes) if index == 0 or sizes[index - 1] != size]
    # The fixed global batch keeps the plan in steps, whatever the world size was.
    assert summary["global_steps"] == summary["planned_global_steps"] == epochs * steps
    assert summary["weights_identical_on_all_ranks"]
    assert summary["validation"]["accuracy"] > 0.5  # the model is valid, and learned
    # Updates went on after the last reset (a worker left with Horovod's counter past
    # its all-reduce point would never all-reduce or update again).
    before, after = checkpoint_steps(run_dir)[-2:]
    assert before > steps_at_reset[-1]
    assert not all(np.array_equal(old, new) for old, new in zip(
        trainable_kernels(run_dir, before), trainable_kernels(run_dir, after)))


@pytest.mark.timeout(300)
def test_a_run_folder_the_workers_refuse_stops_the_whole_elastic_job(tmp_path):
    """The folder holds a run on other classes, which only the workers can see (the
    launcher does not load the data). horovodrun would take the refusal for a failed host
    and go on with the other worker, which would then write into the folder."""
    run_dir = tmp_path / "other_classes"
    run_dir.mkdir()
    previous = {"recipe": "image", "config": {}, "class_names": ["cat", "dog"]}
    (run_dir / "config.json").write_text(json.dumps(previous))
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"{name} slots=1\n" for name in three_local_host_names()[:2]))
    result = launch(["--recipe=image", "--np=2", f"--hostfile={hostfile}", "--elastic",
                     "--min_np=1", "--max_np=2", f"--run_dir={run_dir}", *TINY_IMAGE,
                     "--epochs=1", "--max_steps_per_epoch=5", "--export=false"],
                    check=False, timeout=240)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "was trained on classes ['cat', 'dog']" in result.stderr
    assert "the elastic job was stopped" in result.stderr
    assert json.loads((run_dir / "config.json").read_text()) == previous  # untouched
    assert sorted(os.listdir(run_dir)) == ["config.json"]


@pytest.mark.timeout(480)
def test_a_local_sgd_run_that_loses_a_worker_goes_on_from_an_averaging_point(tmp_path):
    """Local SGD, three workers averaging every 4 steps, commits asked every 6 steps; one
    worker is killed. The survivors must go back to a commit taken where the weights had
    just been averaged (a multiple of 4, or an epoch end), all hold the same weights, and
    finish the plan."""
    names = three_local_host_names()
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"{name} slots=1\n" for name in names))
    run_dir = str(tmp_path / "local_sgd")
    epochs, steps, local_steps = 3, 30, 4
    process = start_launch(
        ["--recipe=image", "--np=3", f"--hostfile={hostfile}",
         "--elastic", "--min_np=2", "--max_np=3", f"--run_dir={run_dir}",
         "--global_batch_size=96", "--batch_size_per_worker=32", f"--epochs={epochs}",
         f"--max_steps_per_epoch={steps}", "--max_validation_examples=300",
         "--sync=local_sgd", f"--local_steps={local_steps}", "--elastic_commit_steps=6",
         "--checkpoint_every_steps=6", "--intra_op_threads=1", "--export=false"])
    try:
        assert wait_for(lambda: len(worker_pids(run_dir)) == 3, timeout=180)
        assert wait_for(lambda: max(checkpoint_steps(run_dir), default=0) >= 14,
                        timeout=240)
        # Its host is set aside for good; the other two hosts are enough (MIN_NP=2).
        summary = finish_after_killing_rank_2(process, run_dir, timeout=400)
    finally:
        kill_session(process)
    resets = summary["elastic_resets"]
    assert [reset["world_size"] for reset in resets] == [3, 2], resets
    restart = resets[1]["global_step"]
    assert restart > 0 and (restart % local_steps == 0 or restart % steps == 0), resets
    assert all(reset["weights_identical_on_all_ranks"] for reset in resets), resets
    assert summary["global_steps"] == summary["planned_global_steps"] == epochs * steps
    assert summary["weights_identical_on_all_ranks"]
    assert summary["validation"]["accuracy"] > 0.5
    # config.json describes the last world: 2 workers sharing the fixed global batch.
    config = read_json(os.path.join(run_dir, "config.json"))
    assert (config["world_size"], config["global_batch_size"]) == (2, 96)
