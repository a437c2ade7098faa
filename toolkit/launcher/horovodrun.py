"""horovodrun, with its check that Horovod was built with Gloo answered from a cache.

    python -m toolkit.launcher.horovodrun <horovodrun's arguments>

Before it starts any worker, horovodrun 0.28.1 asks whether its extension was built with
Gloo by importing ``horovod.tensorflow`` (so TensorFlow) in a forked process: 5 to 6 s of
every launch on this machine, spent before the workers even start importing TensorFlow
themselves. The answer only changes when Horovod is rebuilt, so it is kept in
``.cache/toolkit/horovod-gloo.json``, keyed by the path, size and time of each of
Horovod's framework libraries; a rebuilt Horovod is asked again. tests/test_launch.py
checks that the second launch does not ask again, and that a changed library is asked
about.

One repair: horovodrun's SIGINT/SIGTERM handler (``gloo_run.register_shutdown_event``)
calls ``threading.Event.set``, which takes a lock. A second signal that arrives while
the first handler holds it runs the handler again in the same thread, which then waits
for that lock forever: horovodrun hangs with its workers gone. Seen here (2026-11-29)
when SIGTERM went to horovodrun and its workers at once (a process-group kill and our
launcher's forwarded SIGTERM are already two signals); 2 of 10 processes that wait the
way horovodrun does hung under a burst of SIGTERMs. ``register_shutdown_event`` below
takes its place: its handler only writes a byte to a pipe, and a thread sets the event.
tests/test_launch.py holds Horovod's handler in that state (it hangs) and ours (it does
not). Everything else is horovodrun itself (``horovod.runner.launch.run_commandline``).
"""

import json
import os
import signal
import sys
import threading

import toolkit

# Horovod: its launcher, and the helpers of its extension check.
from horovod.common import util as horovod_util
from horovod.runner import gloo_run as horovod_gloo_run
from horovod.runner import launch as horovod_launch

CACHE_FILE = os.path.join(toolkit.PROJECT_ROOT, ".cache", "toolkit", "horovod-gloo.json")


def libraries():
    """[path, size, mtime] of each framework library Horovod has here."""
    found = []
    for framework in horovod_util.EXTENSIONS:
        path = horovod_util.get_extension_full_path(horovod_util.__file__, os.pardir,
                                                    framework, "mpi_lib")
        path = os.path.normpath(path)
        if os.path.exists(path):
            status = os.stat(path)
            found.append([path, status.st_size, status.st_mtime_ns])
    return found


def gloo_built(verbose=False):
    """Horovod's answer (its own ``gloo_built``), from the cache while the libraries are
    those it was given for."""
    key = libraries()
    try:
        with open(CACHE_FILE) as stream:
            saved = json.load(stream)
        if saved["libraries"] == key:
            return saved["gloo_built"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not asked yet, or unreadable: ask
    answer = horovod_util.gloo_built(verbose=verbose)
    if answer is not None:
        try:
            os.makedirs(os.path.dirname(CACHE_FILE), exist_ok=True)
            temporary = f"{CACHE_FILE}.partial-{os.getpid()}"
            with open(temporary, "w") as stream:
                json.dump({"libraries": key, "gloo_built": answer}, stream)
            os.replace(temporary, CACHE_FILE)
        except OSError:
            pass  # a read-only checkout asks every time, as horovodrun does
    return answer


def register_shutdown_event():
    """An event set on SIGINT or SIGTERM, like Horovod's, but safe when a signal
    interrupts the handler of the one before: the handler takes no lock."""
    event = threading.Event()
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def set_event_when_signalled():
        os.read(read_end, 1)
        event.set()

    threading.Thread(target=set_event_when_signalled, name="shutdown-signal",
                     daemon=True).start()

    def on_signal(signum, frame):
        try:
            os.write(write_end, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of earlier signals: the event is being set already

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return event


def main():
    # Horovod: run_controller and the elastic launcher call the name imported into
    # horovod.runner.launch.
    horovod_launch.gloo_built = gloo_built
    # Horovod: launch_gloo and launch_gloo_elastic look the name up in gloo_run.
    horovod_gloo_run.register_shutdown_event = register_shutdown_event
    sys.argv[0] = "horovodrun"
    return horovod_launch.run_commandline()


if __name__ == "__main__":
    sys.exit(main())
