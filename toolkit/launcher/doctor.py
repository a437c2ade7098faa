"""Preflight checks of every host in a hostfile: ``make doctor HOSTFILE=...``.

For each host, over the same ssh settings a launch uses: ssh reachable; the host name
resolves to a non-loopback address (Horovod's Gloo needs that across hosts); Python,
TensorFlow, Horovod and transformers versions equal to this machine's; Horovod built with
the same controllers and operations; GPUs visible versus slots; the runs folder writable,
and whether it is the same shared filesystem as here; free disk. Then, if every host
passed, a short allreduce across all slots with the measured bandwidth. Prints one
table, then what to fix; exits 1 if any check failed.
"""

import argparse
import concurrent.futures
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time

import toolkit
from toolkit import errors
from toolkit import versions as versions_lib
from toolkit import launcher
from toolkit.launcher import hostfile as hostfile_lib
from toolkit.launcher import ssh

PROJECT_ROOT = toolkit.PROJECT_ROOT
MIN_FREE_GB = 5.0
COMPARED_VERSIONS = ("python", "tensorflow", "tf-keras", "horovod", "transformers")


def probe(runs_root, token_name, token):
    """What this host looks like (runs on each host, prints JSON)."""
    found = {"versions": versions_lib.collect(), "hostname": socket.gethostname()}
    try:
        found["hostname_address"] = socket.gethostbyname(found["hostname"])
    except OSError:
        found["hostname_address"] = None
    try:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import horovod.tensorflow as hvd

        found["horovod_build"] = {"gloo": bool(hvd.gloo_built()), "mpi": bool(hvd.mpi_built()),
                                  "nccl": bool(hvd.nccl_built())}
    except Exception as error:  # any import failure means the same thing: no usable build
        found["horovod_build"] = {"error": str(error).splitlines()[0][:200]}
    gpus = 0
    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30).stdout
        gpus = sum(1 for line in listing.splitlines() if line.startswith("GPU "))
    found["gpus"] = gpus
    try:
        os.makedirs(runs_root, exist_ok=True)
        test_path = os.path.join(runs_root, f".doctor-write-{secrets.token_hex(4)}")
        with open(test_path, "w") as stream:
            stream.write("ok")
        os.unlink(test_path)
        found["writable"] = True
    except OSError as error:
        found["writable"] = False
        found["writable_error"] = error.strerror
    token_path = os.path.join(runs_root, token_name)
    try:
        with open(token_path) as stream:
            found["shared"] = stream.read() == token
    except OSError:
        found["shared"] = False
    try:
        found["free_gb"] = round(shutil.disk_usage(runs_root).free / 1e9, 1)
    except OSError:
        found["free_gb"] = None
    return found


