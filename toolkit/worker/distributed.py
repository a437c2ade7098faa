"""The whole Horovod surface of the toolkit.

Recipes never import Horovod; the trainer calls the functions here. Every Horovod call
carries a ``# Horovod:`` comment, so ``grep -rn "Horovod:" toolkit/`` lists all of it.

Data sharding: a data set of ``n`` examples is split into ``size`` disjoint shards of
exactly ``n // size`` examples; worker ``rank`` takes examples ``rank, rank + size,
rank + 2 * size, ...`` (see :class:`toolkit.data.Shard`). Equal shard sizes mean every
worker runs the same number of steps (a worker that ran one step more would wait forever
in an allreduce) and that averaging per-worker metrics gives the exact global metric. At
most ``size - 1`` examples are left out per pass.
"""

import dataclasses
import functools
import os
import socket
import threading
import time
import typing

import tensorflow as tf
import tf_keras

from toolkit import data
from toolkit import errors
from toolkit import keras_compat

# Horovod: its Keras API, imported with `keras` resolving to tf_keras (see keras_compat).
hvd = keras_compat.import_horovod_keras()
# Horovod: the TensorFlow API, for the object and variable collectives the Keras API lacks.
import horovod.tensorflow as hvd_tf  # noqa: E402
from horovod.common.exceptions import HorovodInternalError  # noqa: E402
import horovod.tensorflow.functions as hvd_tf_functions  # noqa: E402


def _traced_without_autograph(function):
    return tf.function(function, autograph=False)


# Horovod: it makes its gradient allreduce (and grouped broadcast) a tf.function with
# AutoGraph on, so tracing the first training step converts its Python source, and
# through it several hundred functions of horovod.tensorflow, to graph code: 3 to 4 s of
# every start on this machine, per worker. That code branches on tensors only through
# tf.cond (its Python ifs test Python values: None gradients, dtypes, sizes), so it traces
# as it is. Both modules look the helper up as a module global when they build the
# function; set here, before any optimizer is wrapped. tests/test_multiprocess.py
# checks that a wrapped optimizer's allreduce is traced without AutoGraph.
hvd_tf._make_subgraph = _traced_without_autograph
hvd_tf_functions._make_subgraph = _traced_without_autograph


@dataclasses.dataclass(frozen=True)
class World:
    """Where this process sits among the workers of the run."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    hostname: str

    @property
    def is_chief(self):
        """Rank 0 writes files and prints progress; every rank computes."""
        return self.rank == 0

    def shard(self) -> data.Shard:
        return data.Shard(index=self.rank, count=self.size)


def init() -> World:
    """Start Horovod and return this process's place in the world."""
    # Horovod: initialise; under horovodrun this joins the other ranks.
    hvd.init()
    return current_world()


def current_world() -> World:
    """This process's place in the world now (it changes after an elastic reset)."""
    return World(
        rank=hvd.rank(),  # Horovod: global rank
        size=hvd.size(),  # Horovod: number of workers
        local_rank=hvd.local_rank(),  # Horovod: rank among the workers on this host
        local_size=hvd.local_size(),  # Horovod: workers on this host
        hostname=socket.gethostname(),
    )


