"""Helpers the tests share: running the toolkit as a user would, in subprocesses, and
reading back what a run wrote. No test module imports another; they all import this."""

import json
import os
import signal
import subprocess
import sys
import time

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
HOROVODRUN = [PYTHON, "-m", "toolkit.launcher.horovodrun"]  # as toolkit.launcher starts it
LAUNCHER = "toolkit.launcher.launch"
WORKER = "toolkit.worker.train"

# Small enough to run in seconds on 2 CPU cores, through the real data and model code.
TINY_IMAGE = ["--width=8", "--stages=2", "--max_validation_examples=256",
              "--log_every_steps=5", "--batch_size_per_worker=32"]


def environment(**extra):
    """The environment tests run the toolkit with (plus ``extra`` variables)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PROJECT_ROOT
    env["TF_USE_LEGACY_KERAS"] = "1"
    env.pop("TOOLKIT_TEST_FAULTS", None)
    env.pop("TOOLKIT_VERBOSE", None)
    env.update(extra)
    return env


def faults(**values):
    """The environment that asks the workers for test faults and recordings (see
    toolkit/worker/faults)."""
    return environment(TOOLKIT_TEST_FAULTS=",".join(f"{key}={value}"
                                                    for key, value in values.items()))


def recorded_examples(directory):
    """{global step: example ids of the global batch, in rank order} from a run with
    ``faults(record_examples=directory)`` (the last record of a step wins)."""
    by_rank = {}
    for name in sorted(os.listdir(directory)):
        rank = int(name[len("rank"):-len(".jsonl")])
        with open(os.path.join(directory, name)) as stream:
            by_rank[rank] = {record["step"]: record["ids"]
                             for record in map(json.loads, stream)}
    steps = set.intersection(*(set(records) for records in by_rank.values()))
    return {step: [i for rank in sorted(by_rank) for i in by_rank[rank][step]]
            for step in steps}


def run(command, timeout, check=True, env=None, **kwargs):
    """Run ``command`` from the project root; return the CompletedProcess (text output)."""
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env or environment(),
                            capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}\nstdout:\n{result.stdout}"
                             f"\nstderr:\n{result.stderr[-5000:]}")
    return result


def train_single(run_dir, recipe, arguments, timeout=240, check=True, env=None):
    """One worker, no horovodrun: ``python -m toolkit.worker.train``."""
    return run([PYTHON, "-m", WORKER, f"--recipe={recipe}", f"--run_dir={run_dir}",
                *arguments], timeout=timeout, check=check, env=env)


def launch(arguments, timeout=300, check=True, env=None):
    """The launcher, as ``make train`` calls it."""
    return run([PYTHON, "-m", LAUNCHER, *arguments], timeout=timeout, check=check, env=env)


def start_launch(arguments, env=None, output=subprocess.PIPE):
    """The launcher in its own session (so the test can kill it all), not waited for."""
    return subprocess.Popen([PYTHON, "-m", LAUNCHER, *arguments], cwd=PROJECT_ROOT,
                            env=env or environment(), stdout=output, stderr=output, text=True,
                            start_new_session=True)


def kill_inside_checkpoint_save(arguments, marker, count, timeout=240):
    """Launch with ``arguments``; when the chief is inside its ``count``-th checkpoint
    save (files written, pointer not yet moved: see toolkit/worker/faults.py), kill the
    whole job. Return the path of the checkpoint it was writing."""
    process = start_launch(arguments, env=faults(pause_at_checkpoint=count, pause_marker=marker),
                           output=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: os.path.exists(marker) and os.path.getsize(marker),
                        timeout=timeout), f"the run never reached checkpoint number {count}"
    finally:
        kill_session(process)
    with open(marker) as stream:
        return stream.read()


def kill_after_checkpoint(arguments, run_dir, step, env=None):
    """Start the run and SIGKILL all of it once a checkpoint at ``step`` or later exists
    (and before the run ends)."""
    process = start_launch(arguments + [f"--run_dir={run_dir}"], env=env,
                           output=subprocess.DEVNULL)
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline and not any(
            saved >= step for saved in checkpoint_steps(run_dir)):
        time.sleep(0.01)
    kill_session(process)
    assert any(saved >= step for saved in checkpoint_steps(run_dir))
    assert not os.path.exists(os.path.join(run_dir, "summary.json")), "killed too late"
    assert_nothing_left(run_dir)


def kill_session(process):
    """SIGKILL ``process`` and everything in its session (launcher, horovodrun, workers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def horovodrun(np, worker_arguments, timeout=240, check=True):
    """A script under ``horovodrun -np N -H localhost:N --gloo``."""
    return run([*HOROVODRUN, "-np", str(np), "-H", f"localhost:{np}", "--gloo",
                "--start-timeout", "60", PYTHON, *worker_arguments], timeout=timeout,
               check=check)


def read_json(path):
    with open(path) as stream:
        return json.load(stream)


def results(stdout):
    """The ``RESULT {json}`` lines of a horovodrun job, by rank."""
    found = [json.loads(line.split("RESULT ", 1)[1]) for line in stdout.splitlines()
             if "RESULT {" in line]
    return {result["rank"]: result for result in found}


def wait_for(condition, timeout, interval=0.05):
    """Poll ``condition()`` until it is true (return True) or ``timeout`` s pass (False)."""
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


def process_ids_mentioning(text, candidates=None):
    """PIDs of live processes (of ``candidates``, default all) whose command line contains
    ``text``."""
    if candidates is None:
        candidates = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    found = []
    for pid in candidates:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as stream:
                if text.encode() in stream.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def assert_nothing_left(run_dir, timeout=30):
    assert wait_for(lambda: not process_ids_mentioning(run_dir), timeout=timeout), (
        f"processes left behind: {process_ids_mentioning(run_dir)}")


def checkpoint_steps(run_dir):
    """Global steps of the checkpoints the pointer file lists, oldest first."""
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(os.path.join(run_dir, "checkpoints"))
    if state is None:
        return []
    return [int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths]


def event_scalars(run_dir, split, tag):
    """The values of scalar ``tag`` in a run's TensorBoard ``split`` (train/validation)."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    accumulator = event_accumulator.EventAccumulator(
        os.path.join(run_dir, "tensorboard", split), size_guidance={"tensors": 0})
    accumulator.Reload()
    return [float(tensor_util.make_ndarray(event.tensor_proto))
            for event in accumulator.Tensors(tag)]


def event_steps(run_dir, split, tag):
    """{step: value} of scalar ``tag`` (the last value written for each step)."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    accumulator = event_accumulator.EventAccumulator(
        os.path.join(run_dir, "tensorboard", split), size_guidance={"tensors": 0})
    accumulator.Reload()
    return {event.step: float(tensor_util.make_ndarray(event.tensor_proto))
            for event in accumulator.Tensors(tag)}


def event_tags(run_dir, split):
    """The scalar tags of a run's TensorBoard ``split``."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(os.path.join(run_dir, "tensorboard", split))
    accumulator.Reload()
    return set(accumulator.Tags()["tensors"])


def tiny_arguments(recipe_name):
    """A recipe's ``tiny_overrides`` as ``--key=value`` arguments."""
    from toolkit import recipe as recipe_lib

    recipe = recipe_lib.get(recipe_name)
    return [f"--{key}={value}" for key, value in recipe.tiny_overrides.items()]


def predict_in_fresh_process(script, *arguments, cwd, timeout=120):
    """Run ``script`` (Python source printing ``RESULT {json}``) in a fresh interpreter
    that imports neither the toolkit nor the recipes; return the parsed result."""
    result = subprocess.run([PYTHON, "-c", script, *arguments], capture_output=True,
                            text=True, timeout=timeout, env=environment(PYTHONPATH=""),
                            cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULT ", 1)[1])
