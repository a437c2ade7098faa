"""Runs that die, stall, fill the disk, go NaN, lose their launcher or find a damaged
checkpoint stop cleanly and keep their last good state."""

import math
import os
import signal
import socket
import subprocess
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from helpers import (PROJECT_ROOT, PYTHON, TINY_IMAGE, assert_nothing_left, checkpoint_steps,
                     environment, faults, kill_inside_checkpoint_save, kill_session, launch,
                     read_json, start_launch, train_single, wait_for, worker_pids)

pytestmark = pytest.mark.multiprocess


def long_run(run_dir, *extra):
    return ["--recipe=image", "--np=2", f"--run_dir={run_dir}", *TINY_IMAGE, "--epochs=50",
            "--max_steps_per_epoch=40", *extra]


@pytest.mark.timeout(200)
def test_a_dead_worker_ends_the_job_quickly_naming_it(tmp_path):
    run_dir = str(tmp_path / "dead")
    process = start_launch(long_run(run_dir))
    try:
        assert wait_for(lambda: len(worker_pids(run_dir)) == 2, timeout=120)
        time.sleep(2)  # let training get going
        killed_at = time.time()
        os.kill(worker_pids(run_dir)[1], signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=90)
        elapsed = time.time() - killed_at
    finally:
        kill_session(process)
    assert process.returncode != 0
    assert elapsed < 60, elapsed
    assert "worker rank 1 on host localhost failed first (killed by SIGKILL)" in stderr
    assert_nothing_left(run_dir)


@pytest.mark.timeout(200)
def test_a_hung_worker_is_detected_and_the_job_stopped_with_a_diagnosis(tmp_path):
    """Rank 1 hangs inside step 15 (alive, its Horovod thread running, but never reaching
    the allreduce: stuck I/O, a deadlock). Without the toolkit's watchdog every rank
    waits forever."""
    run_dir = str(tmp_path / "hung")
    process = start_launch(long_run(run_dir, "--stall_check_seconds=5",
                                    "--stall_shutdown_seconds=10"),
                           env=faults(stall_at_step=15, stall_rank=1))
    try:
        stdout, stderr = process.communicate(timeout=150)
    finally:
        kill_session(process)
    assert process.returncode != 0
    assert "rank 1: no batch has finished for" in stderr
    assert "more than stall_shutdown_seconds=10" in stderr
    assert "(last finished global step: 14)" in stderr
    # The launcher's one-line diagnosis, from the worker's exit code.
    assert "[launch] the job stalled: no worker finished a batch for longer than " \
           "stall_shutdown_seconds" in stderr, stderr[-3000:]
    assert read_json(os.path.join(run_dir, "config.json"))["workers"]
    assert_nothing_left(run_dir)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("accumulation", [1, 2])
def test_nan_stops_every_worker_at_the_same_step_and_keeps_the_last_checkpoint(
        tmp_path, accumulation):
    """Rank 1's loss turns NaN at step 13. With gradient accumulation over 2 batches,
    step 13 is not all-reduced: its NaN reaches the other rank in step 14's all-reduce,
    and both stop there together (a verdict on rank 1's own gradients at step 13 would
    stop it alone and leave rank 0 waiting in step 14)."""
    run_dir = str(tmp_path / "nan")
    result = launch(["--recipe=image", "--np=2", f"--run_dir={run_dir}", *TINY_IMAGE,
                     "--epochs=2", "--max_steps_per_epoch=10", "--checkpoint_every_steps=4",
                     f"--backward_passes_per_step={accumulation}",
                     "--stall_check_seconds=20", "--stall_shutdown_seconds=40"],
                    check=False, env=faults(nan_at_step=13, nan_rank=1))
    assert result.returncode != 0
    stopped_at = 13 if accumulation == 1 else 14
    assert f"became NaN/Inf at global step {stopped_at}" in result.stderr
    assert "last good checkpoint is" in result.stderr and "ckpt-12" in result.stderr
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    assert latest.endswith("ckpt-12")
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name
    assert not os.path.exists(os.path.join(run_dir, "summary.json"))


@pytest.mark.timeout(300)
def test_nan_steps_can_be_skipped_on_every_worker(tmp_path):
    run_dir = str(tmp_path / "skip")
    launch(["--recipe=image", "--np=2", f"--run_dir={run_dir}", *TINY_IMAGE, "--epochs=2",
            "--max_steps_per_epoch=10", "--on_nonfinite=skip"],
           env=faults(nan_at_step=13, nan_rank=0))
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["nonfinite_steps_skipped"] == 1
    assert summary["global_steps"] == summary["planned_global_steps"] == 20
    assert summary["weights_identical_on_all_ranks"]
    assert all(math.isfinite(value) for value in summary["validation"].values())


