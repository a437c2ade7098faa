"""Scan a data source once, then reuse what the scan found: manifests.

Listing and checking a large data source (every file of an image folder opened, every
record of a TFRecord set counted) takes minutes at ImageNet size, and every worker would
otherwise do it at every start. A manifest is what one scan found (files, classes, record
counts, unusable files), saved as JSON in ``<cache_dir>/manifests/``. Its name comes from
the source and the options of the scan; inside, it is stamped with a *fingerprint* of the
source that is cheap to take without opening any data file: the modification times of the
folders (adding, removing or renaming a file changes its folder's time), or the size and
time of each matched file. A later scan with the same name and fingerprint reads the
manifest instead of the files; any difference scans again and replaces it.

Not noticed: a file rewritten in place with the same name in a folder whose time did not
change (tools that write a new file and rename it over the old one do change it). Run
``make prepare-data`` (which always rescans) or set ``--rescan_data=true`` after such edits.

The manifest is written atomically (a temporary file renamed over the old one), so
workers that scan at the same time, or a scan that is interrupted, never leave a partial
one. Workers on hosts that do not share ``cache_dir`` each scan once on their host.
"""

import hashlib
import json
import os
import sys
import time
import typing

FORMAT = 2  # bump when the content of manifests changes

Json = typing.Any
# The manifests this process wrote, for make prepare-data's report.
WRITTEN: typing.List[str] = []


def path(cache_dir: str, kind: str, source: Json) -> str:
    """The manifest file for ``source`` (a JSON-able description: paths and options)."""
    key = hashlib.sha256(json.dumps([FORMAT, kind, source], sort_keys=True).encode())
    return os.path.join(cache_dir, "manifests", f"{kind}-{key.hexdigest()[:24]}.json")


def load_or_scan(cache_dir: str, kind: str, source: Json,
                 fingerprint: typing.Callable[[], Json], scan: typing.Callable[[], Json], *,
                 rescan: bool = False) -> typing.Tuple[Json, bool]:
    """What ``scan()`` returns for ``source``, read from its manifest when that was written
    for the same fingerprint; else scanned and saved. Also returns whether it scanned."""
    manifest = path(cache_dir, kind, source)
    stamp = fingerprint()
    if not rescan:
        try:
            with open(manifest) as stream:
                saved = json.load(stream)
            if saved.get("fingerprint") == stamp:
                return saved["content"], False
        except (OSError, ValueError, KeyError):
            pass  # missing, unreadable or from another format: scan again
    content = scan()
    os.makedirs(os.path.dirname(manifest), exist_ok=True)
    temporary = f"{manifest}.partial-{os.getpid()}"
    with open(temporary, "w") as stream:
        json.dump({"format": FORMAT, "kind": kind, "source": source, "fingerprint": stamp,
                   "scanned_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "content": content},
                  stream)
    os.replace(temporary, manifest)
    WRITTEN.append(manifest)
    return content, True


def folder_times(directory: str, subfolders: typing.Iterable[str]) -> Json:
    """Fingerprint of a folder of subfolders: each one's modification time in ns."""
    return [[name, os.stat(os.path.join(directory, name)).st_mtime_ns]
            for name in ["."] + sorted(subfolders)]


def file_stamps(files: typing.Iterable[str]) -> Json:
    """Fingerprint of a set of files: each one's path, size and modification time (None
    for a file that cannot be read: the scan then says why, naming it)."""
    stamps = []
    for name in files:
        try:
            status = os.stat(name)
            stamps.append([name, status.st_size, status.st_mtime_ns])
        except OSError:
            stamps.append([name, None, None])
    return stamps


class Progress:
    """Progress lines on stderr for a long scan: at most one every ``every`` seconds,
    with the count, the rate and, at the end, the time taken."""

    def __init__(self, what: str, total: int = 0, every: float = 5.0):
        self.what, self.total, self.every = what, total, every
        self.started = self.last = time.monotonic()
        self.done = 0

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            total = f"/{self.total:,}" if self.total else ""
            print(f"{self.what}: {self.done:,}{total} ({rate:,.0f}/s)",
                  file=sys.stderr, flush=True)

    def finish(self) -> None:
        seconds = time.monotonic() - self.started
        if seconds >= self.every:
            print(f"{self.what}: {self.done:,} done in {seconds:.0f} s", file=sys.stderr,
                  flush=True)
