"""Train a registered recipe on every worker of a Horovod run.

This module is what each worker runs. You normally start it through make, which sets up
the environment on first use, validates the config before anything is launched and
starts ``horovodrun`` for you::

    make train RECIPE=image                              # localhost; NP = GPUs, or 2 on CPU
    make train RECIPE=image NP=4 ARGS="--epochs=2 --batch_size_per_worker=128"
    make train RECIPE=image RUN_DIR=runs/image/mine      # rerun the same line to resume
    make train RECIPE=bert HOSTFILE=hostfiles/cluster NP=16

The launch make performs, spelled out (``python -m toolkit.launcher.launch --dry_run``
prints it)::

    horovodrun -np 2 -H localhost:2 --gloo \\
        .venv/bin/python -m toolkit.worker.train recipe=image run_dir=runs/image/x epochs=1

A tiny CPU run in one process, without horovodrun (Horovod then runs with one worker)::

    .venv/bin/python -m toolkit.worker.train --recipe=image --run_dir=/tmp/tiny \\
        --epochs=1 --max_steps_per_epoch=5 --max_validation_examples=256

Arguments: ``--recipe=NAME --run_dir=DIR`` and any ``--key=value`` config override, or the
same without the dashes (``recipe=NAME``), the form the launcher uses because horovodrun
would read a dashed worker argument that abbreviates one of its options (``--timeline``,
``--autotune``) as its own; ``--help`` with a recipe lists its keys.

A run goes through five phases, each a function below: set up the world (Horovod,
threads, device, seeds), build the session (run-folder checks, data, model), restore or
start, fit (static, or elastic when horovodrun runs in elastic mode), and summarise.
"""

import dataclasses
import functools
import hashlib
import json
import os
import resource
import socket
import sys
import time
import typing

import toolkit  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from toolkit import log_noise

# The worker's entry point reads its verbosity once, here: the launcher's VERBOSE=1.
VERBOSE = os.environ.get(log_noise.VERBOSE_VARIABLE) == "1"
log_noise.set_level(VERBOSE)
with log_noise.hidden(VERBOSE):
    import tensorflow as tf

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

from toolkit import config as config_lib  # noqa: E402
from toolkit import data as data_lib  # noqa: E402
from toolkit import errors  # noqa: E402
from toolkit import recipe as recipe_lib  # noqa: E402
from toolkit import run_folder  # noqa: E402
from toolkit import versions as versions_lib  # noqa: E402
from toolkit.worker import callbacks as callbacks_lib  # noqa: E402
from toolkit.worker import checkpoints  # noqa: E402
from toolkit.worker import distributed  # noqa: E402
from toolkit.worker import export  # noqa: E402
from toolkit.worker import faults as faults_lib  # noqa: E402
from toolkit.worker import guards  # noqa: E402
from toolkit.worker import local_sgd  # noqa: E402
from toolkit.worker import lr_schedules  # noqa: E402
from toolkit.worker import resources as resources_lib  # noqa: E402
from toolkit.worker import runtime  # noqa: E402
from toolkit.worker import tensorboard_logs  # noqa: E402
from toolkit.worker import warm_start  # noqa: E402

Logs = typing.Dict[str, typing.List[float]]


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


@dataclasses.dataclass
class Session:
    """What one worker process holds for the whole run, built once."""

    recipe: recipe_lib.Recipe
    config: config_lib.TrainConfig  # as this world runs it (batch per worker resolved)
    config_dict: typing.Dict[str, typing.Any]  # as the user gave it (config.json, resume)
    paths: run_folder.RunPaths
    runtime: typing.Dict[str, typing.Any]  # threads, device: recorded in config.json
    data: data_lib.Data
    steps_per_epoch: int
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    schedule: lr_schedules.WarmupDecay  # the learning rate, a function of the step counter
    guard: guards.NonFiniteGuard
    sync: local_sgd.Synchronisation  # gradients every step, or local SGD
    checkpointer: checkpoints.Checkpointer
    watchdog: guards.StallWatchdog  # one per process: its thread outlives elastic resets
    random_generators: typing.List[tf.random.Generator]  # dropout's, when deterministic
    faults: faults_lib.Faults  # test hooks, all off in real runs
    first_step: callbacks_lib.FirstStep  # when the first training step ended
    resource_sampler: resources_lib.Sampler  # this process's CPU, memory and GPU use
    epochs_note: str  # how many epochs, and why (the run's description line)


@dataclasses.dataclass
class FitResult:
    """What a fit (static or elastic) hands to the summary."""

    logs: Logs  # History of all fit calls, merged
    nonfinite: guards.NonFiniteCallback
    world: distributed.World  # the world that finished the run
    data: data_lib.Data  # that world's data
    position: checkpoints.Position  # where this run started from (a checkpoint, or zero)
    resets: typing.List[typing.Dict[str, typing.Any]]  # elastic (re)starts, else []
    # In Keras' fit (training steps and each epoch's validation) in this run, all fit
    # calls together: the start-up, data generation, reports and export are not in it.
    training_seconds: float = 0.0