def pin_to_local_gpu(world):
    """Give each worker one GPU (its local rank), growing memory on demand."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    if world.local_rank >= len(gpus):
        raise errors.TrainingError(
            f"worker with local rank {world.local_rank} on {world.hostname} has no GPU: the "
            f"host shows {len(gpus)} GPUs but runs {world.local_size} workers; lower the "
            "slots for this host")
    gpu = gpus[world.local_rank]
    tf.config.experimental.set_memory_growth(gpu, True)
    tf.config.set_visible_devices(gpu, "GPU")
    return gpu.name


@dataclasses.dataclass
class GradientSync:
    """Whether the train step all-reduces its gradients. Read when the step is traced:
    local SGD (toolkit.worker.local_sgd) turns it off after its synchronous warm-up and
    has Keras trace the step again."""

    every_step: bool = True


def wrap_optimizer(optimizer, config, gradient_sync: typing.Optional[GradientSync] = None):
    """Wrap a Keras optimizer so gradients are combined across workers before each update
    (while ``gradient_sync.every_step``, when given)."""
    # Horovod: fp16 compression halves the bytes on the wire; gradients are cast back after.
    compression = hvd.Compression.fp16 if config.fp16_allreduce else hvd.Compression.none
    # Horovod: Adasum combines gradients adaptively instead of averaging them.
    reduce_op = hvd.Adasum if config.adasum else hvd.Average
    # Horovod: allreduce gradients in compute_gradients; with backward_passes_per_step > 1,
    # accumulate locally that many batches first and apply their average.
    distributed_optimizer = hvd.DistributedOptimizer(
        optimizer,
        compression=compression,
        op=reduce_op,
        backward_passes_per_step=config.backward_passes_per_step,
        average_aggregated_gradients=True,
        # Horovod: with groups, the gradients go out as that many grouped allreduces, each
        # negotiated once, instead of one request per tensor for the fusion buffer.
        groups=config.allreduce_groups or None,
    )
    if gradient_sync is not None:
        # Horovod: _allreduce_grads(grads, variables) is the all-reduce its
        # compute_gradients calls; without it the step applies this worker's gradients.
        allreduce = distributed_optimizer._allreduce_grads

        def allreduce_while_synchronous(gradients, variables):
            return allreduce(gradients, variables) if gradient_sync.every_step else list(gradients)

        distributed_optimizer._allreduce_grads = allreduce_while_synchronous
    return distributed_optimizer


def clear_accumulated_gradients(optimizer):
    """Forget gradients accumulated since the last all-reduce (``backward_passes_per_step``
    > 1). Horovod keeps them in variables of its own, outside the optimizer's, so neither
    checkpoints nor the elastic state hold them; both are taken between updates, when the
    sums are zero. A worker that survives a reset may hold a half-accumulated sum (and a
    counter at the all-reduce that failed), which must go before training resumes from
    the last commit."""
    accumulation = getattr(optimizer, "_agg_helper", None)
    if accumulation is not None:
        # Horovod: its eager accumulation helper; _clear_vars zeroes the sums and counter.
        accumulation._clear_vars()


def broadcast_variables(variables):
    """Make every worker's copy of ``variables`` equal to rank 0's."""
    if variables:
        # Horovod: broadcast from rank 0, which holds the restored checkpoint if any.
        hvd_tf.broadcast_variables(variables, root_rank=0)


def broadcast_object(value):
    """Return rank 0's ``value`` on every worker (small picklable Python values only)."""
    # Horovod: pickles rank 0's object and sends it to all ranks.
    return hvd_tf.broadcast_object(value, root_rank=0)


def allgather_object(value):
    """Return the list of every worker's ``value``, in rank order."""
    # Horovod: gathers one pickled object per rank.
    return hvd_tf.allgather_object(value)


def allreduce_mean(value, name):
    """Average a float over all workers."""
    # Horovod: a scalar allreduce; every rank must call it the same number of times.
    return float(hvd_tf.allreduce(tf.constant(value, tf.float64), op=hvd_tf.Average, name=name))


def first_callbacks(fresh_start=True, synchronise=None):
    """Callbacks that perform collectives; every rank runs them, in this order, first.

    1. Broadcast: rank 0's variables to everyone after the first batch. The trainer already
       broadcasts before training; this one also covers variables Keras creates lazily
       during the first step (e.g. a mixed-precision loss scale). It is left out when a run
       resumes (``fresh_start=False``): everything exists by then, and a second broadcast
       mid-run would overwrite the other ranks' batch-norm statistics, which the
       uninterrupted run does not do, so the resumed run would no longer match it.
    2. Metric averaging: replaces each rank's epoch metrics with the mean over ranks. It must
       come before anything that reads metrics (progress, TensorBoard, checkpoints, History),
       or those would see rank 0's shard only.
    3. ``synchronise(model)`` before validation and at the end: averaging of the
       non-trainable variables (batch-norm statistics), or, under local SGD, of the whole
       model and optimizer state (toolkit.worker.local_sgd).
    """
    callbacks = [
        # Horovod: average metrics among workers at the end of every epoch.
        hvd.callbacks.MetricAverageCallback(),
        SynchroniseCallback(synchronise or average_non_trainable),
    ]
    if fresh_start:
        # Horovod: broadcast initial variable states from rank 0 to all other processes.
        callbacks.insert(0, hvd.callbacks.BroadcastGlobalVariablesCallback(0))
    return callbacks


