"""One measurement of ``make bench`` (see toolkit/launcher/bench.py), run in its own process(es).

    --mode=ours      the toolkit's training path, under horovodrun (any NP)
    --mode=plain     the same model, data and optimizer in plain single-process Keras
    --mode=mwms      tf.distribute.MultiWorkerMirroredStrategy, one process per worker,
                     started with TF_CONFIG set by the orchestrator
    --mode=pipeline  the input pipeline alone, no model

``--data=synthetic`` repeats one real batch (no input cost); ``--data=real`` uses the
recipe's pipeline. Every mode runs ``warmup`` steps, then times ``steps`` steps one by one,
and the chief prints one ``RESULT {json}`` line with the step times in seconds.
"""

import argparse
import dataclasses
import json
import os
import time

import toolkit  # noqa: F401
from toolkit import log_noise

log_noise.set_level(verbose=False)
with log_noise.hidden(verbose=False):
    import tensorflow as tf
import tf_keras as keras  # noqa: E402

from toolkit import config as config_lib  # noqa: E402
from toolkit import data as data_lib  # noqa: E402
from toolkit import recipe as recipe_lib  # noqa: E402
from toolkit.worker import lr_schedules  # noqa: E402
from toolkit.worker import runtime  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    def __init__(self, warmup):
        super().__init__()
        self.warmup = warmup
        self.times = []
        self._started = None

    def on_train_batch_begin(self, batch, logs=None):
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if batch >= self.warmup:
            self.times.append(time.perf_counter() - self._started)


def set_threads(threads, pin_index=None):
    if pin_index is not None:
        runtime.pin_to_cores(pin_index, threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1 if threads == 1 else 2)


def set_precision(config):
    """The precision a toolkit run would choose (``mixed_precision``), so that the peers
    compute in the same precision as ours (bfloat16 where the hardware has it, by
    default); without it they ran float32 against our bfloat16."""
    gpus = tf.config.list_physical_devices("GPU")
    policy = runtime.precision_policy(config, gpus[0].name if gpus else None)
    if policy != "float32":
        keras.mixed_precision.set_global_policy(policy)


def endless_batches(data):
    """This worker's training batches, epoch after epoch, for as long as asked."""
    return data.train.batches(0, 0, 1 << 30)


def training_data(data, kind):
    if kind == "synthetic":
        batch = next(iter(endless_batches(data)))
        return tf.data.Dataset.from_tensors(batch).repeat()
    return endless_batches(data)


def report(mode, options, times, world_size, batch_size_per_worker, model=None):
    sizes = {}
    if model is not None:  # what an all-reduce moves: make bench's scaling projection
        sizes = {"gradient_bytes": _bytes(model.trainable_variables),
                 "weight_bytes": _bytes(model.variables)}
    print("RESULT " + json.dumps({
        "mode": mode, "data": options.data, "workers": world_size, "threads": options.threads,
        "pinned": bool(options.pin), "batch_size_per_worker": batch_size_per_worker,
        "precision": keras.mixed_precision.global_policy().name,
        "step_seconds": times, **sizes}), flush=True)


def _bytes(variables):
    return int(sum(variable.shape.num_elements() * variable.dtype.size for variable in variables))


