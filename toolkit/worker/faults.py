"""Test-only fault injection. Off, and a no-op, unless ``TOOLKIT_TEST_FAULTS`` is set.

The failure tests need faults that real runs meet by accident, at a moment the test
chooses: a loss that turns NaN on one rank at one step, a process killed while a
checkpoint is half written. The trainer reads the variable once and passes the parsed
:class:`Faults` to the two hooks below; with the variable unset both do nothing and the
training path is the production one. ``TOOLKIT_TEST_FAULTS`` is a comma-separated list
of ``key=value``:

``nan_at_step=N,nan_rank=R``
    rank R's loss (and so its gradients) becomes NaN at global step N.
``stall_at_step=N,stall_rank=R``
    rank R hangs in global step N, before its gradients are all-reduced, while its
    Horovod background thread goes on: a worker stuck in I/O or a deadlock.
``pause_at_checkpoint=K,pause_marker=PATH``
    on the chief, when the K-th checkpoint of this process has written its files but the
    ``checkpoint`` pointer has not moved to it yet, write the checkpoint's path to PATH
    and sleep, so that the test can kill the run exactly there.
"""

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
    stall_at_step: int = 0
    stall_rank: int = 0
    pause_at_checkpoint: int = 0
    pause_marker: str = ""


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
    """Give this rank's training step the NaN and stall faults asked for.

    Wraps the compiled model's ``compute_loss`` (call after ``compile``, before ``fit``).
    The NaN is a multiplication, so that the gradients turn NaN too, as in a real
    divergence; the stall is a Python call inside the step that never returns.
    """
    poison = faults.nan_at_step and rank == faults.nan_rank
    stall = faults.stall_at_step and rank == faults.stall_rank
    if not (poison or stall):
        return
    compute_loss = model.compute_loss

    def faulty(*args, **kwargs):
        value = compute_loss(*args, **kwargs)
        step = model.optimizer.iterations + 1
        if stall:
            with tf.control_dependencies([tf.py_function(_hang_at(faults.stall_at_step),
                                                         [step], tf.int64)]):
                value = tf.identity(value)
        if poison:
            at_fault = tf.equal(step, faults.nan_at_step)
            value = value * tf.where(at_fault, tf.constant(float("nan"), value.dtype),
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
    if not faults.pause_at_checkpoint:
        return None
    writes = []

    def pause(path):
        writes.append(path)
        if len(writes) != faults.pause_at_checkpoint:
            return
        with open(faults.pause_marker, "w") as stream:
            stream.write(path)
        while True:  # until the test kills this process
            time.sleep(1)

    return pause