def average_non_trainable(model):
    """Average floating-point non-trainable variables (batch-norm moving statistics) over
    workers, and take rank 0's value for the others, so all workers hold the same model;
    return the bytes averaged.

    Gradients keep trainable weights identical, but moving statistics are updated from each
    worker's own batches and drift apart; averaging them estimates the statistics of the
    union of the workers' data.
    """
    return average_variables(model.non_trainable_variables)


def average_variables(variables) -> int:
    """Replace every worker's floating-point ``variables`` by their average over workers
    and the others (counters) by rank 0's; return the bytes averaged."""
    return average_variables_gathering(variables, ())[0]


def average_variables_gathering(variables, share: typing.Sequence[int],
                                ) -> typing.Tuple[int, typing.List[typing.Tuple[int, ...]]]:
    """:func:`average_variables`, and every worker's ``share`` (a few integers, the same
    number on every worker) gathered in the same round of collectives; return the bytes
    averaged and the shares in rank order.

    The collectives (the grouped allreduce, rank 0's counters, the gathered shares) are
    issued from one traced function, so Horovod negotiates them in one cycle; called
    one after another, each waits for a cycle of its own (``allgather_object`` is two).
    """
    length = len(share)
    gathered = _averager(variables, length)(tf.constant(list(share), tf.int64)).numpy()
    shares = ([tuple(int(value) for value in row) for row in gathered.reshape(-1, length)]
              if length else [])
    return sum(variable.shape.num_elements() * variable.dtype.size
               for variable in variables if variable.dtype.is_floating), shares


# Traced once per list of variables (and share length): run eagerly, the grouped allreduce
# and the assignments of a model's variables took 0.3 to 1 s per call on this machine
# (local SGD averages every few steps). The functions hold their variables, so ids stay
# unique.
_AVERAGERS: typing.Dict[typing.Tuple[typing.Tuple[int, ...], int], typing.Callable] = {}


def _averager(variables, share_length):
    key = (tuple(id(variable) for variable in variables), share_length)
    if key not in _AVERAGERS:
        floating = [variable for variable in variables if variable.dtype.is_floating]
        others = [variable for variable in variables if not variable.dtype.is_floating]

        def average(share):
            if floating:
                # Horovod: one grouped allreduce for all of them.
                averaged = hvd_tf.grouped_allreduce([variable.value() for variable in floating],
                                                    op=hvd_tf.Average)
                for variable, value in zip(floating, averaged):
                    variable.assign(value)
            for variable in others:
                # Horovod: rank 0's counters win.
                variable.assign(hvd_tf.broadcast(variable.value(), root_rank=0))
            # Horovod: every worker's share, in rank order.
            return hvd_tf.allgather(share) if share_length else share

        _AVERAGERS[key] = _traced_without_autograph(average)
    return _AVERAGERS[key]


class SynchroniseCallback(tf_keras.callbacks.Callback):
    """Run ``synchronise(model)`` (:func:`average_non_trainable` by default) before each
    validation and at the end of training, so that validation, checkpoints and the export
    all see one model. Every rank runs it."""

    def __init__(self, synchronise):
        super().__init__()
        self.synchronise = synchronise

    def on_test_begin(self, logs=None):
        self.synchronise(self.model)

    def on_train_end(self, logs=None):
        self.synchronise(self.model)


def time_allreduce(elements):
    """Median seconds of an allreduce of ``elements`` float32 values (a collective)."""
    from toolkit.worker import tensorboard_logs

    tensor = tf.ones([elements], tf.float32)
    # Horovod: a probe allreduce the size of all gradients, to estimate communication time.
    return tensorboard_logs.time_it(lambda: hvd_tf.allreduce(tensor, op=hvd_tf.Average,
                                                             name="allreduce_probe").numpy())


# Chief's work in progress, done, or failed: the flag run_on_chief broadcasts.
_WORKING, _DONE, _FAILED = 0, 1, 2


