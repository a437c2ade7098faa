"""Shared helpers: running the toolkit as a user would, in subprocesses."""

import json
import os
import subprocess
import sys

import pytest

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
HOROVODRUN = os.path.join(os.path.dirname(PYTHON), "horovodrun")

# Small enough to run in seconds on 2 CPU cores, through the real data and model code.
TINY_IMAGE = ["--width=8", "--stages=2", "--max_validation_examples=256",
              "--log_every_steps=5", "--batch_size_per_worker=32"]


def environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = PROJECT_ROOT
    env["TF_USE_LEGACY_KERAS"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def run(command, timeout, check=True, **kwargs):
    """Run ``command`` from the project root; return the CompletedProcess (text output)."""
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=environment(), capture_output=True,
                            text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}\nstdout:\n{result.stdout}"
                             f"\nstderr:\n{result.stderr[-5000:]}")
    return result


def train_single(run_dir, recipe, arguments, timeout=240, check=True):
    """One worker, no horovodrun: ``python -m toolkit.train``."""
    return run([PYTHON, "-m", "toolkit.train", f"--recipe={recipe}", f"--run_dir={run_dir}",
                *arguments], timeout=timeout, check=check)


def launch(arguments, timeout=300, check=True):
    """The launcher, as ``make train`` calls it."""
    return run([PYTHON, "-m", "toolkit.launch", *arguments], timeout=timeout, check=check)


def horovodrun(np, worker_arguments, timeout=240, check=True):
    """A script under ``horovodrun -np N -H localhost:N --gloo``."""
    return run([HOROVODRUN, "-np", str(np), "-H", f"localhost:{np}", "--gloo",
                "--start-timeout", "60", PYTHON, *worker_arguments], timeout=timeout,
               check=check)


def read_json(path):
    with open(path) as stream:
        return json.load(stream)


@pytest.fixture
def run_dir(tmp_path):
    return str(tmp_path / "run")
