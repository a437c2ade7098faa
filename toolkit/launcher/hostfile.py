"""Hostfiles: ``<host> slots=<n>`` per line, as Horovod and mpirun read them, validated.

Accepted: ``#`` comments (whole-line or trailing), blank lines, host names (RFC 1123) and
IPv4 literals, exactly one ``slots=<n>`` with ``n >= 1`` per host, and optionally
``port=<p>``, the host's ssh port (the launcher's ssh config applies it). Rejected, with the
file, line number and text in the message: unknown syntax or keys, missing or
non-positive slots, a host listed twice, anything that is not a valid name or address
(so nothing can reach a shell through a host name), and IPv6 literals, which
horovodrun's ``host:slots`` syntax cannot express.
"""

import dataclasses
import ipaddress
import re
import sys

from toolkit import errors

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
VALID_LINE = ("'<host> slots=<n> [port=<ssh port>]' (a host name or IPv4 address, n >= 1, "
              "'#' starts a comment)")


@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    slots: int
    line: int
    port: int = 0  # ssh port; 0 = the default


def is_valid_host_name(name):
    """True for an IPv4 literal or an RFC 1123 host name."""
    try:
        return isinstance(ipaddress.ip_address(name), ipaddress.IPv4Address)
    except ValueError:
        pass
    if len(name) > 253 or name.endswith("."):
        return False
    labels = name.split(".")
    # A name made only of digits and dots would be a malformed IPv4 address.
    return all(_LABEL.match(label) for label in labels) and not name.replace(".", "").isdigit()


def _is_ipv6(name):
    try:
        return isinstance(ipaddress.ip_address(name), ipaddress.IPv6Address)
    except ValueError:
        return False


def _error(path, number, text, problem):
    return errors.HostfileError(f"{path}:{number}: {text.strip()!r}: {problem}; each line must be "
                                f"{VALID_LINE}")


def parse_line(path, number, text):
    """Return a Host for one line, or None for a blank or comment line."""
    content = text.split("#", 1)[0].strip()
    if not content:
        return None
    name, *options = content.split()
    if _is_ipv6(name):
        raise _error(path, number, text, f"IPv6 address {name!r} cannot be used, because "
                     "horovodrun's host:slots syntax cannot express it; give the host a "
                     "name in /etc/hosts")
    if not is_valid_host_name(name):
        raise _error(path, number, text, f"{name!r} is not a valid host name or IPv4 address")
    values = {}
    for option in options:
        key, equals, value = option.partition("=")
        if key not in ("slots", "port") or not equals:
            raise _error(path, number, text, f"unknown option {option!r}")
        if key in values:
            raise _error(path, number, text, f"{key} is given twice")
        if not re.fullmatch(r"[0-9]+", value):
            raise _error(path, number, text, f"{key} must be a whole number, got {value!r}")
        values[key] = int(value)
    if "slots" not in values:
        raise _error(path, number, text, "slots=<n> is missing")
    if values["slots"] < 1:
        raise _error(path, number, text, f"slots must be a whole number >= 1, got "
                     f"'{values['slots']}'")
    if not 1 <= values.get("port", 22) <= 65535:
        raise _error(path, number, text, f"port must be from 1 to 65535, got {values['port']}")
    return Host(name=name, slots=values["slots"], line=number, port=values.get("port", 0))


def parse_text(path, text):
    hosts, seen = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        host = parse_line(path, number, line)
        if host is None:
            continue
        if host.name.lower() in seen:
            raise _error(path, number, line, f"host {host.name!r} is already listed on line "
                         f"{seen[host.name.lower()]}; give each host once with all its slots")
        seen[host.name.lower()] = number
        hosts.append(host)
    if not hosts:
        raise errors.HostfileError(f"{path}: no hosts; each line must be {VALID_LINE}")
    return hosts


def parse(path):
    """Read and validate the hostfile at ``path``."""
    try:
        with open(path) as stream:
            text = stream.read()
    except OSError as error:
        raise errors.HostfileError(f"cannot read hostfile {path}: {error.strerror}") from None
    return parse_text(path, text)


def total_slots(hosts):
    return sum(host.slots for host in hosts)


def check_np(path, hosts, np):
    if np > total_slots(hosts):
        slots = ", ".join(f"{host.name}: {host.slots}" for host in hosts)
        raise errors.HostfileError(f"NP={np} is more than the {total_slots(hosts)} slots in "
                                   f"{path} ({slots}); lower NP or add slots")


def horovod_hosts(hosts):
    """The ``-H`` argument of horovodrun: ``host1:slots,host2:slots``."""
    return ",".join(f"{host.name}:{host.slots}" for host in hosts)


def main(argv=None):
    """``python -m toolkit.launcher.hostfile --discover FILE``: print ``host:slots`` lines, the host
    discovery format of horovodrun's elastic mode. The launcher points horovodrun at this,
    so that editing the hostfile during an elastic run adds or removes hosts."""
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 2 or arguments[0] != "--discover":
        print("usage: python -m toolkit.launcher.hostfile --discover HOSTFILE", file=sys.stderr)
        return 2
    try:
        hosts = parse(arguments[1])
    except errors.UserError as error:
        return errors.report(error)
    for host in hosts:
        print(f"{host.name}:{host.slots}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
