"""Validate a run, then start it under horovodrun. ``make train`` calls this.

Everything that can be checked before processes start is checked here, so a typo costs
seconds rather than a cluster allocation: the recipe name, every config override, the
hostfile, NP against the slots, and whether RUN_DIR may be created or resumed. The
horovodrun command is built as an argument list (no shell), so no value given here can
run as a command.

    python -m toolkit.launcher.launch --recipe=image|--config=FILE [--np=N] [--hostfile=FILE]
        [--run_dir=DIR] [--start_timeout=S] [--ssh_user=U] [--ssh_port=P] [--ssh_identity=FILE]
        [--network_interface=IF[,IF]] [--dry_run] [--key=value ...]

With a hostfile naming other machines, every host is first checked over ssh (in
parallel, bounded by the start timeout); an unreachable host stops the launch with its
name and ssh's reason. ssh settings reach horovodrun through toolkit/launcher/ssh.py.
"""

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import toolkit  # sets TF_USE_LEGACY_KERAS before TensorFlow is imported
from toolkit import config as config_lib
from toolkit import errors
from toolkit import log_noise
from toolkit import recipe as recipe_lib
from toolkit import run_folder
from toolkit import launcher
from toolkit.launcher import hostfile as hostfile_lib
from toolkit.launcher import ssh

PROJECT_ROOT = toolkit.PROJECT_ROOT
LAUNCHED_AT = time.time()  # the workers' clock for time to the first step
WORKER_MODULE = "toolkit.worker.train"


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
    parser = argparse.ArgumentParser(prog="python -m toolkit.launcher.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="",
                        help="the recipe (required unless --config names one)")
    parser.add_argument("--config", default="",
                        help="start from this config file: a run's config.json (rerun its "
                             "experiment) or a JSON/YAML file of config keys; --key=value "
                             "overrides win")
    parser.add_argument("--np", default="", help="number of workers (default: see default_np)")
    parser.add_argument("--hostfile", default="")
    parser.add_argument("--run_dir", default="")
    parser.add_argument("--runs_root", default=os.path.join(PROJECT_ROOT, "runs"))
    ssh.add_arguments(parser)
    parser.set_defaults(start_timeout=60)
    parser.add_argument("--network_interface", default="",
                        help="interface(s) for Horovod traffic, e.g. eth0 or ib0,eth0")
    parser.add_argument("--elastic", action="store_true",
                        help="elastic mode: workers may fail or join (needs --hostfile or "
                             "--discovery_script)")
    parser.add_argument("--min_np", type=int, default=0, help="elastic: fewest workers")
    parser.add_argument("--max_np", type=int, default=0, help="elastic: most workers")
    parser.add_argument("--discovery_script", default="",
                        help="elastic: script printing host:slots lines (default: the hostfile)")
    parser.add_argument("--blacklist_cooldown", default="",
                        help="elastic: 'MIN,MAX' seconds before a failed host is tried again")
    parser.add_argument("--dry_run", action="store_true", help="print the command, run nothing")
    parser.add_argument("--verbose", action="store_true",
                        help="show everything TensorFlow and Horovod print (VERBOSE=1)")
    return parser.parse_known_args(argv)


def parse_np(text, hosts):
    if text == "":
        return default_np(hosts)
    if not text.isdigit() or int(text) < 1:
        raise errors.LaunchError(f"NP must be a whole number >= 1, got {text!r}")
    return int(text)


def horovodrun_command(np, hosts, options, worker_arguments, discovery_script=""):
    """The full horovodrun argument list (horovodrun through toolkit.launcher.horovodrun,
    which takes its Gloo check from a cache)."""
    command = [*launcher.HOROVODRUN, "-np", str(np), "--gloo", "--start-timeout",
               str(options.start_timeout)]
    if options.elastic:
        command += ["--min-np", str(options.min_np), "--max-np", str(options.max_np),
                    "--host-discovery-script", discovery_script]
        if options.blacklist_cooldown:
            command += ["--blacklist-cooldown-range",
                        *options.blacklist_cooldown.split(",")]
    else:
        command += ["-H", hostfile_lib.horovod_hosts(hosts) if hosts else f"localhost:{np}"]
    network_interface = options.network_interface
    if options.elastic and not network_interface and hosts and all(
            ssh.is_local(host.name) for host in hosts):
        # Elastic horovodrun on one machine otherwise waits (600 s) to find an interface
        # that routes to the other hosts; on one machine that is the loopback.
        network_interface = "lo"
    if network_interface:
        command += ["--network-interface", network_interface]
    return command + [sys.executable, "-m", WORKER_MODULE, *worker_arguments]


