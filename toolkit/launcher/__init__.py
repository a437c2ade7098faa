"""Code that runs on the launching machine: validate, start and watch a run, check hosts,
write job files, serve TensorBoard, drive benchmarks. Nothing here imports Horovod's
training API; workers run ``toolkit.worker.train``."""

import sys

# How everything here starts horovodrun: through toolkit.launcher.horovodrun, which is
# horovodrun with its seconds-long Gloo check answered from a cache.
HOROVODRUN = [sys.executable, "-m", "toolkit.launcher.horovodrun"]
