"""Train a registered recipe on every worker of a Horovod run.

This module is what each worker runs. You normally start it through make, which sets up
the environment on first use, validates the config before anything is launched and
starts ``horovodrun`` for you::

    make train RECIPE=image                              # localhost; NP = GPUs, or 2 on CPU
    make train RECIPE=image NP=4 ARGS="--epochs=2 --batch_size_per_worker=128"
    make train RECIPE=image RUN_DIR=runs/image/mine      # rerun the same line to resume
    make train RECIPE=bert HOSTFILE=hostfiles/cluster NP=16

The launch make performs, spelled out (``python -m toolkit.launch --dry_run`` prints it)::

    horovodrun -np 2 -H localhost:2 --gloo \\
        .venv/bin/python -m toolkit.train recipe=image run_dir=runs/image/x epochs=1

A tiny CPU run in one process, without horovodrun (Horovod then runs with one worker)::

    .venv/bin/python -m toolkit.train --recipe=image --run_dir=/tmp/tiny \\
        --epochs=1 --max_steps_per_epoch=5 --max_validation_examples=256

Arguments: ``--recipe=NAME --run_dir=DIR`` and any ``--key=value`` config override, or the
same without the dashes (``recipe=NAME``), the form the launcher uses because horovodrun
would read a dashed worker argument that abbreviates one of its options (``--timeline``,
``--autotune``) as its own; ``--help`` with a recipe lists its keys.
"""

import dataclasses
import hashlib
import json
import os
import socket
import sys
import time

import toolkit  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep C++ info lines out of the logs

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from toolkit import callbacks as callbacks_lib  # noqa: E402
from toolkit import checkpoints  # noqa: E402
from toolkit import config as config_lib  # noqa: E402
from toolkit import distributed  # noqa: E402
from toolkit import observe  # noqa: E402
from toolkit import recipe as recipe_lib  # noqa: E402
from toolkit import run_folder  # noqa: E402
from toolkit import safety  # noqa: E402
from toolkit import schedules  # noqa: E402
from toolkit import versions as versions_lib  # noqa: E402


class TrainingError(RuntimeError):
    """A run cannot continue; the message says why and what to do."""


def parse_arguments(argv):
    """Split argv into (recipe name, run dir, config overrides, wants help).

    Arguments are ``--key=value``, or ``key=value`` as the launcher writes them: horovodrun
    would take a worker argument such as ``--autotune=true`` for one of its own options.
    """
    recipe_name, run_dir, rest = None, None, []
    wants_help = False
    for argument in argv:
        if "=" in argument and not argument.startswith("-"):
            argument = "--" + argument
        if argument.startswith("--recipe="):
            recipe_name = argument.split("=", 1)[1]
        elif argument.startswith("--run_dir="):
            run_dir = argument.split("=", 1)[1]
        elif argument in ("-h", "--help"):
            wants_help = True
        else:
            rest.append(argument)
    return recipe_name, run_dir, config_lib.split_overrides(rest), wants_help


