"""Guards that keep a run's state good and its end loud: non-finite gradients, a run that
stops making progress, and a lost launcher.

Non-finite values: the check is made on the gradients *after* Horovod's allreduce. A NaN
or Inf on any worker makes the averaged gradient non-finite on every worker, so all
workers see the same verdict at the same step without an extra collective, and they stop
(or skip the step) together. The update is never applied, so the weights and the last
checkpoint stay good.

With gradient accumulation (``backward_passes_per_step`` > 1) Horovod hands
``apply_gradients`` this rank's own running sums on the batches between all-reduces, and
applies nothing there. The verdict is taken only on the all-reduce batches, on the
reduced sums: a NaN on one rank in any of the accumulated batches reaches every rank
there, and all of them skip (or stop at) that update together.
"""


import os
import socket
import sys
import threading
import time

import tensorflow as tf
import tf_keras as keras

from toolkit import errors

def _all_finite(grads_and_vars):
    checks = []
    for gradient, _ in grads_and_vars:
        if gradient is None:
            continue
        values = gradient.values if isinstance(gradient, tf.IndexedSlices) else gradient
        checks.append(tf.reduce_all(tf.math.is_finite(values)))
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


class NonFiniteGuard:
    """Wraps ``optimizer.apply_gradients``: a step whose gradients are not all finite is not
    applied. It still advances the step counter, so the schedule and step count stay on
    plan, and it is counted in ``skipped_steps``; ``first_bad_step`` records the first."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False,
                                         name="nonfinite_skipped_steps")
        self.first_bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                          name="nonfinite_first_step")
        apply_gradients = optimizer.apply_gradients
        # Horovod's accumulator: its counter is 0 right after the all-reduce of a batch.
        accumulation = getattr(optimizer, "_agg_helper", None)

        def guarded_apply_gradients(grads_and_vars, *args, **kwargs):
            grads_and_vars = list(grads_and_vars)
            finite = _all_finite(grads_and_vars)
            if accumulation is not None:
                finite = tf.logical_or(tf.not_equal(accumulation.counter, 0), finite)

            def apply():
                with tf.control_dependencies([apply_gradients(grads_and_vars, *args, **kwargs)]):
                    return tf.constant(True)

            def skip():
                step = tf.cast(optimizer.iterations, tf.int64) + 1
                with tf.control_dependencies([
                        self.skipped_steps.assign_add(1),
                        self.first_bad_step.assign(tf.where(self.first_bad_step < 0, step,
                                                            self.first_bad_step)),
                        optimizer.iterations.assign_add(1)]):
                    return tf.constant(False)

            return tf.cond(finite, apply, skip)

        optimizer.apply_gradients = guarded_apply_gradients


class NonFiniteCallback(keras.callbacks.Callback):
    """On every rank: stop training at the first skipped step (``mode="stop"``), or let
    training carry on and count skipped steps (``mode="skip"``).

    With ``agreed=True`` (local SGD: each worker checks its own gradients) no rank stops
    alone, which would leave the others waiting in their next collective; the ranks'
    verdicts are gathered at each averaging point and handed to :meth:`agree`."""

    def __init__(self, guard, mode, agreed=False):
        super().__init__()
        self.guard = guard
        self.mode = mode
        self.agreed = agreed
        self.stopped_at = None

    def on_train_batch_end(self, batch, logs=None):
        if not self.agreed:
            self.agree([self.local_verdict()])

    def local_verdict(self):
        """(steps skipped, first skipped step or -1) on this rank."""
        return int(self.guard.skipped_steps), int(self.guard.first_bad_step)

    def agree(self, verdicts):
        """Stop (``mode="stop"``) when any of ``verdicts`` skipped a step; every rank
        calls this with the same verdicts at the same step."""
        firsts = [first for skipped, first in verdicts if skipped > 0]
        if self.mode == "stop" and self.stopped_at is None and firsts:
            self.stopped_at = min(firsts)
            self.model.stop_training = True


class StallWatchdog(keras.callbacks.Callback):
    """Every rank: stop the job when training stops making progress.

    Horovod 0.28.1's own stall check (``HOROVOD_STALL_CHECK_TIME_SECONDS`` / ``..._SHUTDOWN_
    TIME_SECONDS``, which the toolkit still sets) did not fire here, on Gloo with
    TensorFlow 2.21: with one rank hung before its allreduce (in I/O, a deadlock), the
    others waited in the allreduce forever, silently. So each rank watches its own
    progress instead: while a fit runs, any batch that begins or ends (training or
    validation) is progress. After ``warn_seconds`` without any, the rank says so once;
    after ``shutdown_seconds`` it says so and exits with ``errors.STALL_EXIT_CODE``, and
    horovodrun stops the rest. A hung rank and the ranks waiting for it stall together,
    so every rank's watchdog fires within a second or so of the others; the launcher
    turns the exit code into one diagnosis. The first batch of a fit (tracing, XLA
    compilation) is not timed, nor is anything outside a fit (the chief's export).
    Inside a fit, the chief's checkpoint writes are waited for with
    ``distributed.run_on_chief``, which reports each second waited (:meth:`waited`): a
    slow write is progress, not a stall.
    """

    def __init__(self, rank, warn_seconds, shutdown_seconds, poll_seconds=1.0):
        super().__init__()
        self.rank = rank
        self.warn_seconds = warn_seconds
        self.shutdown_seconds = shutdown_seconds
        self.poll_seconds = poll_seconds
        self.armed = False
        self.last_progress = time.monotonic()
        self.global_step = 0
        self.warned = False
        self.thread = None
        self.wait_seconds = 0.0  # of the current wait for the chief (see waited)
        self.waits_reported = 0

    def _progress(self):
        self.last_progress = time.monotonic()
        self.warned = False

    def waited(self, seconds):
        """Every rank, every second it waits for the chief's work: progress. The chief
        says once per ``warn_seconds`` that it is still at it."""
        self._progress()
        if seconds < self.wait_seconds:  # a new wait
            self.waits_reported = 0
        self.wait_seconds = seconds
        reports = int(seconds // max(self.warn_seconds, 1))
        if self.rank == 0 and reports > self.waits_reported:
            self.waits_reported = reports
            print(f"[toolkit] rank 0 has been writing for {seconds:.0f} s (a checkpoint, "
                  "the export or reports); the other workers wait for it", file=sys.stderr,
                  flush=True)

    def on_train_begin(self, logs=None):
        self.armed = False
        self.global_step = int(self.model.optimizer.iterations.numpy())
        self._progress()
        if self.thread is None:
            self.thread = threading.Thread(target=self._watch, name="toolkit-stall-watchdog",
                                           daemon=True)
            self.thread.start()

    def on_train_batch_begin(self, batch, logs=None):
        self._progress()

    def on_train_batch_end(self, batch, logs=None):
        self.global_step += 1
        self._progress()
        self.armed = True

    def on_test_batch_begin(self, batch, logs=None):
        self._progress()

    def on_test_batch_end(self, batch, logs=None):
        self._progress()

    def on_train_end(self, logs=None):
        self.armed = False

    def _watch(self):
        while True:
            time.sleep(self.poll_seconds)
            if not self.armed:
                continue
            idle = time.monotonic() - self.last_progress
            where = (f"rank {self.rank}: no batch has finished for {idle:.0f} s (last finished "
                     f"global step: {self.global_step})")
            if self.shutdown_seconds and idle > self.shutdown_seconds:
                print(f"[toolkit] {where}, more than stall_shutdown_seconds="
                      f"{self.shutdown_seconds}: a worker is hung (I/O, a deadlock, a frozen "
                      "host) or waiting for one that is; stopping the job. The last checkpoint "
                      "is kept.", file=sys.stderr, flush=True)
                os._exit(errors.STALL_EXIT_CODE)
            if idle > self.warn_seconds and not self.warned:
                self.warned = True
                print(f"[toolkit] warning: {where} (stall_check_seconds="
                      f"{self.warn_seconds}); a worker may be hung or slow", file=sys.stderr,
                      flush=True)


def start_lifeline(interval_seconds=5.0, misses_allowed=3):
    """Exit this worker if the launcher (horovodrun's rendezvous server) goes away.

    horovodrun stops local workers when it dies, but a worker it started over ssh keeps
    running if the launcher is killed or its host drops off the network. Each worker
    checks every ``interval_seconds`` that it can still open a TCP connection to the
    rendezvous server, and exits after ``misses_allowed`` failures in a row.
    """
    address = os.environ.get("HOROVOD_GLOO_RENDEZVOUS_ADDR")
    port = os.environ.get("HOROVOD_GLOO_RENDEZVOUS_PORT")
    if not address or not port:
        return None

    def watch():
        misses = 0
        while True:
            time.sleep(interval_seconds)
            try:
                with socket.create_connection((address, int(port)), timeout=interval_seconds):
                    misses = 0
            except OSError:
                misses += 1
                if misses >= misses_allowed:
                    print(f"[toolkit] rank {os.environ.get('HOROVOD_RANK', '?')}: lost the "
                          f"launcher at {address}:{port}; exiting", file=sys.stderr, flush=True)
                    os._exit(errors.LIFELINE_EXIT_CODE)

    thread = threading.Thread(target=watch, name="toolkit-lifeline", daemon=True)
    thread.start()
    return thread
