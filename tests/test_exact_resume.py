"""A run killed at a random step and rerun ends with the same weights, bit for bit."""

import os
import random
import signal
import subprocess
import time

import pytest
import tensorflow as tf

from conftest import PROJECT_ROOT, PYTHON, environment, launch, read_json
from test_resume_and_export import process_ids_mentioning

pytestmark = pytest.mark.multiprocess

STEPS_PER_EPOCH, EPOCHS, EVERY = 20, 3, 5
ARGUMENTS = ["--recipe=image", "--np=2", "--deterministic=true", f"--epochs={EPOCHS}",
             f"--max_steps_per_epoch={STEPS_PER_EPOCH}", f"--checkpoint_every_steps={EVERY}",
             "--max_validation_examples=256", "--batch_size_per_worker=32", "--export=false"]


def checkpoint_steps(run_dir):
    state = tf.train.get_checkpoint_state(os.path.join(run_dir, "checkpoints"))
    if state is None:
        return []
    return [int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths]


@pytest.mark.timeout(600)
def test_sigkill_at_a_random_step_then_rerun_gives_identical_weights(tmp_path):
    reference = str(tmp_path / "uninterrupted")
    launch(ARGUMENTS + [f"--run_dir={reference}"], timeout=300)
    expected = read_json(os.path.join(reference, "summary.json"))

    # Mid-epoch checkpoints whose successor is also mid-epoch, so a kill that overshoots by
    # one checkpoint still resumes mid-epoch.
    kill_after = random.Random().choice([5, 10, 25, 30, 45])
    run_dir = str(tmp_path / "killed")
    first = subprocess.Popen([PYTHON, "-m", "toolkit.launch", *ARGUMENTS,
                              f"--run_dir={run_dir}"], cwd=PROJECT_ROOT, env=environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 240
    while first.poll() is None and time.time() < deadline and not any(
            step >= kill_after for step in checkpoint_steps(run_dir)):
        time.sleep(0.01)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert any(step >= kill_after for step in checkpoint_steps(run_dir))
    assert not os.path.exists(os.path.join(run_dir, "summary.json")), "killed too late"
    deadline = time.time() + 30
    while process_ids_mentioning(run_dir) and time.time() < deadline:
        time.sleep(0.5)

    launch(ARGUMENTS + [f"--run_dir={run_dir}"], timeout=300)
    resumed = read_json(os.path.join(run_dir, "summary.json"))
    assert resumed["resumed_from_step"] >= kill_after
    assert resumed["resumed_from_step"] % STEPS_PER_EPOCH != 0, "resume was not mid-epoch"
    assert resumed["global_steps"] == expected["global_steps"] == EPOCHS * STEPS_PER_EPOCH
    assert resumed["weights_identical_on_all_ranks"]
    # Bit for bit: the SHA-256 of every weight of the model.
    assert resumed["weights_sha256"] == expected["weights_sha256"], (
        f"killed after step {kill_after}, resumed from {resumed['resumed_from_step']}")
