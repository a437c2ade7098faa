"""Checkpoints: model, optimizer (with its step counter) and where in the schedule we are.

Only the chief writes. ``tf.train.CheckpointManager`` writes a checkpoint's data into a
temporary folder, merges it into ``ckpt-<step>.index`` / ``.data-*``, and only then
rewrites the small ``checkpoint`` pointer file (atomically, by rename). An interrupted or
failed save therefore leaves the pointer at the previous complete checkpoint, and old
checkpoints are deleted only after the new one is recorded. If the newest checkpoint
cannot be read anyway (a disk that lied), restore falls back to the one before it.
"""

import dataclasses
import os

import tensorflow as tf


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names it."""


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run stands: completed epochs, steps into the next epoch, global step."""

    epochs_done: int = 0
    steps_into_epoch: int = 0
    global_step: int = 0
    checkpoint: str = ""


class Checkpointer:
    def __init__(self, directory, model, optimizer, keep, extra_variables=()):
        self.directory = directory
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        self.steps_per_epoch = tf.Variable(0, dtype=tf.int64, trainable=False,
                                           name="steps_per_epoch")
        self.optimizer = optimizer
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epochs_done=self.epochs_done,
            steps_per_epoch=self.steps_per_epoch,
            **{f"extra_{index}": variable for index, variable in enumerate(extra_variables)})
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=keep,
                                                  checkpoint_name="ckpt")

    @property
    def latest(self):
        return self.manager.latest_checkpoint

    def restore(self, steps_per_epoch):
        """Restore the newest readable checkpoint; return its Position (zero if none).

        A checkpoint written with another number of steps per epoch (a different world
        size or data) resumes at the start of its next epoch.
        """
        candidates = list(reversed(self.manager.checkpoints))
        errors = []
        for path in candidates:
            try:
                # expect_partial: the model may own objects (compiled metrics) not saved.
                self.checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
            except (tf.errors.OpError, ValueError, AssertionError) as error:
                errors.append(f"{path}: {str(error).splitlines()[0]}")
                continue
            epochs_done = int(self.epochs_done.numpy())
            global_step = int(self.optimizer.iterations.numpy())
            into_epoch = global_step - epochs_done * int(self.steps_per_epoch.numpy())
            if int(self.steps_per_epoch.numpy()) != steps_per_epoch or not (
                    0 <= into_epoch < steps_per_epoch):
                into_epoch = 0
            if errors:
                print(f"[toolkit] warning: skipped unreadable checkpoints: {'; '.join(errors)}",
                      flush=True)
            return Position(epochs_done, into_epoch, global_step, path)
        if errors:
            raise CheckpointError("no checkpoint in " + self.directory + " can be read: "
                                  + "; ".join(errors))
        return Position()

    def save(self, epochs_done, steps_per_epoch):
        """Write a checkpoint; raise CheckpointError (naming the folder) if it fails."""
        self.epochs_done.assign(epochs_done)
        self.steps_per_epoch.assign(steps_per_epoch)
        try:
            return self.manager.save(checkpoint_number=int(self.optimizer.iterations.numpy()))
        except (tf.errors.OpError, OSError) as error:
            previous = self.manager.latest_checkpoint
            raise CheckpointError(
                f"could not write a checkpoint to {self.directory}: "
                f"{str(error).splitlines()[0]}. The previous checkpoint "
                f"({os.path.basename(previous) if previous else 'none'}) is intact; free "
                "space or fix the folder, then rerun the same command to resume") from None