@pytest.mark.timeout(300)
def test_slow_checkpoint_and_export_writes_are_waited_for_not_taken_for_a_stall(tmp_path):
    """The chief's first checkpoint and its export each take 15 s longer than
    stall_shutdown_seconds=10 while the other rank waits for them: the run must finish,
    with both written, instead of being stopped as hung."""
    run_dir = str(tmp_path / "slow")
    result = launch(["--recipe=image", "--np=2", f"--run_dir={run_dir}", *TINY_IMAGE,
                     "--epochs=1", "--max_steps_per_epoch=6", "--checkpoint_every_steps=3",
                     "--stall_check_seconds=5", "--stall_shutdown_seconds=10"],
                    check=False, env=faults(slow_checkpoint_seconds=15, slow_export_seconds=15))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 has been writing for" in result.stderr
    assert checkpoint_steps(run_dir) == [3, 6]
    assert os.path.exists(os.path.join(run_dir, "export", "1", "saved_model.pb"))
    assert read_json(os.path.join(run_dir, "summary.json"))["global_steps"] == 6


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs, so that the test can fill it up (needs root, as CI has)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("TOOLKIT_REQUIRE_MULTIHOST") == "1":
            raise RuntimeError(f"cannot mount a tmpfs: {mounted.stderr}")
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.mark.timeout(400)
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(small_disk):
    run_dir = str(small_disk / "run")
    arguments = ["--recipe=image", "--np=2", f"--run_dir={run_dir}", *TINY_IMAGE,
                 "--epochs=3", "--max_steps_per_epoch=40", "--checkpoint_every_steps=10",
                 "--export=false", "--log_every_steps=1000"]
    process = start_launch(arguments)
    filler = small_disk / "filler"
    try:
        pointer = os.path.join(run_dir, "checkpoints", "checkpoint")
        assert wait_for(lambda: os.path.exists(pointer), timeout=150)
        # Fill the disk: the next checkpoint cannot be written.
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
        stdout, stderr = process.communicate(timeout=150)
    finally:
        kill_session(process)
    assert process.returncode != 0
    assert "No space left on device" in stdout + stderr
    kept = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    assert kept is not None
    filler.unlink()
    launch(arguments)  # the same command resumes from the checkpoint that was kept
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["resumed_from_step"] == int(kept.rsplit("-", 1)[1]) > 0
    assert summary["global_steps"] == summary["planned_global_steps"]


@pytest.mark.timeout(400)
def test_a_kill_while_a_checkpoint_is_being_written_keeps_the_previous_one(tmp_path):
    run_dir = str(tmp_path / "kill")
    marker = str(tmp_path / "paused-in-save")
    arguments = ["--recipe=image", "--np=2", f"--run_dir={run_dir}", *TINY_IMAGE,
                 "--epochs=2", "--max_steps_per_epoch=20", "--checkpoint_every_steps=5",
                 "--export=false"]
    # The chief pauses inside its 3rd checkpoint save, after the files of ckpt-15 are
    # written and before the pointer moves to them; the whole job is killed right there.
    interrupted = kill_inside_checkpoint_save(arguments, marker, count=3, timeout=180)
    assert interrupted.endswith("ckpt-15")
    assert os.path.exists(interrupted + ".index"), "the kill did not land inside the save"
    assert_nothing_left(run_dir)
    # The pointer still names the last complete checkpoint, which restores.
    assert checkpoint_steps(run_dir)[-1] == 10
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    assert tf.train.load_checkpoint(latest).get_variable_to_shape_map()
    launch(arguments)
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["resumed_from_step"] == 10
    assert summary["global_steps"] == summary["planned_global_steps"] == 40


@pytest.mark.timeout(300)
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    run_dir = str(tmp_path / "damaged")
    arguments = TINY_IMAGE + ["--max_steps_per_epoch=5", "--export=false"]
    train_single(run_dir, "image", arguments + ["--epochs=2"])
    assert checkpoint_steps(run_dir) == [5, 10]
    newest = os.path.join(run_dir, "checkpoints", "ckpt-10")
    for name in os.listdir(os.path.join(run_dir, "checkpoints")):
        if name.startswith("ckpt-10.data"):
            with open(os.path.join(run_dir, "checkpoints", name), "r+b") as stream:
                stream.truncate(16)  # a disk that lied about the write
    result = train_single(run_dir, "image", arguments + ["--epochs=3"])
    assert f"skipped unreadable checkpoints: {newest}" in result.stdout
    assert "resuming from ckpt-5" in result.stdout
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["resumed_from_step"] == 5
    assert summary["global_steps"] == summary["planned_global_steps"] == 15


LIFELINE_WORKER = textwrap.dedent("""
    import time
    from toolkit.worker import guards
    guards.start_lifeline(interval_seconds=0.2, misses_allowed=3)
    print("working", flush=True)
    time.sleep(120)
""")


@pytest.mark.timeout(120)
def test_a_worker_whose_launcher_is_gone_exits_by_itself():
    """Workers started over ssh outlive a killed launcher unless the lifeline ends them.
    The lifeline watches the address horovodrun gives every worker (its rendezvous
    server); here a plain TCP server plays that part and then goes away."""
    server = socket.create_server(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    worker = subprocess.Popen(
        [PYTHON, "-c", LIFELINE_WORKER], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env=environment(HOROVOD_GLOO_RENDEZVOUS_ADDR="127.0.0.1",
                        HOROVOD_GLOO_RENDEZVOUS_PORT=str(port), HOROVOD_RANK="3"))
    try:
        assert worker.stdout.readline() == "working\n"
        time.sleep(2)  # ten checks while the launcher is there: the worker keeps working
        assert worker.poll() is None
        server.close()
        gone_at = time.time()
        worker.wait(timeout=30)
        elapsed = time.time() - gone_at
    finally:
        if worker.poll() is None:
            worker.kill()
        server.close()
    assert worker.returncode == 75
    assert elapsed < 5, elapsed
    assert f"rank 3: lost the launcher at 127.0.0.1:{port}; exiting" in worker.stderr.read()
