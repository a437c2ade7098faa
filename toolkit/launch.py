"""Validate a run, then start it under horovodrun. ``make train`` calls this.

Everything that can be checked before processes start is checked here, so a typo costs
seconds rather than a cluster allocation: the recipe name, every config override, the
hostfile, NP against the slots, and whether RUN_DIR may be created or resumed. The
horovodrun command is built as an argument list (no shell), so no value given here can
run as a command.

    python -m toolkit.launch --recipe=image [--np=N] [--hostfile=FILE] [--run_dir=DIR]
                             [--start_timeout=S] [--dry_run] [--key=value ...]
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys

import toolkit  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from toolkit import config as config_lib
from toolkit import hostfile as hostfile_lib
from toolkit import recipe as recipe_lib
from toolkit import run_folder

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def count_gpus():
    """GPUs on this machine according to nvidia-smi (0 when there is none)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def default_np(hosts):
    """All slots of the hostfile; else one worker per GPU; else 2 on a CPU-only machine."""
    if hosts:
        return hostfile_lib.total_slots(hosts)
    return count_gpus() or 2


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m toolkit.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--np", default="", help="number of workers (default: see default_np)")
    parser.add_argument("--hostfile", default="")
    parser.add_argument("--run_dir", default="")
    parser.add_argument("--runs_root", default=os.path.join(PROJECT_ROOT, "runs"))
    parser.add_argument("--start_timeout", type=int, default=60,
                        help="seconds horovodrun waits for all workers to start")
    parser.add_argument("--dry_run", action="store_true", help="print the command, run nothing")
    return parser.parse_known_args(argv)


def parse_np(text, hosts):
    if text == "":
        return default_np(hosts)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"NP must be a whole number >= 1, got {text!r}")
    return int(text)


def horovodrun_command(np, hosts, start_timeout, worker_arguments):
    """The full horovodrun argument list."""
    host_argument = hostfile_lib.horovod_hosts(hosts) if hosts else f"localhost:{np}"
    horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    return [horovodrun, "-np", str(np), "-H", host_argument, "--gloo",
            "--start-timeout", str(start_timeout),
            sys.executable, "-m", "toolkit.train", *worker_arguments]


def worker_environment():
    environment = dict(os.environ)
    environment["TF_USE_LEGACY_KERAS"] = "1"
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    environment["PYTHONPATH"] = os.pathsep.join(
        [PROJECT_ROOT] + [part for part in environment.get("PYTHONPATH", "").split(os.pathsep)
                          if part])
    return environment


def prepare(argv):
    """Validate everything; return (command, run_dir). Raises ValueError on bad input."""
    options, overrides_list = parse_arguments(argv)
    recipe = recipe_lib.get(options.recipe)
    overrides = config_lib.split_overrides(overrides_list)
    config = config_lib.build(recipe.config_class, overrides)
    hosts = hostfile_lib.parse(options.hostfile) if options.hostfile else []
    np = parse_np(options.np, hosts)
    if hosts:
        hostfile_lib.check_np(options.hostfile, hosts, np)
    run_dir = os.path.abspath(options.run_dir or run_folder.default_path(options.runs_root,
                                                                         recipe.name))
    run_folder.check_resumable(run_dir, recipe.name, config_lib.to_dict(config))
    run_folder.check_writable(run_dir)
    worker_arguments = [f"--recipe={recipe.name}", f"--run_dir={run_dir}"] + [
        f"--{key}={value}" for key, value in overrides.items()]
    return horovodrun_command(np, hosts, options.start_timeout, worker_arguments), run_dir


def run(command):
    """Run horovodrun, passing SIGTERM on to it; return its exit code."""
    process = subprocess.Popen(command, env=worker_environment(), cwd=PROJECT_ROOT)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.terminate())
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None):
    try:
        command, run_dir = prepare(sys.argv[1:] if argv is None else argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        print("Nothing was launched.", file=sys.stderr)
        return 2
    print("[launch] " + " ".join(command), flush=True)
    if "--dry_run" in (sys.argv[1:] if argv is None else argv):
        return 0
    code = run(command)
    if code == 0:
        print(f"[launch] finished. Results: {run_dir}\n"
              f"[launch]   summary:     {os.path.join(run_dir, 'summary.json')}\n"
              f"[launch]   export:      {os.path.join(run_dir, 'export')}\n"
              f"[launch]   TensorBoard: make tensorboard   (serves the runs folder)")
    else:
        print(f"[launch] failed with exit code {code}; run folder {run_dir}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
