"""Code that runs on the launching machine: validate, start and watch a run, check hosts,
write job files, serve TensorBoard, drive benchmarks. Nothing here imports Horovod's
training API; workers run ``toolkit.worker.train``."""