# ------------------------------------------------------------------ 1. set up the world


def set_up_world(config: config_lib.TrainConfig, paths: run_folder.RunPaths,
                 verbose: bool) -> typing.Tuple[distributed.World, typing.Dict[str, typing.Any]]:
    """Start Horovod and the lifeline; threads, device, precision and seeds."""
    cycle_time_ms = runtime.configure_horovod(config, paths)
    world = distributed.init()
    guards.start_lifeline()
    # The first device query is where TensorFlow logs cuInit failures on CPU machines.
    with log_noise.hidden(verbose):
        chosen = runtime.configure(config, world)
    return world, {**chosen, "horovod_cycle_time_ms": cycle_time_ms}


def agree(world: distributed.World, check: typing.Callable[[], typing.Any]) -> None:
    """Run ``check()`` on the chief; if it raises a UserError, raise the same message on
    every rank.

    Used for checks only the chief can make (its run folder), so that the other ranks stop
    with the chief instead of waiting for it in a collective. Any other exception is a bug:
    it propagates on the chief with its traceback, and horovodrun then stops the others.
    """
    message = None
    if world.is_chief:
        try:
            check()
        except errors.UserError as error:
            message = str(error)
    message = distributed.broadcast_object(message)
    if message:
        raise errors.TrainingError(message)


