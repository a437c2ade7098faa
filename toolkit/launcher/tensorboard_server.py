"""``make tensorboard``: serve the runs folder, where rank 0 wrote it.

Without a hostfile, or when its first host (rank 0's) is this machine, TensorBoard runs
here. Otherwise it runs on that host over ssh (same ssh settings as a launch), bound to
its loopback, and ssh forwards the port here, so the URL printed is local either way.
"""

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys

import toolkit
from toolkit import errors
from toolkit.launcher import hostfile as hostfile_lib
from toolkit.launcher import ssh

PROJECT_ROOT = toolkit.PROJECT_ROOT


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m toolkit.launcher.tensorboard_server",
                                     description=__doc__)
    parser.add_argument("--runs_dir", default=os.path.join(PROJECT_ROOT, "runs"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6006)
    parser.add_argument("--hostfile", default="")
    ssh.add_arguments(parser)
    options = parser.parse_args(argv)
    runs_dir = os.path.abspath(options.runs_dir)
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    try:
        hosts = hostfile_lib.parse(options.hostfile) if options.hostfile else []
        settings = ssh.settings_from(options)
    except errors.UserError as error:
        return errors.report(error)
    url = f"http://{options.host}:{options.port}/"
    if not hosts or ssh.is_local(hosts[0].name):
        os.makedirs(runs_dir, exist_ok=True)
        print(f"TensorBoard for {runs_dir}: {url}", flush=True)
        return subprocess.call([tensorboard, "--logdir", runs_dir, "--host", options.host,
                                "--port", str(options.port)])
    chief = hosts[0]
    ssh_dir = ssh.make_ssh_directory()
    try:
        wrapper_dir = ssh.write_ssh_config(settings, hosts, ssh_dir)
        serve = " ".join(shlex.quote(part) for part in [
            tensorboard, "--logdir", runs_dir, "--host", "127.0.0.1", "--port",
            str(options.port)])
        # TensorBoard ends with the ssh session: the shell watches its parent (sshd's
        # session process), which exits when the connection closes.
        remote_command = ["sh", "-c", f"{serve} & server=$!; session=$PPID; "
                          "while kill -0 $session 2>/dev/null && kill -0 $server 2>/dev/null; "
                          "do sleep 1; done; kill $server 2>/dev/null"]
        command = [os.path.join(wrapper_dir, "ssh"), "-L",
                   f"{options.host}:{options.port}:127.0.0.1:{options.port}",
                   *ssh.ssh_command(wrapper_dir, chief.name, remote_command)[1:]]
        print(f"TensorBoard for {runs_dir} on {chief.name} (rank 0's host), forwarded to "
              f"{url}", flush=True)
        process = subprocess.Popen(command)
        # Closing the ssh session is what stops the remote TensorBoard: pass signals on.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: process.terminate())
        return process.wait()
    finally:
        shutil.rmtree(ssh_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