def run_on_chief(world: World, work: typing.Callable[[], typing.Any],
                 on_wait: typing.Callable[[float], None] = lambda seconds: None,
                 poll_seconds: float = 1.0) -> typing.Any:
    """Run ``work()`` on the chief (writing a checkpoint, the export, the reports) while
    every other rank waits for it; return its result on the chief, None elsewhere.

    The others do not wait in one collective that lasts as long as the work: a stall
    check (Horovod's, or the toolkit's watchdog) would take a large export or a slow
    shared filesystem for a hung job and stop it. Instead, while the chief works on its
    main thread, a thread of the chief broadcasts "still working" every ``poll_seconds``;
    the others take part in each broadcast, and every rank calls ``on_wait(seconds so
    far)`` after each (the watchdog counts that as progress, on the chief too). A failure of ``work`` is raised on the chief
    only (its message is the one the user needs; horovodrun then stops the others).
    """
    if world.size == 1:
        return work()
    if not world.is_chief:
        started = time.monotonic()
        while True:
            # Horovod: the chief's flag, once per poll.
            flag = int(hvd_tf.broadcast(tf.constant(_WORKING), root_rank=0,
                                        name="chief_work").numpy())
            on_wait(time.monotonic() - started)
            if flag != _WORKING:
                return None
    finished = threading.Event()
    outcome = {"flag": _WORKING}
    heartbeat_error = []
    started = time.monotonic()

    def heartbeat():
        try:
            while True:
                done = finished.wait(poll_seconds)
                flag = outcome["flag"] if done else _WORKING
                # Horovod: the same broadcast the other ranks wait in.
                hvd_tf.broadcast(tf.constant(flag), root_rank=0, name="chief_work")
                on_wait(time.monotonic() - started)
                if done:
                    return
        except Exception as error:  # a lost worker (elastic reset), raised below
            heartbeat_error.append(error)

    thread = threading.Thread(target=heartbeat, name="toolkit-chief-heartbeat", daemon=True)
    thread.start()
    try:
        result = work()
        outcome["flag"] = _DONE
    except BaseException:
        outcome["flag"] = _FAILED
        raise
    finally:
        finished.set()
        thread.join()
    if heartbeat_error:
        raise heartbeat_error[0]
    return result


def build_info():
    """Which controllers and tensor operations this Horovod build has."""
    return {
        "gloo": bool(hvd.gloo_built()),  # Horovod: built with the Gloo controller
        "mpi": bool(hvd.mpi_built()),  # Horovod: built with MPI
        "nccl": bool(hvd.nccl_built()),  # Horovod: built with NCCL GPU operations
    }


def elastic_enabled():
    """True when horovodrun started this worker in elastic mode."""
    return os.environ.get("HOROVOD_ELASTIC") == "1"


def elastic_state(model, optimizer, **values):
    """The state an elastic run keeps in memory: committed copies of the model's and the
    optimizer's variables (the step counter among them), restored on every worker after
    a failure and broadcast from rank 0 to the workers of the new world. ``values`` are
    small Python values kept and synchronised the same way."""
    # Horovod: elastic Keras state.
    return hvd.elastic.KerasState(model, optimizer=optimizer, **values)


def elastic_run(function):
    """Decorate ``function(state)`` so that it is run again after every reset (a worker
    lost or added), on the new world, from the last committed state.

    Horovod's TensorFlow wrapper turns a failed collective into a reset only when the
    error names ``HorovodAllreduce``, ``HorovodAllgather`` or ``HorovodBroadcast``; any
    other ``UnknownError`` (a failed ``HorovodGroupedAllreduce``, which the
    ``DistributedOptimizer`` uses with ``allreduce_groups``, among them) is swallowed and
    the function returns None as if training had finished. So every failed Horovod op is
    translated here, and any other such error is re-raised as an error Horovod lets pass.
    """
    @functools.wraps(function)
    def translated(state):
        try:
            return function(state)
        except tf.errors.UnknownError as error:
            if "Horovod" in error.message:
                raise HorovodInternalError(error.message) from error
            raise RuntimeError(error.message) from error

    # Horovod: the elastic retry loop (re-initialises Horovod and syncs the state).
    return hvd.elastic.run(translated)


class CommitCallback(tf_keras.callbacks.Callback):
    """Commit the elastic state after every global step that is a multiple of
    ``every_steps``, and at each epoch end. A commit is also where workers learn that hosts
    were added, and reset to take them in (a collective: every rank commits together).

    Horovod's ``CommitStateCallback`` counts batches from the start of each fit, so after
    a reset its commits drift off the steps where updates (``backward_passes_per_step``)
    or local SGD's averagings fall; counting global steps keeps them there."""

    def __init__(self, state, every_steps: int):
        super().__init__()
        self.state = state
        self.every_steps = every_steps

    def on_train_begin(self, logs=None):
        self.step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every_steps == 0:
            self.state.commit()  # Horovod: save the state in memory, check for host changes

    def on_epoch_end(self, epoch, logs=None):
        self.state.commit()