def check_elastic(options, hosts, np, config):
    """Elastic settings make sense together, and the fixed global batch splits evenly."""
    if not options.elastic:
        return
    if not (options.hostfile or options.discovery_script):
        raise errors.LaunchError("ELASTIC=1 needs HOSTFILE (re-read while the run goes on: edit "
                                 "it to add or remove hosts) or DISCOVERY_SCRIPT; a single host "
                                 "cannot lose workers without losing all of them")
    if not 1 <= options.min_np <= np <= options.max_np:
        raise errors.LaunchError(f"elastic runs need 1 <= MIN_NP <= NP <= MAX_NP; got MIN_NP="
                                 f"{options.min_np}, NP={np}, MAX_NP={options.max_np}")
    # MAX_NP may be more than the hostfile's slots today: hosts added to it later join.
    if options.blacklist_cooldown and not re.fullmatch(r"\d+,\d+",
                                                       options.blacklist_cooldown):
        raise errors.LaunchError(f"BLACKLIST_COOLDOWN must be 'MIN,MAX' seconds, got "
                                 f"{options.blacklist_cooldown!r}")
    uneven = [size for size in range(options.min_np, options.max_np + 1)
              if config.global_batch_size % size]
    if uneven:
        raise errors.LaunchError(f"global_batch_size={config.global_batch_size} stays fixed in an "
                                 f"elastic run and must split evenly over every world size from "
                                 f"{options.min_np} to {options.max_np}; it does not for {uneven}. "
                                 "Set --global_batch_size to a common multiple")


def ssh_settings(options):
    if options.network_interface and not all(
            part.replace("-", "").replace(".", "").replace("_", "").isalnum()
            for part in options.network_interface.split(",")):
        raise errors.LaunchError(f"NETWORK_INTERFACE {options.network_interface!r} is not a "
                                 "list of interface names such as eth0 or ib0,eth0")
    return ssh.settings_from(options)


def worker_environment(ssh_wrapper_dir=None, verbose=False):
    environment = dict(os.environ)
    # Workers measure their time to the first training step from here (summary.json).
    environment["TOOLKIT_LAUNCHED_AT"] = str(LAUNCHED_AT)
    if ssh_wrapper_dir:
        environment["PATH"] = ssh_wrapper_dir + os.pathsep + environment.get("PATH", "")
    environment["TF_USE_LEGACY_KERAS"] = "1"
    log_noise.set_level(verbose, environment)
    if verbose:
        environment[log_noise.VERBOSE_VARIABLE] = "1"
    environment["PYTHONPATH"] = os.pathsep.join(
        [PROJECT_ROOT] + [part for part in environment.get("PYTHONPATH", "").split(os.pathsep)
                          if part])
    return environment


DISCOVERY_PLACEHOLDER = "<discovery script written at launch>"


@dataclasses.dataclass
class Launch:
    command: list
    hostfile: str
    run_dir: str
    hosts: list
    ssh_settings: ssh.SshSettings
    dry_run: bool
    rank_to_host: list
    verbose: bool
    elastic: bool = False


