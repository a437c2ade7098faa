"""Checkpoints: model, optimizer (with its step counter) and the number of epochs done.

Only the chief writes. ``tf.train.CheckpointManager`` writes the data files first and
then rewrites the small ``checkpoint`` pointer file, so an interrupted save leaves the
pointer at the previous complete checkpoint; old checkpoints are deleted only after the
new one is recorded.
"""

import os

import tensorflow as tf


class Checkpointer:
    def __init__(self, directory, model, optimizer, keep):
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        self.optimizer = optimizer
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                              epochs_done=self.epochs_done)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=keep,
                                                  checkpoint_name="ckpt")

    @property
    def latest(self):
        return self.manager.latest_checkpoint

    def restore(self):
        """Restore the latest checkpoint if there is one; return the epochs it had done."""
        if self.latest is None:
            return 0
        # expect_partial: the model may own objects (compiled metrics) not in the checkpoint.
        self.checkpoint.restore(self.latest).assert_existing_objects_matched().expect_partial()
        return int(self.epochs_done.numpy())

    def save(self, epochs_done):
        self.epochs_done.assign(epochs_done)
        return self.manager.save(checkpoint_number=int(self.optimizer.iterations.numpy()))


def has_checkpoint(directory):
    return tf.train.latest_checkpoint(directory) is not None if os.path.isdir(directory) else False
