"""ssh to the hosts of a hostfile: one ssh config per launch, and fast reachability checks.

horovodrun runs ``ssh -o PasswordAuthentication=no -o StrictHostKeyChecking=no <host> ...``
with no way to pass a user, a per-host port or ssh options. The launcher therefore writes
an ssh config (user, identity file, ports, connect timeout, keep-alives) and a two-line
``ssh`` wrapper that uses it, and puts the wrapper first on horovodrun's ``PATH``. Every
ssh connection of the run, horovodrun's and ours, then uses the same settings.

Commands are always argument lists; host names reaching here have been validated by
toolkit/launcher/hostfile.py, so nothing a user writes can be run by a shell on this machine.
"""

import concurrent.futures
import dataclasses
import os
import shlex
import shutil
import socket
import subprocess
import tempfile

from toolkit import errors


@dataclasses.dataclass(frozen=True)
class SshSettings:
    user: str = ""  # "" = ssh's default (the local user name)
    port: int = 0  # 0 = ssh's default (22), for hosts without port= in the hostfile
    identity_file: str = ""  # "" = ssh's defaults (~/.ssh/id_*)
    known_hosts_file: str = ""  # "" = ~/.ssh/known_hosts
    connect_timeout: int = 30  # seconds; also bounds every reachability check


def add_arguments(parser):
    """The ssh options every command that reaches the hosts takes."""
    parser.add_argument("--start_timeout", type=int, default=30,
                        help="seconds to wait for ssh (and, in a launch, for workers)")
    parser.add_argument("--ssh_user", default="")
    parser.add_argument("--ssh_port", type=int, default=0)
    parser.add_argument("--ssh_identity", default="", help="private key file for ssh")
    parser.add_argument("--ssh_known_hosts", default="", help="known_hosts file for ssh")


def settings_from(options):
    """SshSettings from options added by ``add_arguments``; LaunchError on bad values."""
    if options.ssh_identity and not os.path.isfile(options.ssh_identity):
        raise errors.LaunchError(f"SSH_IDENTITY file {options.ssh_identity} does not exist")
    if options.ssh_port and not 1 <= options.ssh_port <= 65535:
        raise errors.LaunchError(f"SSH_PORT must be from 1 to 65535, got {options.ssh_port}")
    return SshSettings(user=options.ssh_user, port=options.ssh_port,
                       identity_file=options.ssh_identity,
                       known_hosts_file=options.ssh_known_hosts,
                       connect_timeout=options.start_timeout)


def is_local(host_name):
    """True for names that horovodrun runs without ssh: those that resolve to an address
    of this machine (horovodrun's own test)."""
    import psutil

    try:
        address = socket.gethostbyname(host_name)
    except OSError:
        return False
    local = {entry.address for entries in psutil.net_if_addrs().values() for entry in entries
             if entry.family == socket.AF_INET}
    return address in local


def write_ssh_config(settings, hosts, directory):
    """Write ``ssh_config`` and an ``ssh`` wrapper into ``directory``; return the wrapper
    folder to prepend to PATH."""
    lines = []
    # ssh takes the first value it finds for each option, so per-host blocks come first.
    for host in hosts:
        if getattr(host, "port", None):
            lines += [f"Host {host.name}", f"  Port {host.port}", ""]
    lines.append("Host *")
    if settings.user:
        lines.append(f"  User {settings.user}")
    if settings.port:
        lines.append(f"  Port {settings.port}")
    if settings.identity_file:
        lines += [f"  IdentityFile {os.path.abspath(settings.identity_file)}",
                  "  IdentitiesOnly yes"]
    if settings.known_hosts_file:
        lines.append(f"  UserKnownHostsFile {os.path.abspath(settings.known_hosts_file)}")
    lines += [
        "  BatchMode yes",  # never wait for a password prompt
        # Trust a host key on first contact, refuse a changed one (horovodrun's own
        # connections pass StrictHostKeyChecking=no, which we cannot change; ours run
        # first, so a changed key stops the launch before horovodrun connects).
        "  StrictHostKeyChecking accept-new",
        f"  ConnectTimeout {settings.connect_timeout}",
        # A dead host or link ends the ssh session (and so the run) within ~1 minute.
        "  ServerAliveInterval 15",
        "  ServerAliveCountMax 4",
        "  LogLevel ERROR",
    ]
    config_path = os.path.join(directory, "ssh_config")
    with open(config_path, "w") as stream:
        stream.write("\n".join(lines) + "\n")
    real_ssh = shutil.which("ssh")
    if real_ssh is None:
        raise errors.RemoteError("ssh is not installed on this machine (Debian: openssh-client)")
    wrapper_dir = os.path.join(directory, "bin")
    os.makedirs(wrapper_dir, exist_ok=True)
    wrapper = os.path.join(wrapper_dir, "ssh")
    with open(wrapper, "w") as stream:
        stream.write("#!/bin/sh\n"
                     f"exec {shlex.quote(real_ssh)} -F {shlex.quote(config_path)} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    return wrapper_dir


def make_ssh_directory():
    """A private folder for one launch's ssh config (removed by the caller)."""
    return tempfile.mkdtemp(prefix="toolkit-ssh-")


def ssh_command(wrapper_dir, host_name, remote_command):
    """Argument list running ``remote_command`` (a list) on ``host_name``."""
    return [os.path.join(wrapper_dir, "ssh"), host_name, "--",
            " ".join(shlex.quote(part) for part in remote_command)]


def run_on(wrapper_dir, host_name, remote_command, timeout):
    """Run ``remote_command`` on a host (locally for local names); return CompletedProcess."""
    command = (remote_command if is_local(host_name)
               else ssh_command(wrapper_dir, host_name, remote_command))
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 255, "", f"no answer within {timeout} s")


def unreachable_hosts(wrapper_dir, host_names, timeout):
    """{host: reason} for every remote host where ``ssh host true`` fails, checked in
    parallel so that the wait is one timeout, not one per host."""
    remote = [name for name in host_names if not is_local(name)]
    failures = {}
    if not remote:
        return failures
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(remote))) as pool:
        results = dict(zip(remote, pool.map(
            lambda name: run_on(wrapper_dir, name, ["true"], timeout), remote)))
    for name, result in results.items():
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["ssh failed"])[-1]
            failures[name] = reason
    return failures