def recipe_and_overrides(options, overrides_list):
    """The recipe, and the config overrides: the config file's keys (if any) under the
    command line's."""
    from_file, file_recipe = {}, None
    if options.config:
        file_recipe, from_file = config_lib.read_file(options.config)
    if options.recipe and file_recipe and options.recipe != file_recipe:
        raise errors.LaunchError(f"RECIPE={options.recipe} but the config file "
                                 f"{options.config} is for recipe {file_recipe!r}; leave "
                                 "RECIPE out to use the file's")
    name = options.recipe or file_recipe
    if not name:
        raise errors.LaunchError("no recipe: give RECIPE=<name> (--recipe)"
                                 + (f", or 'recipe' in {options.config}" if options.config
                                    else ""))
    recipe = recipe_lib.get(name)
    if from_file:
        try:
            config_lib.build(recipe.config_class, from_file)
        except errors.ConfigError as error:
            raise errors.ConfigError(f"config file {options.config}: {error}") from None
    return recipe, {**from_file, **config_lib.split_overrides(overrides_list)}


def prepare(argv):
    """Validate everything that needs no network; return a Launch. UserError on bad input."""
    options, overrides_list = parse_arguments(argv)
    # Importing the recipe imports TensorFlow, which prints start-up noise.
    log_noise.set_level(options.verbose)
    with log_noise.hidden(options.verbose):
        recipe, overrides = recipe_and_overrides(options, overrides_list)
        config = config_lib.build(recipe.config_class, overrides)
        if recipe.check_data is not None:
            recipe.check_data(config)
        if config.init_from:
            # The checkpoint exists and is of this recipe; its classes are compared with
            # the data's when the workers have listed it. (Imported here, with TensorFlow's
            # start-up noise hidden, like the recipe.)
            from toolkit.worker import warm_start

            source = warm_start.find(config.init_from)
            warm_start.check(source, config.init_from, recipe.name, source.class_names or [],
                             new_head=True)
    hosts = hostfile_lib.parse(options.hostfile) if options.hostfile else []
    np = parse_np(options.np, hosts)
    if hosts:
        hostfile_lib.check_np(options.hostfile, hosts, np)
    if options.start_timeout < 1:
        raise errors.LaunchError(f"START_TIMEOUT must be a number of seconds >= 1, got "
                                 f"{options.start_timeout}")
    run_dir = os.path.abspath(options.run_dir or run_folder.default_path(options.runs_root,
                                                                         recipe.name))
    kept = run_folder.previous_config(run_dir).get("global_batch_size")
    if not config.global_batch_size and kept:
        # A resumed run keeps the fixed global batch it started with (an elastic run set
        # one for itself), so that it goes on with the same batches on any world size.
        overrides["global_batch_size"] = str(kept)
        config = config_lib.build(recipe.config_class, overrides)
    elif options.elastic and not config.global_batch_size:
        # Elastic runs keep the global batch of the starting world whatever happens later.
        overrides["global_batch_size"] = str(config.batch_size_per_worker * np)
        config = config_lib.build(recipe.config_class, overrides)
    check_elastic(options, hosts, np, config)
    if config.global_batch_size % np and not options.elastic:
        raise errors.LaunchError(
            f"global_batch_size={config.global_batch_size} cannot be split evenly over NP={np} "
            "workers (each takes an equal part of it); choose an NP that divides it"
            + (f" (RUN_DIR {run_dir} was started with it, and a resumed run keeps it)"
               if kept else ""))
    settings = ssh_settings(options)
    run_folder.check_resumable(run_dir, recipe.name, config_lib.to_dict(config))
    run_folder.check_writable(run_dir)
    # key=value without dashes: horovodrun parses dashed words after the command as its
    # own options when they abbreviate one (--timeline=..., --autotune=...).
    worker_arguments = [f"recipe={recipe.name}", f"run_dir={run_dir}"] + [
        f"{key}={value}" for key, value in overrides.items()]
    discovery_script = options.discovery_script and os.path.abspath(options.discovery_script)
    return Launch(command=horovodrun_command(np, hosts, options, worker_arguments,
                                             discovery_script or DISCOVERY_PLACEHOLDER),
                  hostfile=os.path.abspath(options.hostfile) if options.hostfile else "",
                  run_dir=run_dir, hosts=hosts, ssh_settings=settings, dry_run=options.dry_run,
                  rank_to_host=rank_hosts(hosts, np), verbose=options.verbose,
                  elastic=options.elastic)


FAILED_PROCESS = re.compile(r"Process (\d+) exit with status code (-?\d+)")
# What a worker prints when it stops on a user error (errors.report in toolkit.worker.train).
WORKER_USER_ERROR = "[toolkit] error:"


