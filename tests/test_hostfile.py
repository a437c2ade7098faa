"""Hostfiles: comments and blank lines accepted, every bad line named with its fix."""

import pytest

from toolkit import errors
from toolkit.launcher import hostfile

pytestmark = pytest.mark.fast


def parse(text, path="hosts"):
    return hostfile.parse_text(path, text)


def test_comments_blank_lines_names_and_addresses():
    hosts = parse("# cluster\n\nnode-1 slots=4   # rank 0\n10.0.0.2 slots=2\n"
                  "gpu.example.org slots=8\n")
    assert [(host.name, host.slots, host.line) for host in hosts] == [
        ("node-1", 4, 3), ("10.0.0.2", 2, 4), ("gpu.example.org", 8, 5)]
    assert hostfile.horovod_hosts(hosts) == "node-1:4,10.0.0.2:2,gpu.example.org:8"
    assert hostfile.total_slots(hosts) == 14


@pytest.mark.parametrize("line, problem", [
    ("node-1", "slots=<n> is missing"),
    ("node-1 slots=0", "slots must be a whole number >= 1, got '0'"),
    ("node-1 slots=-2", "slots must be a whole number, got '-2'"),
    ("node-1 slots=two", "slots must be a whole number, got 'two'"),
    ("node-1 slots=1 port=0", "port must be from 1 to 65535, got 0"),
    ("node-1 slots=1 port=ssh", "port must be a whole number, got 'ssh'"),
    ("node-1 slots=2 slots=3", "slots is given twice"),
    ("node-1 max_slots=2", "unknown option 'max_slots=2'"),
    ("node-1 2", "unknown option '2'"),
    ("node;rm -rf / slots=1", "is not a valid host name"),
    ("$(reboot) slots=1", "is not a valid host name"),
    ("-oProxyCommand=x slots=1", "is not a valid host name"),
    ("300.1.1.1 slots=1", "is not a valid host name"),
    ("fe80::1 slots=1", "IPv6 address"),
])
def test_each_bad_line_names_file_line_text_and_what_is_valid(line, problem):
    with pytest.raises(errors.HostfileError) as error:
        parse(f"# header\n{line}\n", path="hostfiles/bad")
    message = str(error.value)
    assert message.startswith(f"hostfiles/bad:2: {line!r}")
    assert problem in message
    assert "<host> slots=<n>" in message


def test_optional_ssh_port():
    hosts = parse("a slots=1 port=2222\nb slots=2\n")
    assert [(host.name, host.port) for host in hosts] == [("a", 2222), ("b", 0)]


def test_duplicate_host_names_both_lines():
    with pytest.raises(errors.HostfileError) as error:
        parse("a slots=1\nb slots=1\nA slots=2\n", path="h")
    assert "h:3:" in str(error.value) and "already listed on line 1" in str(error.value)


def test_empty_and_missing_files():
    with pytest.raises(errors.HostfileError, match="no hosts"):
        parse("# nothing\n\n")
    with pytest.raises(errors.HostfileError, match="cannot read hostfile /nonexistent"):
        hostfile.parse("/nonexistent")


def test_np_larger_than_slots():
    hosts = parse("a slots=2\nb slots=1\n")
    hostfile.check_np("h", hosts, 3)
    with pytest.raises(errors.HostfileError, match="NP=4 is more than the 3 slots in h"):
        hostfile.check_np("h", hosts, 4)


def test_shipped_hostfiles_are_valid():
    assert hostfile.total_slots(hostfile.parse("hostfiles/localhost")) == 2
    assert hostfile.total_slots(hostfile.parse("hostfiles/cluster.example")) == 16