def for_world(config: config_lib.TrainConfig,
              world: distributed.World) -> config_lib.TrainConfig:
    """The config as this world runs it: with ``global_batch_size`` set, each worker takes
    an equal part of that fixed global batch (elastic runs keep it as workers change)."""
    if not config.global_batch_size:
        return config
    if config.global_batch_size % world.size:
        raise errors.TrainingError(
            f"global_batch_size={config.global_batch_size} cannot be split evenly over "
            f"{world.size} workers; choose a multiple of every world size the run may have")
    return dataclasses.replace(config,
                               batch_size_per_worker=config.global_batch_size // world.size)


# ---------------------------------------------------------------- 2. build the session


def check_run_folder(world: distributed.World, recipe: recipe_lib.Recipe,
                     paths: run_folder.RunPaths, config_dict: typing.Dict[str, typing.Any],
                     elastic: bool) -> None:
    """The chief checks that the run folder is writable and may be resumed. Static runs
    stop together if it refuses; in elastic mode no collective may run yet (a joining
    worker would not take part), so every worker checks for itself: any worker may become
    the chief after a reset, and the launcher stops the job at the first refusal."""
    for check in (lambda: run_folder.check_writable(paths.run_dir),
                  lambda: run_folder.check_resumable(paths.run_dir, recipe.name, config_dict)):
        if not elastic:
            agree(world, check)
        else:
            check()


def prepare_data(recipe: recipe_lib.Recipe, config: config_lib.TrainConfig,
                 world: distributed.World,
                 agree_on_steps: bool = True) -> typing.Tuple[data_lib.Data, int]:
    """This worker's data and the number of steps per epoch, equal on every worker."""
    data = recipe.build_data(config, world.shard())
    steps_per_epoch = data.train.steps_per_epoch
    if steps_per_epoch == 0:
        raise errors.TrainingError(
            f"the training set has {data.train.num_examples} examples, fewer than one "
            f"update's worth ({world.size} workers x {config.batch_size_per_worker} x "
            f"backward_passes_per_step={config.backward_passes_per_step}); lower the batch "
            "size, the accumulation or NP")
    if data.validation_examples == 0:
        raise errors.TrainingError("each worker's validation shard is empty; give more "
                                   "validation data or fewer workers")
    # Unequal step counts would leave a worker waiting in an allreduce forever. (Elastic
    # runs take rank 0's number from the elastic state instead.)
    if agree_on_steps:
        all_steps = distributed.allgather_object(steps_per_epoch)
        if len(set(all_steps)) != 1:
            raise errors.TrainingError(f"workers disagree on steps per epoch: {all_steps}")
    return data, steps_per_epoch


def build_training(recipe: recipe_lib.Recipe, config: config_lib.TrainConfig,
                   data: data_lib.Data, schedule: lr_schedules.WarmupDecay,
                   gradient_sync: typing.Optional[distributed.GradientSync] = None,
                   ) -> typing.Tuple[keras.Model, keras.optimizers.Optimizer,
                                     guards.NonFiniteGuard]:
    """The compiled model, its Horovod-wrapped optimizer (with the learning-rate
    ``schedule``; all-reducing gradients while ``gradient_sync`` says so) and the
    non-finite guard."""
    model = recipe.build_model(config, data)
    optimizer = distributed.wrap_optimizer(lr_schedules.build_optimizer(config, schedule),
                                           config, gradient_sync)
    guard = guards.NonFiniteGuard(optimizer)
    if config.jit_compile:
        # XLA compiles the model's forward and backward pass only. Compiling the whole train
        # step (compile(jit_compile=True)) fails: XLA cannot compile Horovod's allreduce,
        # which must stay outside, in the optimizer.
        model.call = tf.function(model.call, jit_compile=True, reduce_retracing=True)
    model.compile(optimizer=optimizer, loss=recipe.build_loss(config),
                  metrics=recipe.build_metrics(config))
    # Create the optimizer's slots now so that a restore fills them and the broadcast
    # below covers them; otherwise they would appear only in the first step.
    optimizer.build(model.trainable_variables)
    return model, optimizer, guard


def build_session(recipe: recipe_lib.Recipe, user_config: config_lib.TrainConfig,
                  world: distributed.World, paths: run_folder.RunPaths,
                  chosen_runtime: typing.Dict[str, typing.Any],
                  faults: faults_lib.Faults) -> Session:
    """Check the run folder, build this worker's data, the model and the checkpointer."""
    elastic = distributed.elastic_enabled()
    config_dict = config_lib.to_dict(user_config)
    check_run_folder(world, recipe, paths, config_dict, elastic)
    config = for_world(user_config, world)
    data, steps_per_epoch = prepare_data(recipe, config, world, agree_on_steps=not elastic)
    epochs, epochs_note = choose_epochs(recipe, config, data, steps_per_epoch)
    config = dataclasses.replace(config, epochs=epochs)
    user_config = dataclasses.replace(user_config, epochs=epochs)
    if not elastic:
        agree(world, lambda: run_folder.check_same_classes(paths.run_dir, data.class_names))
    else:
        run_folder.check_same_classes(paths.run_dir, data.class_names)
    # The user's config, not this world's: with a fixed global batch the rate is the same
    # on any number of workers, so a worker that joins a larger world uses the run's.
    schedule = lr_schedules.build(config, lr_schedules.batch_scale(user_config, world.size),
                                  steps_per_epoch)
    sync = local_sgd.Synchronisation(config, steps_per_epoch)
    model, optimizer, guard = build_training(recipe, config, data, schedule,
                                             sync.gradients if sync.local else None)
    runtime.seed_per_rank(config.seed, world.rank, model)
    faults_lib.install_in_model(model, world.rank, faults)
    plan = checkpoints.Plan(examples_per_epoch=data.train.num_examples,
                            global_batch_size=data.train.global_batch_size,
                            steps_per_epoch=steps_per_epoch,
                            stream_workers=(data.train.shard.count if data.train.depends_on_workers
                                            else 0))
    checkpointer = checkpoints.Checkpointer(
        paths.checkpoints, model, optimizer, keep=config.checkpoints_to_keep, plan=plan,
        after_write=faults_lib.after_checkpoint_write(faults),
        steps_per_update=config.backward_passes_per_step)
    watchdog = guards.StallWatchdog(world.rank, config.stall_check_seconds,
                                    config.stall_shutdown_seconds)
    return Session(recipe=recipe, config=config, config_dict=config_dict, paths=paths,
                   runtime=chosen_runtime, data=data, steps_per_epoch=steps_per_epoch,
                   model=model, optimizer=optimizer, schedule=schedule, guard=guard, sync=sync,
                   checkpointer=checkpointer,
                   watchdog=watchdog,
                   random_generators=checkpoints.random_generators(model), faults=faults,
                   first_step=callbacks_lib.FirstStep(announce=world.is_chief),
                   resource_sampler=resources_lib.Sampler(world.local_rank),
                   epochs_note=epochs_note)


def choose_epochs(recipe: recipe_lib.Recipe, config: config_lib.TrainConfig,
                  data: data_lib.Data, steps_per_epoch: int) -> typing.Tuple[int, str]:
    """The run's epochs and why: the config's, or with ``epochs=0`` the recipe's choice for
    this data (the same on every rank, and on a resume of the same data)."""
    if config.epochs:
        return config.epochs, f"{config.epochs} epochs (--epochs)"
    if recipe.choose_epochs is None:
        raise errors.ConfigError(f"recipe {recipe.name!r} cannot choose a number of epochs: "
                                 "set --epochs to an integer >= 1")
    epochs, why = recipe.choose_epochs(config, data, steps_per_epoch)
    return epochs, f"{epochs} epochs: {why}"


# ------------------------------------------------------------------ 3. restore or start


def restore_or_start(session: Session, world: distributed.World) -> checkpoints.Position:
    """The chief restores the newest readable checkpoint (its run folder may be the only
    copy); every rank learns where the run stands, or why it cannot continue, from one
    broadcast, and takes the chief's variables. Each rank takes its own dropout generator
    states from the checkpoint (rank 0's when the world size changed). The run's list of
    world sizes gets this world when it differs from the last."""
    position, failure, random_states = checkpoints.Position(), None, None
    if world.is_chief:
        try:
            position = session.checkpointer.restore()
            random_states = session.checkpointer.random_states.numpy()
            position = warm_start_if_new(session, position)
        except (errors.CheckpointError, errors.ConfigError) as error:
            failure = (type(error), str(error))
    position, failure, random_states = distributed.broadcast_object(
        (position, failure, random_states))
    if failure:
        raise failure[0](failure[1])
    session.checkpointer.worlds = note_world(
        session.checkpointer.worlds, world, session.checkpointer.plan, position.global_step)
    # The loss scale (float16) is the LossScaleOptimizer's, not in the optimizer's list.
    distributed.broadcast_variables(session.model.variables
                                    + list(session.optimizer.variables)
                                    + runtime.loss_scale_variables(session.model))
    if session.random_generators and random_states is not None and random_states.size:
        row = world.rank if len(random_states) == world.size else 0
        checkpoints.set_random_states(session.random_generators, random_states[row])
    return position


def warm_start_if_new(session: Session, position: checkpoints.Position
                      ) -> checkpoints.Position:
    """A run starting at step 0 with ``init_from`` takes that run's model weights (chief
    only; the broadcast after the restore gives them to every rank)."""
    config, recipe, data = session.config, session.recipe, session.data
    if position.global_step or position.checkpoint or not config.init_from:
        return position
    source = warm_start.find(config.init_from)
    leave_out_head = warm_start.check(source, config.init_from, recipe.name, data.class_names,
                                      config.new_head)
    # The earlier run's model, for its classes, to read the checkpoint into: a model of
    # its own, uncompiled, so that the checkpoint's optimizer (tracked by the compiled
    # model) stays out of this run.
    source_data = dataclasses.replace(
        data, class_names=list(source.class_names or data.class_names))
    source_model = recipe.build_model(config, source_data)
    taken = warm_start.load(source, config.init_from, session.model, source_model,
                            leave_out_head, recipe.head_layer)
    return dataclasses.replace(position, initialised_from={
        "checkpoint": source.checkpoint, "new_head": leave_out_head, "variables_taken": taken,
        "classes_of_checkpoint": source.class_names})


def gather_random_states(session: Session) -> typing.Optional[np.ndarray]:
    """Every rank's dropout generator states, stacked by rank (a collective), or None
    when the model has none."""
    if not session.random_generators:
        return None
    return np.stack(distributed.allgather_object(
        checkpoints.random_states(session.random_generators)))


def note_world(worlds: typing.List[typing.Dict[str, int]], world: distributed.World,
               plan: checkpoints.Plan, global_step: int) -> typing.List[typing.Dict[str, int]]:
    """``worlds`` (the run's world sizes so far, as summary.json lists them) with this
    world added if its size or global batch differs from the last one's."""
    entry = {"world_size": world.size, "global_batch_size": plan.global_batch_size,
             "from_global_step": global_step}
    if worlds and all(worlds[-1][key] == entry[key]
                      for key in ("world_size", "global_batch_size")):
        return worlds
    return worlds + [entry]


def fit_segments(position: checkpoints.Position, epochs: int,
                 steps_per_epoch: int) -> typing.List[typing.Tuple[int, int, int, int]]:
    """The ``model.fit`` calls that finish the plan from ``position``: first the rest of a
    half-done epoch, then whole epochs. Each is (first epoch, last epoch + 1, first step
    of the first epoch, steps per epoch)."""
    segments = []
    epoch = position.epochs_done
    if position.steps_into_epoch and epoch < epochs:
        segments.append((epoch, epoch + 1, position.steps_into_epoch,
                         steps_per_epoch - position.steps_into_epoch))
        epoch += 1
    if epoch < epochs:
        segments.append((epoch, epochs, 0, steps_per_epoch))
    return segments


def make_callbacks(session: Session, world: distributed.World,
                   position: checkpoints.Position, data: data_lib.Data,
                   extra_collectives: typing.Sequence[keras.callbacks.Callback] = (),
                   ) -> typing.Tuple[typing.List[keras.callbacks.Callback],
                                     guards.NonFiniteCallback,
                                     typing.Optional[callbacks_lib.Progress]]:
    """The callbacks of one fit, in order. Horovod's broadcast and metric averaging come
    first, so that everything after them sees averaged metrics; then the other callbacks
    every rank must run (some perform collectives); then rank-0-only writers."""
    config, paths = session.config, session.paths
    throughput = callbacks_lib.Throughput(config.batch_size_per_worker * world.size, world.size)
    nonfinite = guards.NonFiniteCallback(session.guard, config.on_nonfinite,
                                         agreed=session.sync.local)
    # Horovod's broadcast after the first batch (see first_callbacks) would undo a first
    # step taken locally; under local SGD the broadcast before training is the only one.
    fresh_start = (position.global_step == 0 and not distributed.elastic_enabled()
                   and not session.sync.local)
    callbacks = distributed.first_callbacks(
        fresh_start=fresh_start, synchronise=session.sync.synchronise) + [
        session.watchdog, nonfinite, session.sync.callback(nonfinite)] + list(
        extra_collectives) + [throughput, session.first_step,
        resources_lib.ResourceMetrics(
            session.resource_sampler, config.log_every_steps,
            os.path.join(paths.tensorboard, "train") if world.is_chief else None),
        callbacks_lib.Checkpointing(session.checkpointer if world.is_chief else None,
                                    config.checkpoint_every_steps, session.steps_per_epoch,
                                    session.sync.synchronise,
                                    lambda: gather_random_states(session),
                                    lambda work: distributed.run_on_chief(
                                        world, work, on_wait=session.watchdog.waited))]
    if world.size > 1:
        callbacks.append(tensorboard_logs.AllreduceShare(throughput, distributed.time_allreduce))
    progress = None
    if world.is_chief:
        progress = callbacks_lib.Progress(config.epochs, session.steps_per_epoch,
                                          config.log_every_steps, throughput)
        callbacks += [
            progress,
            callbacks_lib.StepScalars(os.path.join(paths.tensorboard, "train"),
                                      config.log_every_steps, throughput),
            keras.callbacks.TensorBoard(
                paths.tensorboard, update_freq="epoch", write_graph=False,
                profile_batch=tuple(int(step) for step in config.profile_steps.split(","))
                if config.profile_steps else 0),
        ]
        if config.confusion_matrix:
            callbacks.append(tensorboard_logs.ConfusionMatrix(
                os.path.join(paths.tensorboard, "validation"), data.validation,
                data.class_names))
    return callbacks, nonfinite, progress


def run_fit(session: Session, data: data_lib.Data, world: distributed.World,
            position: checkpoints.Position, callbacks: typing.List[keras.callbacks.Callback],
            progress: typing.Optional[callbacks_lib.Progress]) -> Logs:
    """Train from ``position`` to the end of the plan; return the merged History dict.

    The training data is one stream of global batches fixed by the seed (see
    toolkit.data): each fit call builds it from where the run stands, skipping the
    batches already trained on before anything is loaded, so a resumed run sees exactly
    the batches the uninterrupted run would have.
    """
    config, model, logs = session.config, session.model, {}
    step = position.global_step
    for first_epoch, end_epoch, first_step, steps in fit_segments(
            position, config.epochs, session.steps_per_epoch):
        if progress is not None:
            progress.step_offset = first_step
        train = faults_lib.record_examples(
            data.train.batches(first_epoch, first_step, end_epoch),
            functools.partial(data.train.example_ids, first_epoch, first_step, end_epoch),
            world.rank, step, session.faults)
        history = model.fit(train, initial_epoch=first_epoch,
                            epochs=end_epoch, steps_per_epoch=steps,
                            validation_data=data.validation, callbacks=callbacks, verbose=0)
        for key, values in history.history.items():
            logs.setdefault(key, []).extend(values)
        step += (end_epoch - first_epoch) * steps
        if model.stop_training:
            break
    return logs


# ----------------------------------------------------------------------- 4. fit, static


def fit_static(session: Session, world: distributed.World) -> FitResult:
    """A fixed set of workers: restore or start, record the run, fit to the end."""
    position = restore_or_start(session, world)
    workers = distributed.allgather_object(worker_identity(world))
    if world.is_chief:
        write_run_config(session, world, workers, session.data, position)
    callbacks, nonfinite, progress = make_callbacks(session, world, position, session.data)
    started = time.monotonic()
    logs = run_fit(session, session.data, world, position, callbacks, progress)
    return FitResult(logs=logs, nonfinite=nonfinite, world=world, data=session.data,
                     position=position, resets=[],
                     training_seconds=time.monotonic() - started)


# ---------------------------------------------------------------------- 4. fit, elastic


class ElasticFit:
    """Elastic training: workers may leave (fail) or join while the run goes on.

    The global batch stays fixed (``global_batch_size``; each worker takes its share), so
    the plan in steps, and the learning-rate schedule, do not depend on how many workers
    there are. Horovod keeps the model and optimizer (with the step counter) committed in
    memory every ``elastic_commit_steps`` steps; after a reset every worker restores the
    last commit, rank 0's copy is broadcast, the data is sharded for the new world and
    training goes on from the committed step. Each (re)start checks that all workers hold
    identical weights and records it in ``summary.json`` (``elastic_resets``).

    Nothing before the elastic loop may be a collective (a worker joining a running job
    would not take part), so the chief restores its checkpoint locally, and Horovod's
    elastic state brings every other worker the model, optimizer and plan of rank 0.
    """

    def __init__(self, session: Session):
        self.session = session
        self.restored = (warm_start_if_new(session, session.checkpointer.restore())
                         if distributed.current_world().is_chief else checkpoints.Position())
        self.resets: typing.List[typing.Dict[str, typing.Any]] = []
        self.result: typing.Optional[FitResult] = None
        self.training_seconds = 0.0  # of every world's fit, a reset's interrupted one too
        self.state = distributed.elastic_state(session.model, session.optimizer,
                                               steps_per_epoch=session.steps_per_epoch,
                                               worlds=session.checkpointer.worlds)

    def run(self) -> FitResult:
        distributed.elastic_run(self._train_on_current_world)(self.state)
        if self.result is None:
            raise RuntimeError("elastic training returned before the end of its plan")
        return self.result

    def _position(self) -> checkpoints.Position:
        step = int(self.session.optimizer.iterations.numpy())
        steps_per_epoch = self.session.steps_per_epoch
        return checkpoints.Position(step // steps_per_epoch, step % steps_per_epoch, step)

    def _train_on_current_world(self, state) -> Logs:
        """One (re)start: run on whatever world exists now, from the committed state."""
        session = self.session
        session.watchdog.armed = False  # a reset is not a stall; the next fit re-arms it
        distributed.clear_accumulated_gradients(session.optimizer)
        # Under float16 every rank scales its loss before the all-reduce, so all must use
        # one loss scale; the elastic state holds the optimizer's variables, not the
        # LossScaleOptimizer's. Rank 0's wins.
        distributed.broadcast_variables(runtime.loss_scale_variables(session.model))
        world = distributed.current_world()
        config = for_world(session.config, world)
        session.steps_per_epoch = state.steps_per_epoch  # rank 0's, for workers that joined
        hashes = distributed.allgather_object(weights_sha256(session.model))
        # The rate of every rank's next step.
        rates = distributed.allgather_object(
            float(session.schedule(session.optimizer.iterations).numpy()))
        workers = distributed.allgather_object(worker_identity(world))
        position = self._position()
        # The world sizes so far are rank 0's (synchronised with the state); a new list,
        # so that the last commit's copy stays as it was.
        state.worlds = note_world(state.worlds, world, session.checkpointer.plan,
                                  position.global_step)
        session.checkpointer.worlds = state.worlds
        first_start = not self.resets
        self.resets.append({"world_size": world.size, "global_step": position.global_step,
                            "weights_identical_on_all_ranks": len(set(hashes)) == 1,
                            "learning_rate_by_rank": rates})
        if world.is_chief:
            print(f"[toolkit] elastic: {world.size} workers from global step "
                  f"{position.global_step}, {config.batch_size_per_worker} examples each per "
                  "step", flush=True)
        data = session.data if first_start else session.recipe.build_data(config, world.shard())
        world_session = dataclasses.replace(session, config=config)
        if world.is_chief:  # this world's batch per worker in the description
            write_run_config(world_session, world, workers, data,
                             self.restored if first_start else position)
        # Commits fall between updates (see backward_passes_per_step), and under local SGD
        # after averagings (the commit callback runs after the synchronisation's).
        commit = distributed.CommitCallback(state, session.sync.commit_every(
            config.elastic_commit_steps, config.backward_passes_per_step))
        callbacks, nonfinite, progress = make_callbacks(world_session, world, position, data,
                                                        [commit])
        started = time.monotonic()
        try:
            logs = run_fit(world_session, data, world, position, callbacks, progress)
        finally:
            self.training_seconds += time.monotonic() - started
        self.result = FitResult(logs=logs, nonfinite=nonfinite, world=world, data=data,
                                position=self.restored, resets=self.resets,
                                training_seconds=self.training_seconds)
        return logs


# -------------------------------------------------------------------------- 5. summarise


def worker_identity(world: distributed.World) -> typing.Dict[str, typing.Any]:
    """Where this rank ran: host name, local rank and its network addresses."""
    import psutil

    addresses = sorted(address.address for interface, entries in psutil.net_if_addrs().items()
                       for address in entries
                       if address.family == socket.AF_INET and interface != "lo")
    return {"rank": world.rank, "hostname": world.hostname, "local_rank": world.local_rank,
            "addresses": addresses, "pid": os.getpid()}


def worker_resources(session: Session) -> typing.Dict[str, typing.Any]:
    """This worker's peak resident and GPU memory, time to its first step and the
    unusable files it met while loading, and the non-finite steps it skipped."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    peak_gpu_mb = session.resource_sampler.peak_gpu_memory_mb
    return {"peak_rss_mb": round(peak_kb / 1024, 1),
            "peak_gpu_memory_mb": None if peak_gpu_mb is None else round(peak_gpu_mb, 1),
            "seconds_to_first_step": session.first_step.seconds,
            "nonfinite_steps_skipped": int(session.guard.skipped_steps.numpy()),
            "unusable_files": list(data_lib.UNUSABLE_FILES)}


def weights_sha256(model: keras.Model) -> str:
    """SHA-256 of all model weights, in order, as raw bytes."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def write_run_config(session: Session, world: distributed.World,
                     workers: typing.List[typing.Dict[str, typing.Any]], data: data_lib.Data,
                     position: checkpoints.Position) -> None:
    """The chief writes config.json and prints the run's one-line description."""
    config, paths = session.config, session.paths
    os.makedirs(paths.tensorboard, exist_ok=True)
    run_folder.write_json(paths.config, {
        "recipe": session.recipe.name, "config": session.config_dict,
        "world_size": world.size, "workers": workers, "data": data.description,
        "class_names": list(data.class_names),
        "train_examples_per_worker": data.train_examples,
        "validation_examples_per_worker": data.validation_examples,
        "steps_per_epoch": session.steps_per_epoch,
        "epochs": config.epochs, "epochs_chosen": session.epochs_note,
        "global_batch_size": config.batch_size_per_worker * world.size,
        "runtime": session.runtime, "versions": versions_lib.collect(), "command": sys.argv,
        "resumed_from": dataclasses.asdict(position),
        "init_from": position.initialised_from,
    })
    tensorboard_logs.write_config_text(paths.tensorboard, session.config_dict,
                                       {"world_size": world.size})
    tensorboard_logs.write_hparams_start(
        paths.tensorboard, dict(session.config_dict, world_size=world.size),
        run_name=os.path.basename(os.path.normpath(paths.run_dir)),
        metric_names=["validation_loss", "validation_accuracy", "samples_per_second"])
    tensorboard_logs.write_input_examples(os.path.join(paths.tensorboard, "validation"),
                                          data.validation)
    resume_note = (f"; resuming at epoch {position.epochs_done + 1}, step "
                   f"{position.steps_into_epoch} (global step {position.global_step}, "
                   f"{os.path.basename(position.checkpoint)})" if position.global_step
                   else "")
    if position.conversion:
        resume_note += f"; {position.conversion}"
    cache_note = f"; {data.train.cache_note}" if data.train.cache_note else ""
    print(f"[toolkit] {session.recipe.name}: {data.description}{cache_note}; "
          f"{world.size} workers x "
          f"{config.batch_size_per_worker} = global batch "
          f"{config.batch_size_per_worker * world.size}; {session.steps_per_epoch} "
          f"steps/epoch; {session.epochs_note}; "
          f"{PRECISION_NOTES.get(session.runtime['precision'], session.runtime['precision'])}; "
          f"run folder {paths.run_dir}{resume_note}",
          flush=True)


PRECISION_NOTES = {"float32": "float32",
                   "mixed_bfloat16": "bfloat16 compute, float32 weights (mixed_precision)",
                   "mixed_float16": "float16 compute with loss scaling, float32 weights"}


def stop_if_nonfinite(session: Session, result: FitResult) -> None:
    """Raise NonFiniteError on every rank if the guard stopped the run."""
    if result.nonfinite.stopped_at is None:
        return
    # Every rank learns the chief's answer: whichever rank exits first is the one whose
    # message reaches the user (horovodrun then stops the others).
    latest = distributed.broadcast_object(
        session.checkpointer.latest if result.world.is_chief else None)
    raise errors.NonFiniteError(
        f"the loss or gradients became NaN/Inf at global step {result.nonfinite.stopped_at}; "
        "all workers stopped before applying that update. The last good checkpoint is "
        f"{latest or 'none (none was written yet)'}. Lower the learning rate or use "
        "--on_nonfinite=skip")


def final_metrics(model: keras.Model, logs: Logs, validation: tf.data.Dataset,
                  trained: bool) -> typing.Dict[str, float]:
    """Validation metrics of the final weights, averaged over workers."""
    if trained and any(key.startswith("val_") for key in logs):
        return {key[len("val_"):]: float(values[-1]) for key, values in logs.items()
                if key.startswith("val_")}
    results = model.evaluate(validation, verbose=0, return_dict=True)
    return {key: distributed.allreduce_mean(float(value), name=f"final_{key}")
            for key, value in sorted(results.items())}


def summarise(session: Session, result: FitResult, started: float) -> typing.Dict[str, typing.Any]:
    """summary.json (written by the chief with the export and reports); every rank
    returns it once the chief is done."""
    config, world, position = session.config, result.world, result.position
    trained = bool(fit_segments(position, config.epochs, session.steps_per_epoch))
    metrics = final_metrics(session.model, result.logs, result.data.validation, trained)
    hashes = distributed.allgather_object(weights_sha256(session.model))
    resources = distributed.allgather_object(worker_resources(session))
    unusable = sorted({line for rank in resources for line in rank.pop("unusable_files")})
    skipped = [rank.pop("nonfinite_steps_skipped") for rank in resources]
    summary = {
        "recipe": session.recipe.name,
        "validation": metrics,
        "epochs": config.epochs,
        "resumed_from_step": position.global_step,
        "resumed_from_epoch": position.epochs_done,
        "global_steps": int(session.optimizer.iterations.numpy()),
        "planned_global_steps": config.epochs * session.steps_per_epoch,
        "steps_per_epoch": session.steps_per_epoch,
        # Synchronous steps are skipped on every rank at once; under local SGD each rank
        # skips its own, so the total over ranks, and each rank's count.
        "nonfinite_steps_skipped": (sum(skipped) if session.sync.local else skipped[0]),
        "nonfinite_steps_skipped_per_rank": skipped,
        # float16 only: the dynamic loss scale at the end (it is in every checkpoint).
        "loss_scale": ([float(variable.numpy()) for variable in
                        runtime.loss_scale_variables(session.model)] or [None])[0],
        "world_size": world.size,
        "global_batch_size": for_world(config, world).batch_size_per_worker * world.size,
        "elastic_resets": result.resets,
        "world_sizes": session.checkpointer.worlds,
        "samples_per_second": float(result.logs.get("samples_per_second", [0.0])[-1]),
        "samples_per_second_per_worker": float(
            result.logs.get("samples_per_second_per_worker", [0.0])[-1]),
        "weights_sha256": hashes[0],
        "weights_sha256_per_rank": hashes,
        "weights_identical_on_all_ranks": len(set(hashes)) == 1,
        "wall_seconds": round(time.time() - started, 1),
        "training_seconds": round(result.training_seconds, 1),
        # From the launch (or this worker's start) to the end of the first training step.
        "seconds_to_first_step": resources[0]["seconds_to_first_step"],
        "peak_rss_mb_per_rank": [rank["peak_rss_mb"] for rank in resources],
        # Sampled every log_every_steps (None without an NVIDIA GPU).
        "peak_gpu_memory_mb_per_rank": [rank["peak_gpu_memory_mb"] for rank in resources],
        "unusable_files_skipped": len(unusable),
        "unusable_files_skipped_examples": unusable[:20],
    }
    # Nobody exits before the chief has written everything: horovodrun stops all workers
    # as soon as one exits non-zero, which would cut the chief's export short. Waiting in
    # one long collective instead could be taken for a stall (see run_on_chief).
    distributed.run_on_chief(world, lambda: write_results(session, result, summary, metrics),
                             on_wait=session.watchdog.waited)
    return summary


def write_results(session: Session, result: FitResult, summary: typing.Dict[str, typing.Any],
                  metrics: typing.Dict[str, float]) -> None:
    """The chief's reports, export, summary.json and final TensorBoard metrics."""
    recipe, config, paths = session.recipe, session.config, session.paths
    if recipe.build_reports is not None:
        summary["reports"] = recipe.build_reports(config, session.model, result.data)
    if config.export:
        faults_lib.before_export(session.faults)
        summary["export"] = export.save(recipe, config, session.model, result.data,
                                        paths.export)
    run_folder.write_json(paths.summary, summary)
    tensorboard_logs.write_final_metrics(
        paths.tensorboard,
        dict({f"validation_{key}": value for key, value in metrics.items()},
             samples_per_second=summary["samples_per_second"]),
        step=summary["global_steps"])
    print(f"[toolkit] done: validation {json.dumps(metrics)}; "
          f"{summary['samples_per_second']:.0f} samples/s; results in {paths.run_dir} "
          f"(summary.json, tensorboard/, checkpoints/, export/)", flush=True)


# ------------------------------------------------------------------------------ the run


def train(recipe: recipe_lib.Recipe, config: config_lib.TrainConfig, run_dir: str,
          faults: faults_lib.Faults = faults_lib.Faults(),
          verbose: bool = False) -> typing.Dict[str, typing.Any]:
    """Run ``recipe`` with ``config`` on this worker; return the summary dict."""
    started = time.time()
    paths = run_folder.RunPaths.of(run_dir)
    world, chosen_runtime = set_up_world(config, paths, verbose)
    session = build_session(recipe, config, world, paths, chosen_runtime, faults)
    with data_lib.unusable_files_as_data_errors():
        if distributed.elastic_enabled():
            result = ElasticFit(session).run()
        else:
            result = fit_static(session, world)
        stop_if_nonfinite(session, result)
        return summarise(session, result, started)


def main(argv: typing.Optional[typing.List[str]] = None) -> int:
    """Exit codes: 0 done; 2 a user error (one line on stderr); 3 the ranks ended with
    different weights; a bug raises with its traceback (exit 1)."""
    try:
        recipe_name, run_dir, overrides, wants_help = parse_arguments(
            sys.argv[1:] if argv is None else argv)
        if recipe_name is None:
            raise errors.ConfigError("--recipe=NAME is required; known recipes: "
                                     + ", ".join(recipe_lib.names()))
        recipe = recipe_lib.get(recipe_name)
        if wants_help:
            print(f"{recipe.name}: {recipe.description}\nconfig keys:")
            print("\n".join(config_lib.describe(recipe.config_class)))
            return 0
        if run_dir is None:
            raise errors.ConfigError("--run_dir=DIR is required")
        config = config_lib.build(recipe.config_class, overrides)
        summary = train(recipe, config, run_dir, faults=faults_lib.from_environment(),
                        verbose=VERBOSE)
    except errors.UserError as error:
        return errors.report(error, prefix="[toolkit] error")
    return 0 if summary["weights_identical_on_all_ranks"] else 3


if __name__ == "__main__":
    sys.exit(main())