def rank_hosts(hosts, np):
    """Host of each rank: horovodrun fills the hosts' slots in hostfile order."""
    names = [host.name for host in hosts for _ in range(host.slots)] if hosts else []
    return (names + ["localhost"] * np)[:np]


def describe_exit(code):
    if code < 0 or code > 128:
        number = -code if code < 0 else code - 128
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"exit code {code}"


# Gloo gives up on a peer that does not answer at all (a frozen process, a dead link).
GLOO_TIMEOUT = re.compile(r"Timed out waiting (\d+)ms for (?:recv|send) operation")


class OutputWatcher:
    """Reads horovodrun's output as it is forwarded: drops TensorFlow's start-up noise
    (unless verbose), and notes the first worker that failed, and how, to say it (with
    its host) in plain words."""

    def __init__(self, rank_to_host, verbose, on_user_error=None):
        self.rank_to_host = rank_to_host
        self.verbose = verbose
        self.first_failure = None  # (rank, exit status)
        self.gloo_timeout = None  # (rank that reported it, seconds)
        self.user_error = False  # a worker stopped on a user error (bad config, data, folder)
        self.on_user_error = on_user_error  # called once, at the first one
        self._lock = threading.Lock()

    def host(self, rank):
        return self.rank_to_host[rank] if rank < len(self.rank_to_host) else "?"

    def read(self, line):
        """Note what ``line`` says; return whether to show it."""
        text = log_noise.without_horovod_prefix(line)
        rank = re.match(r"^\[(\d+)\]<std", line)
        with self._lock:
            timeout = GLOO_TIMEOUT.search(text)
            if timeout and self.gloo_timeout is None:
                self.gloo_timeout = (int(rank.group(1)) if rank else None,
                                     int(timeout.group(1)) / 1000)
            match = FAILED_PROCESS.search(text)
            if match and self.first_failure is None:
                self.first_failure = (int(match.group(1)), int(match.group(2)))
            first_user_error = text.startswith(WORKER_USER_ERROR) and not self.user_error
            self.user_error = self.user_error or first_user_error
        if first_user_error and self.on_user_error is not None:
            self.on_user_error()
        return self.verbose or not log_noise.is_noise(line)

    def diagnosis(self):
        """Lines naming what went wrong, for after horovodrun's own report."""
        lines = []
        status = self.first_failure[1] if self.first_failure else None
        if status == errors.STALL_EXIT_CODE:
            rank = self.first_failure[0]
            lines.append(f"[launch] the job stalled: no worker finished a batch for longer "
                         "than stall_shutdown_seconds (rank "
                         f"{rank} on host {self.host(rank)} stopped it first). A worker is "
                         "hung (I/O, a deadlock, a frozen host) or waiting for one that is; "
                         "the last checkpoint is kept.")
        elif self.gloo_timeout is not None:
            rank, seconds = self.gloo_timeout
            reporter = (f"rank {rank} on host {self.host(rank)}" if rank is not None
                        else "a worker")
            lines.append(f"[launch] the workers stopped hearing from one another: {reporter} "
                         f"waited {seconds:.0f} s for a peer that did not answer at all (a "
                         "frozen process or host, or a network that went away), so the job "
                         "was stopped; the last checkpoint is kept.")
        elif self.first_failure is not None:
            rank, status = self.first_failure
            lines.append(f"[launch] worker rank {rank} on host {self.host(rank)} failed first "
                         f"({describe_exit(status)}); horovodrun stopped the other workers.")
        return lines


def _forward(stream, target, watcher):
    """Copy horovodrun's output line by line, through the watcher."""
    for line in iter(stream.readline, ""):
        if watcher.read(line):
            target.write(line)
            target.flush()


