"""Learning rate scaled with the global batch, with warm-up, then decay.

Horovod's advice (after Goyal et al., 2017) is to multiply a one-worker learning rate by
the number of workers, since the global batch grew by that factor, and to warm up to it
because the scaled rate diverges early in training. ``base_learning_rate`` is the rate for
a batch of ``batch_size_per_worker`` examples, so the factor is the global batch over that:
the number of workers, or, when ``global_batch_size`` fixes the global batch, the same
for any number of workers (as the examples per step are). We implement both as a Keras
``LearningRateSchedule`` of the optimizer's step counter rather than with Horovod's
``LearningRateWarmupCallback``: the callback overwrites the learning rate from an epoch
counter with ``K.set_value``, which cannot be combined with a decaying schedule (BERT's
linear decay) and would restart its ramp on a mid-epoch resume. A schedule of the step
counter is restored with the optimizer and gives the same rate at the same step however
the run was interrupted.

Gradient accumulation (``backward_passes_per_step`` = k) updates the weights once every k
batches, with the average gradient of k global batches: the batch the learning rate is
scaled for is k global batches, and the schedule counts updates (the step counter, which
counts batches, divided by k), so that warm-up and decay take the same number of updates
as a run without accumulation on a k times larger batch.
"""

import math

import tensorflow as tf
import tf_keras as keras

from toolkit import config as config_lib


def batch_scale(config: config_lib.TrainConfig, world_size: int) -> float:
    """How many ``batch_size_per_worker`` batches one global batch holds (the user's
    config, before a fixed global batch is split over the workers)."""
    global_batch_size = config.global_batch_size or config.batch_size_per_worker * world_size
    return global_batch_size * config.backward_passes_per_step / config.batch_size_per_worker


def scale_factor(rule: str, scale: float) -> float:
    """How much larger the global learning rate is than ``base_learning_rate``."""
    if rule == "linear":
        return float(scale)
    if rule == "sqrt":
        return math.sqrt(scale)
    if rule == "none":
        return 1.0
    raise ValueError(f"lr_scaling must be 'linear', 'sqrt' or 'none', got {rule!r}")


@keras.utils.register_keras_serializable(package="toolkit")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear ramp from 0 to ``peak_learning_rate`` over ``warmup_steps``, then decay to 0.

    ``decay`` is ``"cosine"``, ``"linear"`` or ``"none"`` (stay at the peak). Steps are
    updates: the step counter (batches) divided by ``steps_per_update``.
    """

    def __init__(self, peak_learning_rate, warmup_steps, total_steps, decay,
                 steps_per_update=1):
        super().__init__()
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), 1)
        self.decay = decay
        self.steps_per_update = int(steps_per_update)

    def __call__(self, step):
        step = tf.cast(step // self.steps_per_update, tf.float32)
        peak = tf.constant(self.peak_learning_rate, tf.float32)
        # (step + 1) so that the very first update is not a no-op with a zero rate.
        warmup = peak * (step + 1.0) / max(self.warmup_steps, 1)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.decay == "cosine":
            decayed = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        elif self.decay == "linear":
            decayed = peak * (1.0 - progress)
        else:
            decayed = peak
        return tf.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "decay": self.decay,
            "steps_per_update": self.steps_per_update,
        }


def build(config: config_lib.TrainConfig, scale: float, steps_per_epoch: int) -> WarmupDecay:
    """The schedule for ``config`` with global batches of ``scale`` (see batch_scale) and
    ``steps_per_epoch`` batches (a multiple of backward_passes_per_step)."""
    updates_per_epoch = steps_per_epoch // config.backward_passes_per_step
    return WarmupDecay(
        peak_learning_rate=config.base_learning_rate * scale_factor(config.lr_scaling, scale),
        warmup_steps=round(config.warmup_epochs * updates_per_epoch),
        total_steps=config.epochs * updates_per_epoch,
        decay=config.lr_decay,
        steps_per_update=config.backward_passes_per_step,
    )


def build_optimizer(config: config_lib.TrainConfig,
                    learning_rate: keras.optimizers.schedules.LearningRateSchedule,
                    ) -> keras.optimizers.Optimizer:
    """The Keras optimizer named by ``config.optimizer`` (before Horovod wraps it)."""
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if config.optimizer == "adamw":
        # BERT's fine-tuning recipe: Adam with decoupled weight decay, epsilon 1e-6.
        return keras.optimizers.AdamW(learning_rate=learning_rate,
                                      weight_decay=config.weight_decay, epsilon=1e-6)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=config.momentum)
    raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {config.optimizer!r}")
