"""Several "hosts" on one machine: network namespaces joined by a bridge, each with sshd.

Layout (all names start with ``tk`` so that cleanup can find leftovers of a crashed run):

    root namespace: bridge tk0, 10.77.0.1/24   (the launcher runs here)
    namespace tkh1: interface tk0, 10.77.0.11/24, sshd on port 22
    namespace tkh2: interface tk0, 10.77.0.12/24, sshd on port 22

Every side names its interface ``tk0`` so that ``NETWORK_INTERFACE=tk0`` is valid on the
launcher and on both hosts, as on a real cluster whose nodes share an interface name.
Each host also gets its own host name (a UTS namespace) that resolves to its own address
(``/etc/netns/<name>/hosts``, which ``ip netns exec`` mounts over /etc/hosts), as on a
real cluster: Horovod 0.28.1 binds one of its Gloo contexts to the address of the host
name whatever NETWORK_INTERFACE says.
sshd runs with a throwaway host key and accepts a throwaway client key; the launcher's
ssh uses that key and a throwaway known_hosts file. Needs root (CI runs as root).
"""

import os
import shutil
import signal
import socket
import subprocess
import time

import helpers

SUBNET = "10.77.0"
BRIDGE = "tk0"


def _ip(*arguments, namespace=None, check=True):
    command = (["ip", "netns", "exec", namespace] if namespace else []) + ["ip", *arguments]
    return subprocess.run(command, capture_output=True, text=True, check=check)


def available():
    """(True, "") if this machine can build the cluster, else (False, why)."""
    if os.geteuid() != 0:
        return False, "needs root for network namespaces"
    for tool in ("ip", "/usr/sbin/sshd", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return False, f"{tool} is not installed (Debian: iproute2, openssh-server)"
    probe = subprocess.run(["ip", "netns", "add", "tkprobe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"cannot create network namespaces: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "tkprobe"], capture_output=True)
    return True, ""


def remove_leftovers():
    """Delete namespaces and links of an earlier run that did not clean up."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith("tkh"):
            kill_namespace_processes(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith("tkv") or name == BRIDGE:
            subprocess.run(["ip", "link", "del", name], capture_output=True)


def kill_namespace_processes(namespace):
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True,
                          text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


class Cluster:
    def __init__(self, directory, hosts=2):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.names = [f"tkh{index}" for index in range(1, hosts + 1)]
        self.addresses = [f"{SUBNET}.{10 + index}" for index in range(1, hosts + 1)]
        self.sshd = []
        self.client_key = os.path.join(self.directory, "client_key")
        self.known_hosts = os.path.join(self.directory, "known_hosts")

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exception):
        self.stop()

    def start(self):
        remove_leftovers()
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.client_key],
                       check=True)
        host_key = os.path.join(self.directory, "host_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key],
                       check=True)
        shutil.copy(self.client_key + ".pub", os.path.join(self.directory, "authorized_keys"))
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation folder
        for index, (name, address) in enumerate(zip(self.names, self.addresses), start=1):
            subprocess.run(["ip", "netns", "add", name], check=True)
            _ip("link", "add", f"tkv{index}", "type", "veth", "peer", "name", f"tkp{index}")
            _ip("link", "set", f"tkv{index}", "master", BRIDGE)
            _ip("link", "set", f"tkv{index}", "up")
            _ip("link", "set", f"tkp{index}", "netns", name)
            _ip("link", "set", f"tkp{index}", "name", BRIDGE, namespace=name)
            _ip("addr", "add", f"{address}/24", "dev", BRIDGE, namespace=name)
            _ip("link", "set", BRIDGE, "up", namespace=name)
            _ip("link", "set", "lo", "up", namespace=name)
            self.sshd.append(self._start_sshd(name, address, host_key))
        for address in self.addresses:
            self._wait_for_port(address, 22)

    def _start_sshd(self, name, address, host_key):
        config = os.path.join(self.directory, f"sshd_{name}.conf")
        with open(config, "w") as stream:
            stream.write("\n".join([
                f"ListenAddress {address}", "Port 22", f"HostKey {host_key}",
                f"PidFile {self.directory}/sshd_{name}.pid",
                f"AuthorizedKeysFile {self.directory}/authorized_keys",
                "PermitRootLogin prohibit-password", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
                "PrintMotd no", "LogLevel ERROR", ""]))
        os.makedirs(f"/etc/netns/{name}", exist_ok=True)
        with open(f"/etc/netns/{name}/hosts", "w") as stream:
            stream.write(f"127.0.0.1 localhost\n{address} {name}\n")
        log = open(os.path.join(self.directory, f"sshd_{name}.log"), "w")
        return subprocess.Popen(["ip", "netns", "exec", name, "unshare", "--uts", "sh", "-c",
                                 f"hostname {name} && exec /usr/sbin/sshd -D -e -f {config}"],
                                stdout=log, stderr=subprocess.STDOUT)

    @staticmethod
    def _wait_for_port(address, port, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with socket.create_connection((address, port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"sshd on {address}:{port} did not start")

    def hostfile(self, path, slots=1):
        with open(path, "w") as stream:
            stream.write("# two network namespaces, made by tests/netns_cluster.py\n")
            for address in self.addresses:
                stream.write(f"{address} slots={slots}\n")
        return str(path)

    def ssh_options(self):
        """Launcher options that make ssh use the throwaway key and known_hosts."""
        return [f"--ssh_identity={self.client_key}", f"--ssh_known_hosts={self.known_hosts}"]

    def link_down(self, index):
        _ip("link", "set", BRIDGE, "down", namespace=self.names[index])

    def processes_in(self, index, text):
        """PIDs in host ``index``'s namespace whose command line contains ``text``."""
        pids = subprocess.run(["ip", "netns", "pids", self.names[index]], capture_output=True,
                              text=True).stdout.split()
        return helpers.process_ids_mentioning(text, pids)

    def stop(self):
        for process in self.sshd:
            process.kill()
            process.wait(timeout=10)
        for name in self.names:
            kill_namespace_processes(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
        remove_leftovers()