def allreduce_probe(megabytes, repeats):
    """Run under horovodrun: time allreduces of a float32 tensor; rank 0 prints JSON."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    tensor = tf.ones([int(megabytes * 2 ** 20 / 4)], tf.float32)
    hvd.allreduce(tensor, op=hvd.Sum, name="warmup")
    started = time.perf_counter()
    for index in range(repeats):
        result = hvd.allreduce(tensor, op=hvd.Sum, name=f"probe{index}")
    seconds = (time.perf_counter() - started) / repeats
    correct = bool(float(result[0]) == hvd.size())
    if hvd.rank() == 0:
        print("ALLREDUCE " + json.dumps({
            "workers": hvd.size(), "megabytes": megabytes, "seconds": round(seconds, 4),
            # Algorithm bandwidth: the tensor's size over the time one allreduce takes.
            "gigabytes_per_second": round(megabytes / 1024 / seconds, 3), "correct": correct}),
            flush=True)


def check_host(host, local, found, slots, multi_host):
    """[(column, text, problem or None)] for one host's probe results."""
    rows = []
    address = found.get("hostname_address")
    name_problem = None
    if multi_host and (address is None or address.startswith("127.")):
        # Horovod 0.28.1 creates the Gloo context of its global process set on the address
        # of the host name, ignoring NETWORK_INTERFACE: a name that resolves to loopback
        # (Debian's default /etc/hosts maps it to 127.0.1.1) makes the other hosts connect
        # to 127.0.0.1 and fail with "Connection refused".
        name_problem = (f"{host}: its host name {found['hostname']!r} resolves to "
                        f"{address or 'nothing'}; map it to the host's cluster address in "
                        "/etc/hosts or DNS (Horovod's Gloo uses it)")
    rows.append(("hostname", f"{found['hostname']}={address}", name_problem))
    versions = found["versions"]
    for package in COMPARED_VERSIONS:
        ours, theirs = local["versions"].get(package), versions.get(package)
        problem = None if ours == theirs else (
            f"{host}: {package} {theirs} differs from this machine's {ours}; install the same "
            "version (make setup on that host, from the same checkout)")
        rows.append((package, str(theirs), problem))
    build = found["horovod_build"]
    build_text = ("error" if "error" in build else
                  "+".join(name for name in ("gloo", "mpi", "nccl") if build.get(name)) or "none")
    build_problem = None
    if "error" in build:
        build_problem = f"{host}: horovod does not import ({build['error']}); run make setup there"
    elif build != local["horovod_build"]:
        build_problem = (f"{host}: Horovod built with {build_text}, this machine with "
                         f"{'+'.join(k for k, v in local['horovod_build'].items() if v)}; "
                         "rebuild so that both have the same controllers and operations")
    rows.append(("horovod build", build_text, build_problem))
    gpus = found["gpus"]
    gpu_problem = None
    if gpus and slots > gpus:
        gpu_problem = f"{host}: {slots} slots but {gpus} GPUs; lower slots to {gpus}"
    rows.append(("gpus/slots", f"{gpus}/{slots}" if gpus else f"CPU/{slots}", gpu_problem))
    rows.append(("run dir", "writable" if found["writable"] else "NOT WRITABLE",
                 None if found["writable"] else
                 f"{host}: cannot write the runs folder ({found.get('writable_error')}); fix "
                 "permissions or set RUNS_DIR"))
    rows.append(("shared fs", "yes" if found["shared"] else "no", None))
    free = found["free_gb"]
    rows.append(("free disk", f"{free} GB" if free is not None else "?",
                 None if free is not None and free >= MIN_FREE_GB else
                 f"{host}: only {free} GB free in the runs folder; free at least {MIN_FREE_GB} GB"))
    return rows


def run_probe(wrapper_dir, host, runs_root, token_name, token, timeout):
    command = ["env", f"PYTHONPATH={PROJECT_ROOT}", "TF_CPP_MIN_LOG_LEVEL=3", sys.executable,
               "-m", "toolkit.launcher.doctor", "--probe", f"--runs_root={runs_root}",
               f"--token_name={token_name}", f"--token={token}"]
    result = ssh.run_on(wrapper_dir, host, command, timeout)
    for line in result.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[len("PROBE "):]), None
    reason = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
    if result.returncode == 255:
        return None, f"ssh failed: {reason}"
    return None, (f"the toolkit did not run there ({reason}); it must be at {PROJECT_ROOT} "
                  f"with its .venv, as on this machine")


