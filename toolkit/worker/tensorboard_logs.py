"""TensorBoard beyond loss curves: the config, hyperparameters, confusion matrices, input
examples and an estimate of the time spent in allreduce.

Only the chief writes; the allreduce probe is a collective that every rank runs.
"""

import io
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorboard.plugins.hparams import api as hparams_api

# Config values that make sense as HParams columns (numbers, booleans, short strings).
_HPARAM_TYPES = (bool, int, float, str)


def write_config_text(log_dir, config_dict, extra):
    """The resolved config as a Markdown table, under the Text tab."""
    rows = ["| key | value |", "|---|---|"] + [
        f"| {key} | `{value}` |" for key, value in sorted({**config_dict, **extra}.items())]
    with tf.summary.create_file_writer(log_dir).as_default():
        tf.summary.text("config", "\n".join(rows), step=0)


def write_hparams_start(log_dir, config_dict, run_name, metric_names):
    """Declare the experiment and this run's hyperparameters for the HParams tab."""
    values = {key: value for key, value in config_dict.items()
              if isinstance(value, _HPARAM_TYPES) and len(str(value)) <= 100}
    with tf.summary.create_file_writer(log_dir).as_default():
        hparams_api.hparams_config(
            hparams=[hparams_api.HParam(key) for key in sorted(values)],
            metrics=[hparams_api.Metric(f"final/{name}", display_name=name)
                     for name in metric_names])
        hparams_api.hparams(values, trial_id=run_name)


def write_final_metrics(log_dir, metrics, step):
    """Final metrics as scalars ``final/<name>``, the HParams tab's metric columns."""
    with tf.summary.create_file_writer(log_dir).as_default():
        for name, value in metrics.items():
            tf.summary.scalar(f"final/{name}", value, step=step)


def _to_images(features):
    """A batch of model inputs as [N, H, W, C] images in [0, 1], or None if not images."""
    if isinstance(features, dict):
        return None
    features = tf.convert_to_tensor(features)
    if features.shape.rank != 4 or not features.dtype.is_floating:
        return None
    if features.shape[1] > features.shape[2]:  # spectrogram: frames x bands -> bands x frames
        features = tf.reverse(tf.transpose(features, [0, 2, 1, 3]), axis=[1])
    low = tf.reduce_min(features, axis=[1, 2, 3], keepdims=True)
    high = tf.reduce_max(features, axis=[1, 2, 3], keepdims=True)
    return tf.cast((features - low) / tf.maximum(high - low, 1e-6), tf.float32)


def write_input_examples(log_dir, dataset, count=6):
    """A few model inputs (images; spectrograms for speech) under the Images tab.

    Pass the validation set, never the training set: iterating a shuffled training
    dataset advances its reshuffling seeds, so the training run would then see other
    batches than a resumed run and exact resume would be lost.
    """
    features, labels = next(iter(dataset.take(1)))
    images = _to_images(features)
    if images is None:
        return False
    with tf.summary.create_file_writer(log_dir).as_default():
        tf.summary.image("inputs/validation_examples", images[:count], step=0,
                         max_outputs=count)
    return True


def confusion_matrix_image(matrix, class_names):
    """A PNG of the confusion matrix (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    size = max(4.0, 0.5 * len(class_names) + 2)
    figure, axes = pyplot.subplots(figsize=(size, size), dpi=80)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=class_names, rotation=90)
    axes.set_yticks(ticks, labels=class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for row in range(len(class_names)):
        for column in range(len(class_names)):
            axes.text(column, row, int(matrix[row, column]), ha="center", va="center",
                      fontsize=7, color="white" if normalised[row, column] > 0.5 else "black")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    return buffer.getvalue()


class ConfusionMatrix(keras.callbacks.Callback):
    """Chief only, no collectives: after each epoch, the confusion matrix of the chief's
    validation shard (at most ``max_batches`` batches) as an image."""

    def __init__(self, log_dir, validation, class_names, max_batches=16):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)
        self.validation = validation.take(max_batches)
        self.class_names = list(class_names)

    def on_epoch_end(self, epoch, logs=None):
        count = len(self.class_names)
        matrix = np.zeros((count, count), np.int64)
        for features, labels in self.validation:
            predicted = np.argmax(self.model(features, training=False), axis=-1)
            np.add.at(matrix, (np.asarray(labels).reshape(-1), predicted.reshape(-1)), 1)
        png = confusion_matrix_image(matrix, self.class_names)
        with self.writer.as_default():
            tf.summary.image("validation/confusion_matrix", tf.image.decode_png(png)[None],
                             step=epoch + 1)
        self.writer.flush()


class AllreduceShare(keras.callbacks.Callback):
    """Every rank (a collective): at each epoch end, time an allreduce as large as all the
    model's gradients, and report it as a share of the measured step time
    (``allreduce_share``). A cheap estimate that ignores overlap with computation; the
    Horovod timeline (``--timeline=true``) shows the real picture."""

    def __init__(self, throughput, time_allreduce):
        super().__init__()
        self.throughput = throughput
        self.time_allreduce = time_allreduce

    def on_epoch_end(self, epoch, logs=None):
        elements = int(sum(np.prod(v.shape) for v in self.model.trainable_variables))
        seconds = self.time_allreduce(elements)
        if logs is not None and self.throughput.step_times:
            logs["allreduce_ms"] = 1000.0 * seconds
            logs["allreduce_share"] = seconds / float(np.mean(self.throughput.step_times))


def time_it(function, repeats=3):
    """Median wall time of ``function()`` over ``repeats`` calls, after one warm-up."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))
