"""How workers agree on the model: gradients every step, or local SGD.

``sync=allreduce`` (the default) all-reduces the gradients of every step, so all workers
apply the same update and hold the same weights (batch-norm statistics are averaged before
each validation and checkpoint).

``sync=local_sgd`` is periodic model averaging (local SGD; Stich 2019; "post-local SGD",
Lin et al. 2020): after ``local_sgd_warmup_epochs`` of synchronous steps, each worker
applies its own gradients, and every ``local_steps`` (K) steps all workers replace their
weights, trainable and not (batch-norm statistics), by the average over workers: one
grouped all-reduce every K steps instead of one every step.

* **Optimizer slots** (Adam's moments, SGD's momentum) stay per worker between averaging
  points: each describes its own worker's gradient stream, and averaging them too would
  double the bytes of every averaging. At each epoch end, before a mid-epoch checkpoint
  and at the end of training they are averaged with the weights, so that validation,
  every checkpoint and the export see one complete state, and a resumed run continues
  exactly as the uninterrupted one (which averaged at the same steps).
* **The learning rate** follows the synchronous rule (``base_learning_rate`` scaled by
  the world size, warmed up), as post-local SGD does: the local phase continues the
  synchronous schedule.
* **Non-finite gradients** are caught per worker (the step is not applied); whether the
  run stops (``on_nonfinite=stop``) is decided together at the next averaging point,
  where every worker learns every other's count.
* **Elastic runs** commit their in-memory state only at averaging points (every
  ``elastic_commit_steps`` rounded up to a multiple of K, counted in global steps, and at
  epoch ends, where everything was averaged), so the weights a reset goes back to are the
  workers' average. The optimizer slots committed mid-epoch are each worker's own; after
  a reset every worker takes rank 0's, as Horovod's elastic state does for everything.

``Synchronisation`` holds the mode for a session; its callback (every rank) switches the
gradient all-reduce off after the warm-up, averages every K steps and counts what was
all-reduced (``allreduce_rounds`` and ``allreduce_megabytes`` in each epoch's logs, in
both modes, for TensorBoard).
"""

import math
import typing

import tf_keras as keras

from toolkit import config as config_lib
from toolkit.worker import distributed


class Synchronisation:
    """The session's synchronisation mode (module docstring)."""

    def __init__(self, config: config_lib.TrainConfig, steps_per_epoch: int):
        self.local = config.sync == "local_sgd"
        self.local_steps = config.local_steps
        self.warmup_steps = math.ceil(config.local_sgd_warmup_epochs * steps_per_epoch)
        self.gradient_bytes_factor = 0.5 if config.fp16_allreduce else 1.0
        # Read by the optimizer when the train step is traced (distributed.wrap_optimizer).
        self.gradients = distributed.GradientSync()
        self.rounds = 0  # model all-reduces this epoch
        self.bytes = 0

    def commit_every(self, requested: int, backward_passes_per_step: int) -> int:
        """Steps between elastic commits: ``requested`` rounded up to a multiple of the
        steps between updates, or under local SGD between averagings."""
        unit = self.local_steps if self.local else backward_passes_per_step
        return -(-requested // unit) * unit

    def synchronous_at(self, step: int) -> bool:
        """Whether the step numbered ``step`` (1-based) all-reduces its gradients."""
        return not self.local or step <= self.warmup_steps

    def averages_after(self, step: int) -> bool:
        """Whether the weights are averaged after the step numbered ``step``."""
        return not self.synchronous_at(step) and step % self.local_steps == 0

    def synchronise(self, model: keras.Model) -> None:
        """Make all workers hold one model (before validation, a checkpoint, the end):
        the batch-norm statistics, or under local SGD everything, optimizer slots too."""
        if self.local:
            self._count(distributed.average_variables(
                model.variables + list(model.optimizer.variables)))
        else:
            self._count(distributed.average_non_trainable(model))

    def average_weights(self, model: keras.Model, share: typing.Sequence[int]
                        ) -> typing.List[typing.Tuple[int, ...]]:
        """Average the model's variables; return every worker's ``share``, gathered in
        the same round of collectives."""
        bytes_averaged, shares = distributed.average_variables_gathering(model.variables, share)
        self._count(bytes_averaged)
        return shares

    def _count(self, bytes_averaged: int) -> None:
        if bytes_averaged:
            self.rounds += 1
            self.bytes += bytes_averaged

    def callback(self, nonfinite) -> "SynchronisationCallback":
        return SynchronisationCallback(self, nonfinite)


class SynchronisationCallback(keras.callbacks.Callback):
    """Every rank (collectives): the switch to local steps, averaging every K steps, the
    non-finite verdict taken together there, and each epoch's all-reduce counts."""

    def __init__(self, sync: Synchronisation, nonfinite):
        super().__init__()
        self.sync = sync
        self.nonfinite = nonfinite  # guards.NonFiniteCallback

    def on_train_begin(self, logs=None):
        self.step = int(self.model.optimizer.iterations.numpy())
        self.gradient_bytes = int(self.sync.gradient_bytes_factor * sum(
            variable.shape.num_elements() * variable.dtype.size
            for variable in self.model.trainable_variables))
        # Before the first call of this fit's train function, which traces it.
        self.sync.gradients.every_step = self.sync.synchronous_at(self.step + 1)

    def on_epoch_begin(self, epoch, logs=None):
        self.sync.rounds, self.sync.bytes = 0, 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        sync = self.sync
        if sync.synchronous_at(self.step):
            sync.rounds += 1
            sync.bytes += self.gradient_bytes
        if sync.gradients.every_step and not sync.synchronous_at(self.step + 1):
            # The warm-up is over: trace the step again without the gradient all-reduce.
            sync.gradients.every_step = False
            self.model.train_function = self.model.make_train_function(force=True)
        if sync.averages_after(self.step):
            # The workers' non-finite verdicts travel with the averaging.
            self.nonfinite.agree(sync.average_weights(self.model,
                                                      self.nonfinite.local_verdict()))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["allreduce_rounds"] = float(self.sync.rounds)
            logs["allreduce_megabytes"] = self.sync.bytes / 2 ** 20
