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
import typing

import numpy as np
import tensorflow as tf

from toolkit import errors

@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run stands: completed epochs, steps into the next epoch, global step."""

    epochs_done: int = 0
    steps_into_epoch: int = 0
    global_step: int = 0
    checkpoint: str = ""


def random_generators(model) -> typing.List[tf.random.Generator]:
    """The ``tf.random.Generator`` of every random layer (dropout) of ``model``, in a
    fixed order.

    With ``--deterministic=true`` Keras 2 draws each dropout layer's masks from a
    generator whose state is a variable, but tf_keras leaves that state out of
    checkpoints on purpose (``BaseRandomLayer._trackable_children``), so a resumed run
    would draw other masks than the uninterrupted one. The Checkpointer saves these
    states itself, for every rank: the ranks start from the same seed, but a generator
    advances by the number of values it draws, which differs between ranks whose batches
    differ in shape (BERT's batches are padded to their own length). (Without
    ``deterministic`` dropout uses stateless-seeded legacy ops and there is nothing to
    save.)
    """
    generators = []
    for module in [model, *model.submodules]:
        generator = getattr(getattr(module, "_random_generator", None), "_generator", None)
        if isinstance(generator, tf.random.Generator):
            generators.append(generator)
    return generators


def random_states(generators: typing.Sequence[tf.random.Generator]) -> np.ndarray:
    """The generators' states as one int64 array, [generators, state size]."""
    return np.stack([generator.state.numpy() for generator in generators]) if generators else (
        np.zeros([0, 0], np.int64))


def set_random_states(generators: typing.Sequence[tf.random.Generator],
                      states: np.ndarray) -> None:
    for generator, state in zip(generators, states):
        generator.state.assign(state)


class Checkpointer:
    """Saves and restores the model, the optimizer (with its step counter), every rank's
    dropout generator states (see random_generators) and the epochs done (chief only).

    ``after_write(path)``, if given, is called when a checkpoint's files are written and
    before the pointer moves to it (the fault-injection tests pause there).
    """

    def __init__(self, directory: str, model, optimizer, keep: int,
                 after_write: typing.Optional[typing.Callable[[str], None]] = None):
        self.directory = directory
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        self.steps_per_epoch = tf.Variable(0, dtype=tf.int64, trainable=False,
                                           name="steps_per_epoch")
        # [ranks, generators, state size]; its shape follows the world that saved it.
        self.random_states = tf.Variable(np.zeros([0, 0, 0], np.int64),
                                         shape=tf.TensorShape(None), trainable=False,
                                         name="random_states_by_rank")
        self.optimizer = optimizer
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epochs_done=self.epochs_done,
            steps_per_epoch=self.steps_per_epoch, random_states=self.random_states)
        self.write_options = (tf.train.CheckpointOptions(
            experimental_write_callbacks=[after_write]) if after_write else None)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=keep,
                                                  checkpoint_name="ckpt")

    @property
    def latest(self):
        return self.manager.latest_checkpoint

    def restore(self, steps_per_epoch: int) -> Position:
        """Restore the newest readable checkpoint; return its Position (zero if none).

        A checkpoint written with another number of steps per epoch (a different world
        size or data) resumes at the start of its next epoch.
        """
        candidates = list(reversed(self.manager.checkpoints))
        problems = []
        for path in candidates:
            try:
                # expect_partial: the model may own objects (compiled metrics) not saved.
                self.checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
            # What TensorFlow raises for a damaged file varies with the damage: an OpError
            # (DataLossError), an IndexError ("Read less bytes than requested") for a
            # truncated one, a ValueError or AssertionError for a mismatched one.
            except (tf.errors.OpError, ValueError, AssertionError, IndexError) as error:
                problems.append(f"{path}: {str(error).splitlines()[0]}")
                continue
            epochs_done = int(self.epochs_done.numpy())
            global_step = int(self.optimizer.iterations.numpy())
            into_epoch = global_step - epochs_done * int(self.steps_per_epoch.numpy())
            if int(self.steps_per_epoch.numpy()) != steps_per_epoch or not (
                    0 <= into_epoch < steps_per_epoch):
                into_epoch = 0
            if problems:
                print(f"[toolkit] warning: skipped unreadable checkpoints: "
                      f"{'; '.join(problems)}; resuming from {os.path.basename(path)}",
                      flush=True)
            return Position(epochs_done, into_epoch, global_step, path)
        if problems:
            raise errors.CheckpointError(f"no checkpoint in {self.directory} can be read: "
                                         + "; ".join(problems))
        return Position()

    def save(self, epochs_done: int, steps_per_epoch: int,
             random_states: typing.Optional[np.ndarray] = None) -> str:
        """Write a checkpoint; raise CheckpointError (naming the folder) if it fails.
        ``random_states`` are every rank's generator states, [ranks, generators, size]."""
        self.epochs_done.assign(epochs_done)
        self.steps_per_epoch.assign(steps_per_epoch)
        if random_states is not None:
            self.random_states.assign(random_states)
        try:
            return self.manager.save(checkpoint_number=int(self.optimizer.iterations.numpy()),
                                     options=self.write_options)
        except (tf.errors.OpError, OSError) as error:
            previous = self.manager.latest_checkpoint
            raise errors.CheckpointError(
                f"could not write a checkpoint to {self.directory}: "
                f"{str(error).splitlines()[0]}. The previous checkpoint "
                f"({os.path.basename(previous) if previous else 'none'}) is intact; free "
                "space or fix the folder, then rerun the same command to resume") from None
