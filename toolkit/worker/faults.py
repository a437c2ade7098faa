"""Test-only fault injection and recording. Off, and a no-op, unless
``TOOLKIT_TEST_FAULTS`` is set.

The failure tests need faults that real runs meet by accident, at a moment the test
chooses: a loss that turns NaN on one rank at one step, a process killed while a
checkpoint is half written; the resume tests need to see which examples every step
trained on. The trainer reads the variable once and passes the parsed :class:`Faults` to
the hooks below; with the variable unset they do nothing and the training path is the
production one. ``TOOLKIT_TEST_FAULTS`` is a comma-separated list
of ``key=value``:

``nan_at_step=N,nan_rank=R``
    rank R's loss (and so its gradients) becomes NaN at global step N.
``overflow_at_step=N,overflow_rank=R``
    rank R's loss is multiplied by 1e30 at global step N: under float16 its scaled
    gradients overflow to Inf, as a loss spike would make them.
``stall_at_step=N,stall_rank=R``
    rank R hangs in global step N, before its gradients are all-reduced, while its
    Horovod background thread goes on: a worker stuck in I/O or a deadlock.
``pause_at_checkpoint=K,pause_marker=PATH``
    on the chief, when the K-th checkpoint of this process has written its files but the
    ``checkpoint`` pointer has not moved to it yet, write the checkpoint's path to PATH
    and sleep, so that the test can kill the run exactly there.
``slow_checkpoint_seconds=S``
    on the chief, the first checkpoint write takes S seconds longer (a slow shared
    filesystem), while the other ranks wait for it.
``slow_export_seconds=S``
    the chief sleeps S seconds before it writes the export: a large model or a slow
    shared filesystem, while the other ranks wait for it.
``record_examples=DIR``
    every rank appends one JSON line per training batch to ``DIR/rank<R>.jsonl``:
    ``{"step": global step (0-based), "ids": listing indices of its examples}``. Lines
    are written when the input pipeline produces a batch, which may be a few steps before
    the model trains on it.
"""

import json

import dataclasses
import os
import time
import typing

import tensorflow as tf

ENVIRONMENT_VARIABLE = "TOOLKIT_TEST_FAULTS"


@dataclasses.dataclass(frozen=True)
class Faults:
    nan_at_step: int = 0
    nan_rank: int = 0
    overflow_at_step: int = 0
    overflow_rank: int = 0
    stall_at_step: int = 0
    stall_rank: int = 0
    pause_at_checkpoint: int = 0
    pause_marker: str = ""
    record_examples: str = ""
    slow_checkpoint_seconds: int = 0
    slow_export_seconds: int = 0


def from_environment(environment=os.environ) -> Faults:
    """The faults ``TOOLKIT_TEST_FAULTS`` asks for (none when it is unset)."""
    text = environment.get(ENVIRONMENT_VARIABLE, "")
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        field_type = {field.name: field.type for field in dataclasses.fields(Faults)}.get(key)
        if field_type is None:
            raise ValueError(f"{ENVIRONMENT_VARIABLE}: unknown fault {key!r}")
        values[key] = int(value) if field_type in (int, "int") else value
    return Faults(**values)


def install_in_model(model, rank: int, faults: Faults) -> None:
    """Give this rank's training step the NaN, overflow and stall faults asked for.

    Wraps the compiled model's ``compute_loss`` (call after ``compile``, before ``fit``).
    The NaN and the overflow are multiplications, so that the gradients follow, as in a
    real divergence or loss spike; the stall is a Python call inside the step that never
    returns.
    """
    poison = faults.nan_at_step and rank == faults.nan_rank
    overflow = faults.overflow_at_step and rank == faults.overflow_rank
    stall = faults.stall_at_step and rank == faults.stall_rank
    if not (poison or overflow or stall):
        return
    compute_loss = model.compute_loss

    def faulty(*args, **kwargs):
        value = compute_loss(*args, **kwargs)
        step = model.optimizer.iterations + 1
        if stall:
            with tf.control_dependencies([tf.py_function(_hang_at(faults.stall_at_step),
                                                         [step], tf.int64)]):
                value = tf.identity(value)
        for wanted, at_step, factor in ((poison, faults.nan_at_step, float("nan")),
                                        (overflow, faults.overflow_at_step, 1e30)):
            if wanted:
                value = value * tf.where(tf.equal(step, at_step),
                                         tf.constant(factor, value.dtype),
                                         tf.constant(1.0, value.dtype))
        return value

    model.compute_loss = faulty


def _hang_at(stall_step):
    def hang(step):
        while int(step) == stall_step:  # until the test or Horovod stops this process
            time.sleep(1)
        return step

    return hang


def after_checkpoint_write(faults: Faults) -> typing.Optional[typing.Callable[[str], None]]:
    """The Checkpointer's ``after_write`` hook for ``faults`` (None: no hook)."""
    if not (faults.pause_at_checkpoint or faults.slow_checkpoint_seconds):
        return None
    writes = []

    def pause(path):
        writes.append(path)
        if len(writes) == 1:
            time.sleep(faults.slow_checkpoint_seconds)
        if len(writes) != faults.pause_at_checkpoint:
            return
        with open(faults.pause_marker, "w") as stream:
            stream.write(path)
        while True:  # until the test kills this process
            time.sleep(1)

    return pause


def before_export(faults: Faults) -> None:
    """Make the chief's export as slow as ``faults`` asks."""
    time.sleep(faults.slow_export_seconds)


def record_examples(batches: tf.data.Dataset,
                    example_ids: typing.Callable[[], tf.data.Dataset], rank: int,
                    first_step: int, faults: Faults) -> tf.data.Dataset:
    """``batches`` unchanged, recording each one's example ids when ``faults`` asks for
    it (``example_ids()`` yields them batch by batch, in the same order; it is built only
    then, as building it costs part of a second of every start)."""
    if not faults.record_examples:
        return batches
    path = os.path.join(faults.record_examples, f"rank{rank}.jsonl")

    def write(step, ids):
        with open(path, "a") as stream:
            stream.write(json.dumps({"step": int(step), "ids": ids.numpy().tolist()}) + "\n")
        return step

    def recorded(step, ids, batch):
        with tf.control_dependencies([tf.py_function(write, [step, ids], tf.int64)]):
            return tf.nest.map_structure(tf.identity, batch)

    steps = tf.data.Dataset.range(first_step, first_step + 2**40)
    return tf.data.Dataset.zip((steps, example_ids(), batches)).map(recorded)
