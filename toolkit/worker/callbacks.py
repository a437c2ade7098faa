"""Keras callbacks the trainer adds after Horovod's (see ``distributed.first_callbacks``).

None of these performs a collective, so the chief-only ones may safely run on rank 0
alone; a chief-only callback that allreduced would deadlock the other ranks.
"""

import os
import sys
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras


# Set by the launcher for its workers: when `make train` started (seconds since the epoch).
LAUNCHED_AT_VARIABLE = "TOOLKIT_LAUNCHED_AT"
FIRST_STEP_LINE = "[toolkit] first training step done"


class FirstStep(keras.callbacks.Callback):
    """``seconds``: from the launch (or, run without the launcher, this process's start)
    to the end of the first training step this process ran; None before it. The chief
    prints it (FIRST_STEP_LINE), for users and for make bench-data."""

    def __init__(self, announce: bool):
        super().__init__()
        self.announce = announce
        import psutil

        launched = os.environ.get(LAUNCHED_AT_VARIABLE)
        self.started = float(launched) if launched else psutil.Process().create_time()
        self.seconds = None

    def on_train_batch_end(self, batch, logs=None):
        if self.seconds is None:
            self.seconds = round(time.time() - self.started, 2)
            if self.announce:
                print(f"{FIRST_STEP_LINE} {self.seconds:.1f} s after the launch", flush=True)


class Throughput(keras.callbacks.Callback):
    """Measure training speed; add ``samples_per_second`` (global, and per worker) and
    ``step_time_ms`` to each epoch's logs, so TensorBoard, History and the summary see them.

    Runs on every rank (it only reads the local clock). The timed span is the epoch's
    training steps, excluding validation and the first step of the run (graph tracing).
    """

    def __init__(self, global_batch_size, world_size):
        super().__init__()
        self.global_batch_size = global_batch_size
        self.world_size = world_size
        self.step_times = []
        self._step_start = None
        self._first_step_seen = False

    def on_epoch_begin(self, epoch, logs=None):
        self.step_times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        elapsed = time.perf_counter() - self._step_start
        if self._first_step_seen:
            self.step_times.append(elapsed)
        self._first_step_seen = True

    def recent_samples_per_second(self, steps):
        """Global samples/s over the last ``steps`` timed steps (0 if none yet)."""
        recent = self.step_times[-steps:]
        return self.global_batch_size * len(recent) / sum(recent) if recent else 0.0

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.step_times:
            return
        samples_per_second = self.global_batch_size * len(self.step_times) / sum(self.step_times)
        logs["samples_per_second"] = samples_per_second
        logs["samples_per_second_per_worker"] = samples_per_second / self.world_size
        logs["step_time_ms"] = 1000.0 * float(np.mean(self.step_times))


class Progress(keras.callbacks.Callback):
    """One progress line every ``every_steps`` steps and one per epoch (chief only).

    Lines rather than a redrawn bar, because under horovodrun stdout is a pipe that is
    prefixed and forwarded line by line.
    """

    def __init__(self, epochs, steps_per_epoch, every_steps, throughput, stream=None):
        super().__init__()
        self.step_offset = 0  # steps of the current epoch done before this fit (resume)
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.throughput = throughput
        self.stream = stream or sys.stdout
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = batch + 1 + self.step_offset
        if step % self.every_steps == 0 and step < self.steps_per_epoch:
            rate = self.throughput.recent_samples_per_second(self.every_steps)
            self._print(f"epoch {self.epoch + 1}/{self.epochs} step {step}/{self.steps_per_epoch} "
                        f"{_format(logs)} {rate:.0f} samples/s")

    def on_epoch_end(self, epoch, logs=None):
        self._print(f"epoch {epoch + 1}/{self.epochs} done: {_format(logs)}")

    def _print(self, line):
        print(line, file=self.stream, flush=True)


def _format(logs):
    return " ".join(f"{key}={value:.4g}" for key, value in sorted((logs or {}).items())
                    if isinstance(value, (int, float, np.floating)))


class StepScalars(keras.callbacks.Callback):
    """Chief only: learning rate and samples/s every ``every_steps`` steps to TensorBoard,
    and the loss scale under float16 (``step/loss_scale``: it halves at every step whose
    scaled gradients overflowed, which was then skipped).

    Keras' TensorBoard callback logs the learning rate once per epoch; warm-up happens
    within the first epoch, so it is logged here by step too.
    """

    def __init__(self, log_dir, every_steps, throughput):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)
        self.every_steps = every_steps
        self.throughput = throughput

    def on_train_begin(self, logs=None):
        # Counted locally: reading the optimizer's counter every batch would sync the device.
        self.step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every_steps:
            return
        with self.writer.as_default(step=self.step):
            # With a schedule, tf_keras' learning_rate is the rate of the step just taken.
            tf.summary.scalar("step/learning_rate", self.model.optimizer.learning_rate)
            if getattr(self.model.optimizer, "dynamic", False):
                tf.summary.scalar("step/loss_scale", self.model.optimizer.loss_scale)
            rate = self.throughput.recent_samples_per_second(self.every_steps)
            if rate:
                tf.summary.scalar("step/samples_per_second", rate)
        self.writer.flush()

    def on_train_end(self, logs=None):
        # Flushed, not closed: a resumed run calls fit again with the same callbacks.
        self.writer.flush()


class Checkpointing(keras.callbacks.Callback):
    """Checkpoints at every epoch end and, with ``every_steps``, every that many steps.

    Runs on every rank: before a mid-epoch checkpoint all ranks call ``synchronise(model)``
    (a collective that averages batch-norm statistics, or under local SGD the whole
    model and optimizer state), so the saved state is the state of every rank and a run resumed from it continues exactly as the uninterrupted one would.
    At epoch ends the statistics were already averaged before validation. Before every
    checkpoint all ranks also call ``gather_random_states()`` (a collective: every rank's
    dropout generator states, which differ per rank). Only the chief writes; the others
    wait for it through ``run_on_chief(work)`` (see distributed.run_on_chief), so that a
    slow write is not taken for a stall.
    """

    def __init__(self, checkpointer, every_steps, steps_per_epoch, synchronise,
                 gather_random_states, run_on_chief):
        super().__init__()
        self.checkpointer = checkpointer  # None on ranks other than the chief
        self.every_steps = every_steps
        self.steps_per_epoch = steps_per_epoch
        self.synchronise = synchronise
        self.gather_random_states = gather_random_states
        self.run_on_chief = run_on_chief

    def _save(self, epochs_done):
        random_states = self.gather_random_states()
        self.run_on_chief(lambda: self.checkpointer.save(epochs_done=epochs_done,
                                                         random_states=random_states))

    def on_train_begin(self, logs=None):
        self.step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        # A run stopped at this step (NaN: every rank sets stop_training at the same step)
        # keeps its last good checkpoint.
        if (not self.every_steps or self.step % self.every_steps
                or self.step % self.steps_per_epoch == 0 or self.model.stop_training):
            return
        self.synchronise(self.model)
        self._save(self.step // self.steps_per_epoch)

    def on_epoch_end(self, epoch, logs=None):
        # A run stopped mid-epoch (NaN) did not finish the epoch: do not record it as done.
        # (stop_training is set on every rank at the same step, so all skip together.)
        if self.model.stop_training:
            return
        self._save(epoch + 1)