def measure_allreduce(wrapper_dir, hosts, network_interface, timeout):
    command = [*launcher.HOROVODRUN, "-np", str(hostfile_lib.total_slots(hosts)), "-H",
               hostfile_lib.horovod_hosts(hosts), "--gloo", "--start-timeout", str(timeout)]
    if network_interface:
        command += ["--network-interface", network_interface]
    command += [sys.executable, "-m", "toolkit.launcher.doctor", "--allreduce_probe"]
    environment = dict(os.environ, PYTHONPATH=PROJECT_ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    if wrapper_dir:
        environment["PATH"] = wrapper_dir + os.pathsep + environment["PATH"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=environment,
                                timeout=timeout + 120, cwd=PROJECT_ROOT)
    except subprocess.TimeoutExpired:
        return None, "the allreduce did not finish in time"
    for line in result.stdout.splitlines():
        if "ALLREDUCE " in line:
            return json.loads(line.split("ALLREDUCE ", 1)[1]), None
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return None, f"horovodrun failed ({tail})"


def print_table(rows_by_host, columns):
    widths = {column: max(len(column), *(len(text) for rows in rows_by_host.values()
                                         for name, text, _ in rows if name == column))
              for column in columns}
    host_width = max(4, *(len(host) for host in rows_by_host))
    print("host".ljust(host_width) + "  " + "  ".join(c.ljust(widths[c]) for c in columns))
    for host, rows in rows_by_host.items():
        cells = {name: text + ("!" if problem else "") for name, text, problem in rows}
        print(host.ljust(host_width) + "  " + "  ".join(cells.get(c, "-").ljust(widths[c])
                                                        for c in columns))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m toolkit.launcher.doctor", description=__doc__)
    parser.add_argument("--hostfile", default="")
    parser.add_argument("--runs_root", default=os.path.join(PROJECT_ROOT, "runs"))
    ssh.add_arguments(parser)
    parser.add_argument("--network_interface", default="")
    parser.add_argument("--allreduce_megabytes", type=float, default=16.0)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--token_name", default="", help=argparse.SUPPRESS)
    parser.add_argument("--token", default="", help=argparse.SUPPRESS)
    parser.add_argument("--allreduce_probe", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.probe:
        print("PROBE " + json.dumps(probe(options.runs_root, options.token_name, options.token)))
        return 0
    if options.allreduce_probe:
        allreduce_probe(options.allreduce_megabytes, repeats=5)
        return 0

    try:
        hosts = (hostfile_lib.parse(options.hostfile) if options.hostfile
                 else [hostfile_lib.Host("localhost", 2, 0)])
        settings = ssh.settings_from(options)
    except errors.UserError as error:
        return errors.report(error)
    ssh_dir = ssh.make_ssh_directory()
    try:
        wrapper_dir = ssh.write_ssh_config(settings, hosts, ssh_dir)
        return diagnose(hosts, options, wrapper_dir)
    finally:
        shutil.rmtree(ssh_dir, ignore_errors=True)


def diagnose(hosts, options, wrapper_dir):
    os.makedirs(options.runs_root, exist_ok=True)
    token_name, token = f".doctor-token-{secrets.token_hex(4)}", secrets.token_hex(16)
    with open(os.path.join(options.runs_root, token_name), "w") as stream:
        stream.write(token)
    try:
        local = probe(options.runs_root, token_name, token)
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
            results = list(pool.map(lambda host: run_probe(
                wrapper_dir, host.name, options.runs_root, token_name, token,
                options.start_timeout + 60), hosts))
    finally:
        os.unlink(os.path.join(options.runs_root, token_name))

    columns = ["ssh", "hostname", *COMPARED_VERSIONS, "horovod build", "gpus/slots", "run dir",
               "shared fs", "free disk"]
    rows_by_host, problems = {}, []
    for host, (found, failure) in zip(hosts, results):
        if failure:
            rows_by_host[host.name] = [("ssh", "FAILED", failure)]
            problems.append(f"{host.name}: {failure}")
            continue
        rows = [("ssh", "ok", None)] + check_host(host.name, local, found, host.slots,
                                                  multi_host=len(hosts) > 1)
        rows_by_host[host.name] = rows
        problems += [problem for _, _, problem in rows if problem]
    print_table(rows_by_host, columns)

    if problems:
        print(f"\nallreduce: skipped ({len(problems)} problems above)")
        print("\nWhat to fix:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    measured, failure = measure_allreduce(
        wrapper_dir if any(not ssh.is_local(h.name) for h in hosts) else None, hosts,
        options.network_interface, options.start_timeout)
    if failure or not measured["correct"]:
        print(f"\nallreduce: FAILED: {failure or 'wrong result'}")
        print("\nWhat to fix:\n  - the hosts reach each other over ssh but not over the "
              "Horovod ports: open TCP between them, or set NETWORK_INTERFACE to the "
              "interface they share")
        return 1
    print(f"\nallreduce: ok, {measured['workers']} workers, {measured['megabytes']:.0f} MB in "
          f"{measured['seconds'] * 1000:.1f} ms = {measured['gigabytes_per_second']} GB/s")
    print("All checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
