"""Code that runs inside every worker process, started by horovodrun: the trainer and
everything it uses (Horovod, callbacks, checkpoints, guards, schedules, TensorBoard
writers, the export)."""
