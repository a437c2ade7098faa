"""horovodrun, with its check that Horovod was built with Gloo answered from a cache.

    python -m toolkit.launcher.horovodrun <horovodrun's arguments>

Before it starts any worker, horovodrun 0.28.1 asks whether its extension was built with
Gloo by importing ``horovod.tensorflow`` (so TensorFlow) in a forked process: 5 to 6 s of
every launch on this machine, spent before the workers even start importing TensorFlow
themselves. The answer only changes when Horovod is rebuilt, so it is kept in
``.cache/toolkit/horovod-gloo.json``, keyed by the path, size and time of each of
Horovod's framework libraries; a rebuilt Horovod is asked again. Everything else is
horovodrun itself (``horovod.runner.launch.run_commandline``), unchanged.
tests/test_launch.py checks that the second launch does not ask again, and that a
changed library is asked about.
"""

import json
import os
import sys

import toolkit

# Horovod: its launcher, and the helpers of its extension check.
from horovod.common import util as horovod_util
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


def main():
    # Horovod: run_controller and the elastic launcher call the name imported into
    # horovod.runner.launch.
    horovod_launch.gloo_built = gloo_built
    sys.argv[0] = "horovodrun"
    return horovod_launch.run_commandline()


if __name__ == "__main__":
    sys.exit(main())
