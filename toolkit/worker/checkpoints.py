"""Checkpoints: model, optimizer (with its step counter) and where in the plan we are.

A checkpoint records its position with the plan it was measured against (training
examples per epoch, global batch, steps per epoch), so that a run resumed on another
number of workers converts it: with the same global batch the position is the same step
of the same stream of global batches (see toolkit.data); with another global batch (no
fixed ``global_batch_size``), the run goes on at the same point of the epoch, counted in
examples, and the step counter the learning-rate schedule reads is moved to the new plan's
step for that point. It also keeps the list of world sizes the run has used.

Only the chief writes. ``tf.train.CheckpointManager`` writes a checkpoint's data into a
temporary folder, merges it into ``ckpt-<step>.index`` / ``.data-*``, and only then
rewrites the small ``checkpoint`` pointer file (atomically, by rename). An interrupted or
failed save therefore leaves the pointer at the previous complete checkpoint, and old
checkpoints are deleted only after the new one is recorded. If the newest checkpoint
cannot be read anyway (a disk that lied), restore falls back to the one before it.
"""

import dataclasses
import json
import os
import typing

import numpy as np
import tensorflow as tf

from toolkit import errors


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a position is measured against: the training examples per epoch (all
    workers), the global batch and the steps per epoch of the world that runs."""

    examples_per_epoch: int
    global_batch_size: int
    steps_per_epoch: int
    # 0: the stream of global batches is the same on any number of workers (toolkit.data);
    # N: the stream was cut for N workers (TFRecords, read file by file: record_stream).
    stream_workers: int = 0


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run stands, in the running world's steps: completed epochs, steps into the
    next epoch, global step; and, after a resume, the checkpoint and how it was read."""

    epochs_done: int = 0
    steps_into_epoch: int = 0
    global_step: int = 0
    checkpoint: str = ""
    conversion: str = ""  # how a checkpoint of another plan was read, for the log
    # A new run warm-started (init_from): the checkpoint read, whether the head was left
    # out, how many variables were taken (config.json's "init_from").
    initialised_from: typing.Optional[typing.Dict[str, typing.Any]] = None


def convert(epochs_done: int, global_step: int, saved: Plan, plan: Plan,
            steps_per_update: int = 1) -> typing.Tuple[Position, str]:
    """The position in ``plan`` of a checkpoint saved at (``epochs_done``,
    ``global_step``) under ``saved``, and a note when the two plans differ. With gradient
    accumulation a converted position is rounded down to a whole update."""
    into_epoch = global_step - epochs_done * saved.steps_per_epoch
    if saved == plan:
        return Position(epochs_done, into_epoch, global_step), ""
    if saved.stream_workers != plan.stream_workers:
        note = (f"the training stream was cut for {saved.stream_workers or 'any number of'} "
                f"workers and this run has {plan.stream_workers or 'another number'} (each "
                f"TFRecord worker reads its own files), so epoch {epochs_done + 1} starts "
                "again from its beginning")
        return Position(epochs_done, 0, epochs_done * plan.steps_per_epoch), note
    if saved.examples_per_epoch != plan.examples_per_epoch:
        # Other data: the examples seen so far in this epoch cannot be told apart.
        note = (f"the training data changed ({saved.examples_per_epoch} -> "
                f"{plan.examples_per_epoch} examples per epoch), so epoch {epochs_done + 1} "
                "starts again from its beginning")
        return Position(epochs_done, 0, epochs_done * plan.steps_per_epoch), note
    examples_into_epoch = into_epoch * saved.global_batch_size
    into_epoch = examples_into_epoch // plan.global_batch_size
    into_epoch -= into_epoch % steps_per_update
    if into_epoch >= plan.steps_per_epoch:
        epochs_done, into_epoch = epochs_done + 1, 0
    note = (f"the global batch changed ({saved.global_batch_size} -> "
            f"{plan.global_batch_size}): {examples_into_epoch} examples into epoch "
            f"{epochs_done + 1} is step {into_epoch} of {plan.steps_per_epoch} now "
            f"(global step {global_step} -> {epochs_done * plan.steps_per_epoch + into_epoch}"
            "; the learning-rate schedule follows the new plan)")
    return Position(epochs_done, into_epoch, epochs_done * plan.steps_per_epoch + into_epoch), note


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
    dropout generator states (see random_generators), the epochs done with the plan they
    count in, and the world sizes used so far (``worlds``, a list the trainer keeps up to
    date). Only the chief writes.

    ``after_write(path)``, if given, is called when a checkpoint's files are written and
    before the pointer moves to it (the fault-injection tests pause there).
    """

    def __init__(self, directory: str, model, optimizer, keep: int, plan: Plan,
                 after_write: typing.Optional[typing.Callable[[str], None]] = None,
                 steps_per_update: int = 1):
        self.directory = directory
        self.plan = plan
        self.steps_per_update = steps_per_update
        self.worlds: typing.List[typing.Dict[str, int]] = []
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        names = ["examples_per_epoch", "global_batch_size", "steps_per_epoch"]
        # Only runs whose stream depends on the number of workers save the field (older
        # checkpoints, which have none, stay readable).
        names += ["stream_workers"] if plan.stream_workers else []
        self.saved_plan = [tf.Variable(0, dtype=tf.int64, trainable=False, name=name)
                           for name in names]
        self.saved_worlds = tf.Variable("[]", dtype=tf.string, trainable=False, name="worlds")
        # [ranks, generators, state size]; its shape follows the world that saved it.
        self.random_states = tf.Variable(np.zeros([0, 0, 0], np.int64),
                                         shape=tf.TensorShape(None), trainable=False,
                                         name="random_states_by_rank")
        self.optimizer = optimizer
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epochs_done=self.epochs_done,
            random_states=self.random_states, worlds=self.saved_worlds,
            **dict(zip(names, self.saved_plan)))
        self.write_options = (tf.train.CheckpointOptions(
            experimental_write_callbacks=[after_write]) if after_write else None)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=keep,
                                                  checkpoint_name="ckpt")

    @property
    def latest(self):
        return self.manager.latest_checkpoint

    def restore(self) -> Position:
        """Restore the newest readable checkpoint; return its Position in this plan (zero
        if none), moving the optimizer's step counter there when the plans differ (see
        :func:`convert`). ``worlds`` becomes the checkpoint's list."""
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
            saved = Plan(*(int(variable.numpy()) for variable in self.saved_plan))
            position, note = convert(int(self.epochs_done.numpy()),
                                     int(self.optimizer.iterations.numpy()), saved, self.plan,
                                     self.steps_per_update)
            self.optimizer.iterations.assign(position.global_step)
            self.worlds = json.loads(self.saved_worlds.numpy().decode())
            if problems:
                print(f"[toolkit] warning: skipped unreadable checkpoints: "
                      f"{'; '.join(problems)}; resuming from {os.path.basename(path)}",
                      flush=True)
            return dataclasses.replace(position, checkpoint=path, conversion=note)
        if problems:
            raise errors.CheckpointError(f"no checkpoint in {self.directory} can be read: "
                                         + "; ".join(problems))
        return Position()

    def save(self, epochs_done: int,
             random_states: typing.Optional[np.ndarray] = None) -> str:
        """Write a checkpoint; raise CheckpointError (naming the folder) if it fails.
        ``random_states`` are every rank's generator states, [ranks, generators, size]."""
        self.epochs_done.assign(epochs_done)
        for variable, value in zip(self.saved_plan, dataclasses.astuple(self.plan)):
            variable.assign(value)
        self.saved_worlds.assign(json.dumps(self.worlds))
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