def run_ours(options, recipe, config):
    from toolkit.worker import distributed
    from toolkit.worker import guards
    from toolkit.worker import local_sgd
    from toolkit.worker import train

    config = config_lib.build(recipe.config_class, dict(
        options.overrides, intra_op_threads=str(options.threads), export="false",
        pin_cpus=str(options.pin).lower()))
    runtime.configure_horovod(config, paths=None)  # as a run would: the same cycle time
    world = distributed.init()
    with log_noise.hidden(verbose=False):
        runtime.configure(config, world)
    scale = lr_schedules.batch_scale(config, world.size)
    config = train.for_world(config, world)
    data = recipe.build_data(config, world.shard())
    steps_per_epoch = max(1, data.train.steps_per_epoch)
    config = dataclasses.replace(
        config, epochs=train.choose_epochs(recipe, config, data, steps_per_epoch)[0])
    # --sync=local_sgd measures local SGD: the trainer's synchronisation, as in a run.
    sync = local_sgd.Synchronisation(config, steps_per_epoch)
    model, optimizer, guard = train.build_training(
        recipe, config, data, lr_schedules.build(config, scale, steps_per_epoch),
        sync.gradients if sync.local else None)
    distributed.broadcast_variables(model.variables + list(optimizer.variables))
    timer = StepTimer(options.warmup)
    nonfinite = guards.NonFiniteCallback(guard, "skip", agreed=sync.local)
    callbacks = distributed.first_callbacks(fresh_start=not sync.local,
                                            synchronise=sync.synchronise)
    model.fit(training_data(data, options.data), steps_per_epoch=options.warmup + options.steps,
              epochs=1, verbose=0, callbacks=callbacks + [sync.callback(nonfinite), timer])
    if world.is_chief:
        report("ours", options, timer.times, world.size, config.batch_size_per_worker, model)


def build_plain(recipe, config, data):
    model = recipe.build_model(config, data)
    learning_rate = lr_schedules.build(config, scale=1.0, steps_per_epoch=1000)
    model.compile(optimizer=lr_schedules.build_optimizer(config, learning_rate),
                  loss=recipe.build_loss(config), metrics=recipe.build_metrics(config))
    return model


def run_plain(options, recipe, config):
    set_threads(options.threads, 0 if options.pin else None)
    set_precision(config)
    keras.utils.set_random_seed(config.seed)
    data = recipe.build_data(config, data_lib.Shard())
    model = build_plain(recipe, config, data)
    timer = StepTimer(options.warmup)
    model.fit(training_data(data, options.data), steps_per_epoch=options.warmup + options.steps,
              epochs=1, verbose=0, callbacks=[timer])
    report("plain", options, timer.times, 1, config.batch_size_per_worker)


def run_mwms(options, recipe, config):
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    set_threads(options.threads, task["index"] if options.pin else None)
    set_precision(config)
    keras.utils.set_random_seed(config.seed)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    workers = strategy.num_replicas_in_sync
    data = recipe.build_data(config, data_lib.Shard(task["index"], workers))
    per_worker = training_data(data, options.data)
    distributed_data = strategy.distribute_datasets_from_function(lambda context: per_worker)
    with strategy.scope():
        model = build_plain(recipe, config, data)
    timer = StepTimer(options.warmup)
    model.fit(distributed_data, steps_per_epoch=options.warmup + options.steps, epochs=1,
              verbose=0, callbacks=[timer])
    if task["index"] == 0:
        report("mwms", options, timer.times, workers, config.batch_size_per_worker)


def run_pipeline(options, recipe, config):
    set_threads(options.threads, 0 if options.pin else None)
    data = recipe.build_data(config, data_lib.Shard(0, options.workers))
    iterator = iter(endless_batches(data))
    for _ in range(options.warmup):
        next(iterator)
    times = []
    for _ in range(options.steps):
        started = time.perf_counter()
        next(iterator)
        times.append(time.perf_counter() - started)
    report("pipeline", options, times, options.workers, config.batch_size_per_worker)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["ours", "plain", "mwms", "pipeline"], required=True)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--data", choices=["synthetic", "real"], default="synthetic")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="pipeline: shard count")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--pin", type=int, default=0, help="1: pin to `threads` cores each")
    options, rest = parser.parse_known_args()
    options.overrides = config_lib.split_overrides(
        ["--" + item if not item.startswith("-") else item for item in rest])
    recipe = recipe_lib.get(options.recipe)
    config = config_lib.build(recipe.config_class, options.overrides)
    {"ours": run_ours, "plain": run_plain, "mwms": run_mwms,
     "pipeline": run_pipeline}[options.mode](options, recipe, config)


if __name__ == "__main__":
    main()
