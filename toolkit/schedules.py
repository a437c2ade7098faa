"""Learning rate scaled by world size, with warm-up, then decay.

Horovod's advice (after Goyal et al., 2017) is to multiply a one-worker learning rate by
the number of workers, since the global batch grew by that factor, and to warm up to it
because the scaled rate diverges early in training. We implement both as a Keras
``LearningRateSchedule`` of the optimizer's step counter rather than with Horovod's
``LearningRateWarmupCallback``: the callback overwrites the learning rate from an epoch
counter with ``K.set_value``, which cannot be combined with a decaying schedule (BERT's
linear decay) and would restart its ramp on a mid-epoch resume. A schedule of the step
counter is restored with the optimizer and gives the same rate at the same step however
the run was interrupted.
"""

import math

import tensorflow as tf
import tf_keras as keras


def scale_factor(rule, world_size):
    """How much larger the global learning rate is than the one-worker rate."""
    if rule == "linear":
        return float(world_size)
    if rule == "sqrt":
        return math.sqrt(world_size)
    if rule == "none":
        return 1.0
    raise ValueError(f"lr_scaling must be 'linear', 'sqrt' or 'none', got {rule!r}")


@keras.utils.register_keras_serializable(package="toolkit")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear ramp from 0 to ``peak_learning_rate`` over ``warmup_steps``, then decay to 0.

    ``decay`` is ``"cosine"``, ``"linear"`` or ``"none"`` (stay at the peak).
    """

    def __init__(self, peak_learning_rate, warmup_steps, total_steps, decay):
        super().__init__()
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), 1)
        self.decay = decay

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
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
        }


def build(config, world_size, steps_per_epoch):
    """The schedule for ``config`` on ``world_size`` workers."""
    return WarmupDecay(
        peak_learning_rate=config.base_learning_rate * scale_factor(config.lr_scaling, world_size),
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        total_steps=config.epochs * steps_per_epoch,
        decay=config.lr_decay,
    )


def build_optimizer(config, learning_rate):
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
