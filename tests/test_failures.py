"""Runs that die, stall, fill the disk or go NaN stop cleanly and keep their last good state."""

import math
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import PROJECT_ROOT, PYTHON, TINY_IMAGE, environment, launch, read_json
from test_resume_and_export import process_ids_mentioning

pytestmark = pytest.mark.multiprocess


def start(arguments):
    return subprocess.Popen([PYTHON, "-m", "toolkit.launch", *arguments], cwd=PROJECT_ROOT,
                            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_for(condition, timeout, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def worker_pids(run_dir):
    """{rank: pid} once the run has written config.json."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return {}
    return {worker["rank"]: worker["pid"] for worker in read_json(path).get("workers", [])}


def assert_nothing_left(run_dir):
    assert wait_for(lambda: not process_ids_mentioning(run_dir), timeout=30), (
        f"processes left behind: {process_ids_mentioning(run_dir)}")


def long_run(run_dir, *extra):
    return ["--recipe=image", "--np=2", f"--run_dir={run_dir}", *TINY_IMAGE, "--epochs=50",
            "--max_steps_per_epoch=40", *extra]


@pytest.mark.timeout(200)
def test_a_dead_worker_ends_the_job_quickly_naming_it(tmp_path):
    run_dir = str(tmp_path / "dead")
    process = start(long_run(run_dir))
    try:
        assert wait_for(lambda: len(worker_pids(run_dir)) == 2, timeout=120)
        time.sleep(2)  # let training get going
        killed_at = time.time()
        os.kill(worker_pids(run_dir)[1], signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=90)
        elapsed = time.time() - killed_at
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert elapsed < 60, elapsed
    assert "worker rank 1 on host localhost failed first (killed by SIGKILL)" in stderr
    assert_nothing_left(run_dir)


@pytest.mark.timeout(200)
def test_a_stalled_worker_is_detected_and_the_job_shut_down(tmp_path):
    run_dir = str(tmp_path / "stalled")
    process = start(long_run(run_dir, "--stall_check_seconds=5", "--stall_shutdown_seconds=10"))
    stalled = None
    try:
        assert wait_for(lambda: len(worker_pids(run_dir)) == 2, timeout=120)
        time.sleep(2)
        stalled = worker_pids(run_dir)[1]
        stopped_at = time.time()
        os.kill(stalled, signal.SIGSTOP)  # alive but stuck, as in a hung kernel or I/O
        stdout, stderr = process.communicate(timeout=120)
        elapsed = time.time() - stopped_at
    finally:
        if stalled:
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(stalled, sig)
                except ProcessLookupError:
                    pass
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert "stall" in (stdout + stderr).lower()
    assert elapsed < 60, elapsed
    assert_nothing_left(run_dir)


@pytest.mark.timeout(300)
def test_nan_stops_every_worker_at_the_same_step_and_keeps_the_last_checkpoint(tmp_path):
    run_dir = str(tmp_path / "nan")
    result = launch(["--recipe=image", "--np=2", f"--run_dir={run_dir}", *TINY_IMAGE,
                     "--epochs=2", "--max_steps_per_epoch=10", "--checkpoint_every_steps=5",
                     "--debug_nan_at_step=13", "--debug_nan_rank=1"], check=False)
    assert result.returncode != 0
    assert "became NaN/Inf at global step 13" in result.stderr
    assert "last good checkpoint is" in result.stderr and "ckpt-10" in result.stderr
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    assert latest.endswith("ckpt-10")
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
            "--max_steps_per_epoch=10", "--on_nonfinite=skip", "--debug_nan_at_step=13",
            "--debug_nan_rank=0"])
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["nonfinite_steps_skipped"] == 1
    assert summary["global_steps"] == summary["planned_global_steps"] == 20
    assert summary["weights_identical_on_all_ranks"]
    assert all(math.isfinite(value) for value in summary["validation"].values())


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
    process = start(arguments)
    filler = small_disk / "filler"
    try:
        checkpoints = os.path.join(run_dir, "checkpoints", "checkpoint")
        assert wait_for(lambda: os.path.exists(checkpoints), timeout=150)
        # Fill the disk: the next checkpoint cannot be written.
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
        stdout, stderr = process.communicate(timeout=150)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert "No space left on device" in stdout + stderr
    kept = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    assert kept is not None
    filler.unlink()
    launch(arguments)  # the same command resumes from the checkpoint that was kept
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["resumed_from_step"] == int(kept.rsplit("-", 1)[1]) > 0
    assert summary["global_steps"] == summary["planned_global_steps"]


@pytest.mark.timeout(500)
def test_killing_during_checkpoint_writes_never_leaves_an_unreadable_checkpoint(tmp_path):
    run_dir = str(tmp_path / "kills")
    # A checkpoint every step, so that most kills land in the middle of a write.
    arguments = ["--recipe=image", "--np=2", f"--run_dir={run_dir}", *TINY_IMAGE,
                 "--epochs=2", "--max_steps_per_epoch=30", "--checkpoint_every_steps=1",
                 "--export=false", "--log_every_steps=1000"]
    pointer = os.path.join(run_dir, "checkpoints", "checkpoint")
    for attempt in range(3):
        process = start(arguments)
        wait_for(lambda: os.path.exists(pointer), timeout=150)
        time.sleep(0.3 + 0.37 * attempt)
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
        assert_nothing_left(run_dir)
        latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
        reader = tf.train.load_checkpoint(latest)  # raises if the files are incomplete
        assert reader.get_variable_to_shape_map()
    launch(arguments)
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["global_steps"] == summary["planned_global_steps"] == 60