def run(command, environment, rank_to_host, verbose=False, elastic=False):
    """Run horovodrun, passing SIGTERM on to it; return its exit code. When a worker fails
    or stalls, say which rank on which host, and how, after horovodrun's own report.

    In an elastic run, a worker that stops on a user error (a refused run folder, bad
    data) stops the whole job, with exit code 2: horovodrun would count it as a failed
    host and go on without it, and the mistake is the same on every worker.
    """
    process = subprocess.Popen(command, env=environment, cwd=PROJECT_ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watcher = OutputWatcher(rank_to_host, verbose,
                            on_user_error=process.terminate if elastic else None)
    threads = [threading.Thread(target=_forward, args=(pipe, target, watcher), daemon=True)
               for pipe, target in ((process.stdout, sys.stdout), (process.stderr, sys.stderr))]
    for thread in threads:
        thread.start()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.terminate())
    try:
        code = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    for thread in threads:
        thread.join(timeout=10)
    if elastic and watcher.user_error:
        print("[launch] a worker refused to run (its message is above); the elastic job was "
              "stopped, since every worker would refuse the same way.", file=sys.stderr,
              flush=True)
        return errors.USER_ERROR_EXIT_CODE
    if code != 0:
        for line in watcher.diagnosis():
            print(line, file=sys.stderr, flush=True)
        if watcher.user_error:
            # A worker refused (its one-line message is above): a user error, exit 2, as
            # the launcher's own refusals; horovodrun counts it as a failed process.
            return errors.USER_ERROR_EXIT_CODE
    return code


def write_discovery_script(directory, hostfile):
    """The host discovery script of an elastic run: the hostfile, re-read on every call."""
    path = os.path.join(directory, "discover-hosts.sh")
    with open(path, "w") as stream:
        stream.write("#!/bin/sh\n"
                     f"PYTHONPATH={shlex.quote(PROJECT_ROOT)} exec {shlex.quote(sys.executable)} "
                     f"-m toolkit.launcher.hostfile --discover {shlex.quote(hostfile)}\n")
    os.chmod(path, 0o755)
    return path


def launch(plan):
    """Check the hosts over ssh, then run horovodrun; return the exit code."""
    ssh_dir = None
    try:
        wrapper_dir = None
        if DISCOVERY_PLACEHOLDER in plan.command:
            ssh_dir = ssh_dir or ssh.make_ssh_directory()
            script = write_discovery_script(ssh_dir, plan.hostfile)
            plan.command[plan.command.index(DISCOVERY_PLACEHOLDER)] = script
        if any(not ssh.is_local(host.name) for host in plan.hosts):
            ssh_dir = ssh_dir or ssh.make_ssh_directory()
            wrapper_dir = ssh.write_ssh_config(plan.ssh_settings, plan.hosts, ssh_dir)
            failures = ssh.unreachable_hosts(wrapper_dir, [host.name for host in plan.hosts],
                                             timeout=plan.ssh_settings.connect_timeout + 5)
            if failures:
                for name, reason in failures.items():
                    print(f"error: host {name} is not reachable over ssh: {reason}",
                          file=sys.stderr)
                print("Check the host is up and reachable (make doctor HOSTFILE=...); "
                      "nothing was launched.", file=sys.stderr)
                return 2
        print("[launch] " + " ".join(plan.command), flush=True)
        return run(plan.command, worker_environment(wrapper_dir, plan.verbose),
                   plan.rank_to_host, plan.verbose, plan.elastic)
    finally:
        if ssh_dir:
            shutil.rmtree(ssh_dir, ignore_errors=True)


def main(argv=None):
    try:
        plan = prepare(sys.argv[1:] if argv is None else argv)
    except errors.UserError as error:
        code = errors.report(error)
        print("Nothing was launched.", file=sys.stderr)
        return code
    if plan.dry_run:
        print("[launch] " + " ".join(plan.command), flush=True)
        return 0
    code = launch(plan)
    run_dir = plan.run_dir
    if code == 0:
        print(f"[launch] finished. Results: {run_dir}\n"
              f"[launch]   summary:     {os.path.join(run_dir, 'summary.json')}\n"
              f"[launch]   export:      {os.path.join(run_dir, 'export')} (TF Serving base path)\n"
              f"[launch]   TensorBoard: make tensorboard   (serves the runs folder)")
    else:
        print(f"[launch] failed with exit code {code}; run folder {run_dir}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
