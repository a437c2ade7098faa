"""Elastic training: a worker killed mid-epoch, training carries on, the worker comes back."""

import os
import signal
import socket
import time

import psutil
import pytest

from helpers import kill_session, read_json, start_launch, wait_for, worker_pids

pytestmark = pytest.mark.multiprocess


def three_local_host_names():
    """Three names for this machine that horovodrun treats as three hosts."""
    address = next(entry.address for name, entries in psutil.net_if_addrs().items()
                   for entry in entries if entry.family == socket.AF_INET and name != "lo")
    return ["localhost", "127.0.0.1", address]


@pytest.mark.timeout(600)
def test_a_killed_worker_is_survived_and_replaced(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"{name} slots=1\n" for name in three_local_host_names()))
    run_dir = str(tmp_path / "elastic")
    epochs, steps = 8, 30
    process = start_launch(
        ["--recipe=image", "--np=3", f"--hostfile={hostfile}",
         "--elastic", "--min_np=2", "--max_np=3", "--blacklist_cooldown=5,10",
         f"--run_dir={run_dir}", "--batch_size_per_worker=32", f"--epochs={epochs}",
         f"--max_steps_per_epoch={steps}", "--max_validation_examples=300",
         "--elastic_commit_steps=5", "--intra_op_threads=1", "--export=false"])
    try:
        assert wait_for(lambda: len(worker_pids(run_dir)) == 3, timeout=180)
        time.sleep(8)  # mid-epoch, some commits in
        os.kill(worker_pids(run_dir)[2], signal.SIGKILL)
        output, _ = process.communicate(timeout=500)
    finally:
        kill_session(process)
    assert process.returncode == 0, output[-5000:]
    summary = read_json(os.path.join(run_dir, "summary.json"))
    sizes = [reset["world_size"] for reset in summary["elastic_resets"]]
    assert sizes[0] == 3 and 2 in sizes, sizes  # it went on with two workers...
    assert sizes[-1] == 3, sizes  # ...and took the third one back after its cooldown
    # After every reset, all workers started from identical weights.
    assert all(reset["weights_identical_on_all_ranks"] for reset in summary["elastic_resets"])
    steps_at_reset = [reset["global_step"] for reset in summary["elastic_resets"]]
    assert steps_at_reset == sorted(steps_at_reset)
    # The fixed global batch keeps the plan in steps, whatever the world size was.
    assert summary["global_steps"] == summary["planned_global_steps"] == epochs * steps
    assert summary["weights_identical_on_all_ranks"]
    assert summary["validation"]["accuracy"] > 0.5  # the model is valid, and learned