def configure_horovod(config, paths):
    """Horovod reads these from the environment at init, on every worker."""
    if config.fusion_threshold_mb:
        os.environ["HOROVOD_FUSION_THRESHOLD"] = str(int(config.fusion_threshold_mb * 2 ** 20))
    if config.cycle_time_ms:
        os.environ["HOROVOD_CYCLE_TIME"] = str(config.cycle_time_ms)
    if config.autotune:
        os.environ["HOROVOD_AUTOTUNE"] = "1"
        os.environ["HOROVOD_AUTOTUNE_LOG"] = paths["autotune"]
    if config.timeline:
        # Rank 0 writes it; chrome://tracing or https://ui.perfetto.dev opens it.
        os.environ["HOROVOD_TIMELINE"] = paths["timeline"]
    # Horovod's stall check: warn when a rank is late to a collective, and (unlike
    # Horovod's default, which warns forever) stop the job when it stays stuck.
    os.environ["HOROVOD_STALL_CHECK_TIME_SECONDS"] = str(config.stall_check_seconds)
    os.environ["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] = str(config.stall_shutdown_seconds)


def pin_to_cores(index, count):
    """Restrict this process to the ``index``-th block of ``count`` usable cores."""
    available = sorted(os.sched_getaffinity(0))
    block = available[index * count:(index + 1) * count]
    os.sched_setaffinity(0, block or available)


def configure_runtime(config, world):
    """Thread pools, device, precision and seeds; must run before TensorFlow does any work."""
    # On CPU, workers on one host share its cores: each gets cores / workers intra-op
    # threads, so that two workers do not each start a pool the size of the machine.
    cores = len(os.sched_getaffinity(0))
    intra_op = config.intra_op_threads or max(1, cores // world.local_size)
    if config.pin_cpus and not tf.config.list_physical_devices("GPU"):
        # Each worker on this host gets its own block of intra_op cores, and all its
        # threads (Python, tf.data, Horovod's) stay there: exactly that many cores each.
        pin_to_cores(world.local_rank, intra_op)
    tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    tf.config.threading.set_inter_op_parallelism_threads(
        config.inter_op_threads or (1 if intra_op == 1 else 2))
    gpu = distributed.pin_to_local_gpu(world)
    if config.mixed_precision:
        # float16 with loss scaling on GPUs; bfloat16 (no scaling needed) on CPUs.
        keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
    # Same seed everywhere: identical initial weights and reproducible runs.
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        # Deterministic kernels, and dropout randomness held in variables (so it is saved
        # in checkpoints and a resumed run draws the same masks).
        tf.config.experimental.enable_op_determinism()
        keras.backend.experimental.enable_tf_random_generator()
    return {"intra_op_threads": intra_op, "device": gpu or "CPU",
            "deterministic": config.deterministic}


def agree(world, check):
    """Run ``check()`` on the chief; if it raises, raise the same message on every rank.

    Used for checks only the chief can make (its run folder), so that the other ranks stop
    with the chief instead of waiting for it in a collective.
    """
    message = None
    if world.is_chief:
        try:
            check()
        except (OSError, ValueError, RuntimeError) as error:
            message = str(error)
    message = distributed.broadcast_object(message)
    if message:
        raise TrainingError(message)


def worker_identity(world):
    """Where this rank ran: host name, local rank and its network addresses."""
    import psutil

    addresses = sorted(address.address for interface, entries in psutil.net_if_addrs().items()
                       for address in entries
                       if address.family == socket.AF_INET and interface != "lo")
    return {"rank": world.rank, "hostname": world.hostname, "local_rank": world.local_rank,
            "addresses": addresses, "pid": os.getpid()}


def weights_sha256(model):
    """SHA-256 of all model weights, in order, as raw bytes."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def for_world(config, world):
    """The config as this world runs it: with ``global_batch_size`` set, each worker takes
    an equal part of that fixed global batch (elastic runs keep it as workers change)."""
    if not config.global_batch_size:
        return config
    if config.global_batch_size % world.size:
        raise TrainingError(f"global_batch_size={config.global_batch_size} cannot be split "
                            f"evenly over {world.size} workers; choose a multiple of every "
                            "world size the run may have")
    return dataclasses.replace(config,
                               batch_size_per_worker=config.global_batch_size // world.size)


def prepare_data(recipe, config, world, agree_on_steps=True):
    """This worker's data and the number of steps per epoch, equal on every worker."""
    data = recipe.build_data(config, world.shard())
    steps_per_epoch = data.train_examples // config.batch_size_per_worker
    if steps_per_epoch == 0:
        raise TrainingError(
            f"each worker's training shard has {data.train_examples} examples, fewer than "
            f"batch_size_per_worker={config.batch_size_per_worker}; lower the batch size or NP")
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if data.validation_examples == 0:
        raise TrainingError("each worker's validation shard is empty; give more validation "
                            "data or fewer workers")
    # Unequal step counts would leave a worker waiting in an allreduce forever. (Elastic
    # runs take rank 0's number from the elastic state instead.)
    if agree_on_steps:
        all_steps = distributed.allgather_object(steps_per_epoch)
        if len(set(all_steps)) != 1:
            raise TrainingError(f"workers disagree on steps per epoch: {all_steps}")
    return data, steps_per_epoch


def _loss_with_fault(loss, config, world, optimizer):
    """The recipe's loss, made NaN on one rank at one step when a test asks for it."""
    if not config.debug_nan_at_step or world.rank != config.debug_nan_rank:
        return loss

    def poisoned(y_true, y_pred):
        value = loss(y_true, y_pred)
        at_fault = tf.equal(optimizer.iterations + 1, config.debug_nan_at_step)
        # A multiplication, so that the gradients turn NaN too, as in a real divergence.
        return value * tf.where(at_fault, tf.constant(float("nan"), value.dtype),
                                tf.constant(1.0, value.dtype))

    return poisoned


def build_training(recipe, config, world, data, steps_per_epoch):
    """The compiled model, its Horovod-wrapped optimizer and the non-finite guard."""
    model = recipe.build_model(config, data)
    learning_rate = schedules.build(config, world.size, steps_per_epoch)
    optimizer = distributed.wrap_optimizer(schedules.build_optimizer(config, learning_rate),
                                           config)
    guard = safety.NonFiniteGuard(optimizer)
    if config.jit_compile:
        # XLA compiles the model's forward and backward pass only. Compiling the whole train
        # step (compile(jit_compile=True)) fails: XLA cannot compile Horovod's allreduce,
        # which must stay outside, in the optimizer.
        model.call = tf.function(model.call, jit_compile=True, reduce_retracing=True)
    model.compile(optimizer=optimizer,
                  loss=_loss_with_fault(recipe.build_loss(config), config, world, optimizer),
                  metrics=recipe.build_metrics(config))
    # Create the optimizer's slots now so that a restore fills them and the broadcast
    # below covers them; otherwise they would appear only in the first step.
    optimizer.build(model.trainable_variables)
    return model, optimizer, guard


def fit_segments(position, epochs, steps_per_epoch):
    """The ``model.fit`` calls that finish the plan from ``position``: first the rest of a
    half-done epoch, then whole epochs. Each is (first epoch, last epoch + 1, steps)."""
    segments = []
    epoch = position.epochs_done
    if position.steps_into_epoch and epoch < epochs:
        segments.append((epoch, epoch + 1, steps_per_epoch - position.steps_into_epoch))
        epoch += 1
    if epoch < epochs:
        segments.append((epoch, epochs, steps_per_epoch))
    return segments


def run_fit(model, data, rebuild_train, position, config, steps_per_epoch, callbacks,
            progress):
    """Train from ``position`` to the end of the plan; return the merged History dict.

    The training dataset is a seeded sequence of batches; a resumed run skips the batches
    already trained on (the global step), replaying the input pipeline without the model,
    so that it sees exactly the batches the uninterrupted run would have. A second fit
    call (after finishing a half-done epoch) needs a freshly built dataset: a dataset
    object's reshuffling seeds advance with every pass, even across iterators, so reusing
    it would not replay the same order.
    """
    logs = {}
    step = position.global_step
    for index, (first_epoch, end_epoch, steps) in enumerate(
            fit_segments(position, config.epochs, steps_per_epoch)):
        if progress is not None:
            progress.step_offset = steps_per_epoch - steps
        train = data.train if index == 0 else rebuild_train()
        history = model.fit(train.repeat().skip(step), initial_epoch=first_epoch,
                            epochs=end_epoch, steps_per_epoch=steps,
                            validation_data=data.validation, callbacks=callbacks, verbose=0)
        for key, values in history.history.items():
            logs.setdefault(key, []).extend(values)
        step += (end_epoch - first_epoch) * steps
        if model.stop_training:
            break
    return logs


def _final_metrics(model, logs, validation, trained):
    """Validation metrics of the final weights, averaged over workers."""
    if trained and any(key.startswith("val_") for key in logs):
        return {key[len("val_"):]: float(values[-1]) for key, values in logs.items()
                if key.startswith("val_")}
    results = model.evaluate(validation, verbose=0, return_dict=True)
    return {key: distributed.allreduce_mean(float(value), name=f"final_{key}")
            for key, value in sorted(results.items())}


@dataclasses.dataclass
class Session:
    """What the training loop needs, built once per process."""

    recipe: object
    config: config_lib.TrainConfig
    config_dict: dict
    paths: dict
    model: object
    optimizer: object
    guard: object
    checkpointer: object
    steps_per_epoch: int
    resets: list = dataclasses.field(default_factory=list)


def make_callbacks(session, world, position, data, extra_collectives=()):
    """The callbacks of one fit, in order. Horovod's broadcast and metric averaging come
    first, so that everything after them sees averaged metrics; then the other callbacks
    every rank must run (some perform collectives); then rank-0-only writers."""
    config, paths = session.config, session.paths
    validation, class_names = data.validation, data.class_names
    throughput = callbacks_lib.Throughput(config.batch_size_per_worker * world.size, world.size)
    nonfinite = safety.NonFiniteCallback(session.guard, config.on_nonfinite)
    fresh_start = position.global_step == 0 and not distributed.elastic_enabled()
    callbacks = distributed.first_callbacks(fresh_start=fresh_start) + list(extra_collectives) + [
        nonfinite, throughput,
        callbacks_lib.Checkpointing(session.checkpointer if world.is_chief else None,
                                    config.checkpoint_every_steps, session.steps_per_epoch,
                                    distributed.average_non_trainable)]
    if world.size > 1:
        callbacks.append(observe.AllreduceShare(throughput, distributed.time_allreduce))
    progress = None
    if world.is_chief:
        progress = callbacks_lib.Progress(config.epochs, session.steps_per_epoch,
                                          config.log_every_steps, throughput)
        callbacks += [
            progress,
            callbacks_lib.StepScalars(os.path.join(paths["tensorboard"], "train"),
                                      config.log_every_steps, throughput),
            keras.callbacks.TensorBoard(
                paths["tensorboard"], update_freq="epoch", write_graph=False,
                profile_batch=tuple(int(step) for step in config.profile_steps.split(","))
                if config.profile_steps else 0),
        ]
        if config.confusion_matrix and validation is not None:
            callbacks.append(observe.ConfusionMatrix(
                os.path.join(paths["tensorboard"], "validation"), validation, class_names))
    return callbacks, nonfinite, progress


def run_elastic(session, data, runtime, position, run_dir):
    """Elastic training: workers may leave (fail) or join while the run goes on.

    The global batch stays fixed (``global_batch_size``; each worker takes its share), so
    the plan in steps, and the learning-rate schedule, do not depend on how many workers
    there are. Horovod keeps the model and optimizer (with the step counter) committed in
    memory every ``elastic_commit_steps`` steps; after a reset every worker restores the
    last commit, rank 0's copy is broadcast, the data is sharded for the new world and
    training goes on from the committed step. Each (re)start checks that all workers hold
    identical weights and records it in ``summary.json`` (``elastic_resets``).
    """
    state = distributed.elastic_state(session.model, session.optimizer,
                                      steps_per_epoch=session.steps_per_epoch)
    outcome = {}

    @distributed.elastic_run
    def train_on_current_world(state):
        world = distributed.current_world()
        config = for_world(session.config, world)
        session.steps_per_epoch = state.steps_per_epoch  # rank 0's, for workers that joined
        hashes = distributed.allgather_object(weights_sha256(session.model))
        workers = distributed.allgather_object(worker_identity(world))
        step = int(session.optimizer.iterations.numpy())
        session.resets.append({"world_size": world.size, "global_step": step,
                               "weights_identical_on_all_ranks": len(set(hashes)) == 1})
        if world.is_chief:
            print(f"[toolkit] elastic: {world.size} workers from global step {step}, "
                  f"{config.batch_size_per_worker} examples each per step", flush=True)
        current = data if len(session.resets) == 1 else session.recipe.build_data(
            config, world.shard())
        if world.is_chief:
            write_run_config(session, world, workers, current, runtime,
                             restored if len(session.resets) == 1 else current_position(),
                             run_dir)
        position = checkpoints.Position(step // session.steps_per_epoch,
                                        step % session.steps_per_epoch, step)
        commit = distributed.commit_callback(state, config.elastic_commit_steps)
        callbacks, nonfinite, progress = make_callbacks(session, world, position, current,
                                                        [commit])
        logs = run_fit(session.model, current,
                       lambda: session.recipe.build_data(config, world.shard()).train,
                       position, config, session.steps_per_epoch, callbacks, progress)
        outcome.update(logs=logs, nonfinite=nonfinite, world=world, data=current)
        return logs

    restored = position

    def current_position():
        step = int(session.optimizer.iterations.numpy())
        return checkpoints.Position(step // session.steps_per_epoch,
                                    step % session.steps_per_epoch, step)

    train_on_current_world(state)
    if "logs" not in outcome:
        raise RuntimeError("elastic training returned before the end of its plan")
    return outcome["logs"], outcome["nonfinite"], outcome["world"], outcome["data"]


def write_run_config(session, world, workers, data, runtime, position, run_dir):
    """The chief writes config.json and prints the run's one-line description."""
    config, paths = session.config, session.paths
    os.makedirs(paths["tensorboard"], exist_ok=True)
    run_folder.write_json(paths["config"], {
        "recipe": session.recipe.name, "config": session.config_dict,
        "world_size": world.size, "workers": workers, "data": data.description,
        "class_names": list(data.class_names),
        "train_examples_per_worker": data.train_examples,
        "validation_examples_per_worker": data.validation_examples,
        "steps_per_epoch": session.steps_per_epoch,
        "global_batch_size": config.batch_size_per_worker * world.size,
        "runtime": runtime, "versions": versions_lib.collect(), "command": sys.argv,
        "resumed_from": dataclasses.asdict(position),
    })
    log_dir = paths["tensorboard"]
    observe.write_config_text(log_dir, session.config_dict, {"world_size": world.size})
    observe.write_hparams_start(log_dir, dict(session.config_dict, world_size=world.size),
                                run_name=os.path.basename(os.path.normpath(run_dir)),
                                metric_names=["validation_loss", "validation_accuracy",
                                              "samples_per_second"])
    if data.validation is not None:
        observe.write_input_examples(os.path.join(log_dir, "validation"), data.validation)
    resume_note = (f"; resuming at epoch {position.epochs_done + 1}, step "
                   f"{position.steps_into_epoch} (global step {position.global_step}, "
                   f"{os.path.basename(position.checkpoint)})" if position.global_step
                   else "")
    print(f"[toolkit] {session.recipe.name}: {data.description}; {world.size} workers x "
          f"{config.batch_size_per_worker} = global batch "
          f"{config.batch_size_per_worker * world.size}; {session.steps_per_epoch} "
          f"steps/epoch; run folder {run_dir}{resume_note}", flush=True)


def train(recipe, config, run_dir):
    """Run ``recipe`` with ``config`` on this worker; return the summary dict.

    In elastic mode a worker may join a run that is already going, so nothing before
    the elastic loop may be a collective (the running workers would not join it): the
    run-folder checks (already made by the launcher) and the restore are local, and
    Horovod's elastic state brings a newcomer the model, optimizer and plan of rank 0.
    """
    started = time.time()
    elastic = distributed.elastic_enabled()
    paths = run_folder.paths(run_dir)
    configure_horovod(config, paths)
    world = distributed.init()
    safety.start_lifeline()
    runtime = configure_runtime(config, world)
    config_dict = config_lib.to_dict(config)

    def check(function):
        if not elastic:
            agree(world, function)  # the chief checks; everyone stops together
        elif world.is_chief:
            function()

    check(lambda: run_folder.check_writable(run_dir))
    check(lambda: run_folder.check_resumable(run_dir, recipe.name, config_dict))
    config = for_world(config, world)
    data, steps_per_epoch = prepare_data(recipe, config, world, agree_on_steps=not elastic)
    check(lambda: run_folder.check_same_classes(run_dir, data.class_names))
    model, optimizer, guard = build_training(recipe, config, world, data, steps_per_epoch)

    checkpointer = checkpoints.Checkpointer(paths["checkpoints"], model, optimizer,
                                            keep=config.checkpoints_to_keep)
    session = Session(recipe=recipe, config=config, config_dict=config_dict, paths=paths,
                      model=model, optimizer=optimizer, guard=guard,
                      checkpointer=checkpointer, steps_per_epoch=steps_per_epoch)
    if elastic:
        position = checkpointer.restore(steps_per_epoch) if world.is_chief else (
            checkpoints.Position())
        logs, nonfinite, world, data = run_elastic(session, data, runtime, position, run_dir)
    else:
        # The chief restores (its run folder may be the only copy); everyone learns where
        # the run stands, or why it cannot continue, from one broadcast.
        position, message = checkpoints.Position(), None
        if world.is_chief:
            try:
                position = checkpointer.restore(steps_per_epoch)
            except checkpoints.CheckpointError as error:
                message = str(error)
        position, message = distributed.broadcast_object((position, message))
        if message:
            raise TrainingError(message)
        distributed.broadcast_variables(model.variables + list(optimizer.variables))
        workers = distributed.allgather_object(worker_identity(world))
        if world.is_chief:
            write_run_config(session, world, workers, data, runtime, position, run_dir)
        callbacks, nonfinite, progress = make_callbacks(session, world, position, data)
        logs = run_fit(model, data, lambda: recipe.build_data(config, world.shard()).train,
                       position, config, steps_per_epoch, callbacks, progress)
    if nonfinite.stopped_at is not None:
        # Every rank learns the chief's answer: whichever rank exits first is the one whose
        # message reaches the user (horovodrun then stops the others).
        latest = distributed.broadcast_object(checkpointer.latest if world.is_chief else None)
        raise safety.NonFiniteError(
            f"the loss or gradients became NaN/Inf at global step {nonfinite.stopped_at}; all "
            "workers stopped before applying that update. The last good checkpoint is "
            f"{latest or 'none (none was written yet)'}. Lower the learning rate or use "
            "--on_nonfinite=skip")
    trained = bool(fit_segments(position, config.epochs, steps_per_epoch))
    metrics = _final_metrics(model, logs, data.validation, trained)

    hashes = distributed.allgather_object(weights_sha256(model))
    summary = {
        "recipe": recipe.name,
        "validation": metrics,
        "epochs": config.epochs,
        "resumed_from_step": position.global_step,
        "resumed_from_epoch": position.epochs_done,
        "global_steps": int(optimizer.iterations.numpy()),
        "planned_global_steps": config.epochs * steps_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "nonfinite_steps_skipped": int(guard.skipped_steps.numpy()),
        "world_size": world.size,
        "global_batch_size": config.batch_size_per_worker * world.size,
        "elastic_resets": session.resets,
        "samples_per_second": float(logs.get("samples_per_second", [0.0])[-1]),
        "samples_per_second_per_worker": float(
            logs.get("samples_per_second_per_worker", [0.0])[-1]),
        "weights_sha256": hashes[0],
        "weights_sha256_per_rank": hashes,
        "weights_identical_on_all_ranks": len(set(hashes)) == 1,
        "wall_seconds": round(time.time() - started, 1),
    }
    if world.is_chief:
        if recipe.build_reports is not None:
            summary["reports"] = recipe.build_reports(config, model, data)
        if config.export:
            from toolkit import export

            export.save(recipe, config, model, data, paths["export"])
            summary["export"] = paths["export"]
        run_folder.write_json(paths["summary"], summary)
        observe.write_final_metrics(
            paths["tensorboard"],
            dict({f"validation_{key}": value for key, value in metrics.items()},
                 samples_per_second=summary["samples_per_second"]),
            step=summary["global_steps"])
        print(f"[toolkit] done: validation {json.dumps(metrics)}; "
              f"{summary['samples_per_second']:.0f} samples/s; results in {run_dir} "
              f"(summary.json, tensorboard/, checkpoints/, export/)", flush=True)
    # Nobody exits before the chief has written everything: horovodrun stops all workers
    # as soon as one exits non-zero, which would cut the chief's export short.
    distributed.barrier()
    return summary


def main(argv=None):
    recipe_name, run_dir, overrides, wants_help = parse_arguments(
        sys.argv[1:] if argv is None else argv)
    if recipe_name is None:
        raise SystemExit("--recipe=NAME is required; known recipes: "
                         + ", ".join(recipe_lib.names()))
    recipe = recipe_lib.get(recipe_name)
    if wants_help:
        print(f"{recipe.name}: {recipe.description}\nconfig keys:")
        print("\n".join(config_lib.describe(recipe.config_class)))
        return 0
    if run_dir is None:
        raise SystemExit("--run_dir=DIR is required")
    config = config_lib.build(recipe.config_class, overrides)
    try:
        summary = train(recipe, config, run_dir)
    except (TrainingError, ValueError, safety.NonFiniteError,
            checkpoints.CheckpointError) as error:
        print(f"[toolkit] error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0 if summary["weights_identical_on_all_ranks"] else 3


if __name__ == "__main__":
    sys.exit(main())
