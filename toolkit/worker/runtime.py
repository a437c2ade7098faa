"""The worker's runtime: Horovod's environment, threads, device, precision and seeds.

Everything here must happen before TensorFlow or Horovod does any work, so the trainer
calls it first.
"""

import os
import typing

import numpy as np
import tensorflow as tf
import tf_keras as keras

from toolkit import config as config_lib
from toolkit import run_folder
from toolkit.worker import distributed


# Horovod's background thread wakes every cycle to coordinate the ranks, even when no
# tensor waits: at Horovod's default of 1 ms two idle workers here each spent ~5 % of a
# core on it, taken from CPU workers' computation; and each step's allreduce waits for
# the next cycle, so a long cycle costs latency instead. Measured (2026-11-29, 2-core
# x86_64, image recipe, synthetic data, NP=2 pinned, samples/s, 3 runs each):
# synchronous 2,320-2,408 at 1 ms, 2,456-2,510 at 5 ms, 2,245-2,304 at 10 ms,
# 2,029-2,123 at 20 ms; local SGD (K=16) 2,432-2,583 at 1 ms, 2,612-2,766 at 5 ms. On
# GPUs the host's cores are mostly idle and Horovod's 1 ms stands.
CPU_CYCLE_TIME_MS = 5.0
HOROVOD_CYCLE_TIME_MS = 1.0  # Horovod's own default (operations.cc)


def cycle_time_ms(config: config_lib.TrainConfig, gpus: bool) -> float:
    """The fusion cycle: the config's, else CPU_CYCLE_TIME_MS on CPU workers and
    Horovod's default on GPU hosts; Horovod's default under autotune, which tunes it."""
    if config.cycle_time_ms:
        return config.cycle_time_ms
    return HOROVOD_CYCLE_TIME_MS if gpus or config.autotune else CPU_CYCLE_TIME_MS


def configure_horovod(config: config_lib.TrainConfig,
                      paths: typing.Optional[run_folder.RunPaths]) -> float:
    """Horovod reads these from the environment at init, on every worker; return the
    cycle time chosen (ms). ``paths``: where the autotune log and the timeline go (None
    in benchmarks, which write neither)."""
    if config.fusion_threshold_mb:
        os.environ["HOROVOD_FUSION_THRESHOLD"] = str(int(config.fusion_threshold_mb * 2 ** 20))
    cycle = cycle_time_ms(config, gpus=_nvidia_device_files())
    if config.cycle_time_ms or not config.autotune:  # once set, autotune leaves it alone
        os.environ["HOROVOD_CYCLE_TIME"] = str(cycle)
    if config.autotune and paths is not None:
        os.environ["HOROVOD_AUTOTUNE"] = "1"
        os.environ["HOROVOD_AUTOTUNE_LOG"] = paths.autotune
    if config.timeline and paths is not None:
        # Rank 0 writes it; chrome://tracing or https://ui.perfetto.dev opens it.
        os.environ["HOROVOD_TIMELINE"] = paths.timeline
    # Horovod's stall check: warn when a rank is late to a collective, and (unlike
    # Horovod's default, which warns forever) stop the job when it stays stuck.
    os.environ["HOROVOD_STALL_CHECK_TIME_SECONDS"] = str(config.stall_check_seconds)
    os.environ["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] = str(config.stall_shutdown_seconds)
    return cycle


def pin_to_cores(index: int, count: int) -> None:
    """Restrict this process to the ``index``-th block of ``count`` usable cores."""
    available = sorted(os.sched_getaffinity(0))
    block = available[index * count:(index + 1) * count]
    os.sched_setaffinity(0, block or available)


def configure(config: config_lib.TrainConfig,
              world: distributed.World) -> typing.Dict[str, typing.Any]:
    """Thread pools, device, precision and seeds; return what was chosen (config.json)."""
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
    if gpu is None and _nvidia_device_files():
        print(f"[toolkit] warning: rank {world.rank} on {world.hostname} sees NVIDIA devices "
              "but TensorFlow finds no GPU (CUDA driver or libraries missing or mismatched); "
              "training runs on the CPU. VERBOSE=1 shows TensorFlow's own messages",
              flush=True)
    policy = precision_policy(config, gpu)
    if policy != "float32":
        keras.mixed_precision.set_global_policy(policy)
    # Same seed everywhere: identical initial weights and reproducible runs (the model's
    # own random numbers are made per rank once it is built: see seed_per_rank).
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        # Deterministic kernels, and dropout randomness held in variables (so it is saved
        # in checkpoints and a resumed run draws the same masks).
        tf.config.experimental.enable_op_determinism()
        keras.backend.experimental.enable_tf_random_generator()
    return {"intra_op_threads": intra_op, "device": gpu or "CPU",
            "deterministic": config.deterministic, "precision": policy}


def precision_policy(config: config_lib.TrainConfig, gpu: typing.Optional[str]) -> str:
    """The Keras precision policy. ``mixed_precision=true``: float16 on GPUs (tf_keras'
    compile then wraps the optimizer, Horovod's DistributedOptimizer, in a
    LossScaleOptimizer with a dynamic loss scale), bfloat16 on CPUs (same range as
    float32, no scaling needed), or the type ``mixed_precision_type`` names. ``auto``:
    bfloat16 only where the hardware has bfloat16 arithmetic (elsewhere it is emulated
    and slower than float32), never float16 (its loss scaling is a choice to make
    knowingly). Variables stay float32 either way."""
    if config.mixed_precision == "false" or (config.mixed_precision == "auto"
                                             and not native_bfloat16(gpu)):
        return "float32"
    kind = "bfloat16" if config.mixed_precision == "auto" else config.mixed_precision_type
    if kind == "auto":
        kind = "float16" if gpu else "bfloat16"
    return "mixed_" + kind


CPUINFO = "/proc/cpuinfo"


def native_bfloat16(gpu: typing.Optional[str]) -> bool:
    """Whether this worker's device computes in bfloat16 natively: a GPU of compute
    capability 8.0 or later (Ampere on), or a CPU with AMX or AVX-512 BF16 instructions,
    which oneDNN uses for bfloat16 matrix products and convolutions."""
    if gpu is not None:
        device = next((item for item in tf.config.list_physical_devices("GPU")
                       if item.name == gpu), None)  # gpu: the physical device's name
        details = tf.config.experimental.get_device_details(device) if device else {}
        return tuple(details.get("compute_capability", (0, 0))) >= (8, 0)
    try:
        with open(CPUINFO) as stream:
            flags = next((line.split(":", 1)[1].split() for line in stream
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"amx_bf16", "avx512_bf16"} & set(flags))


def loss_scale_variables(model) -> typing.List[tf.Variable]:
    """The dynamic loss scale's variables (scale, good steps) under float16, else []."""
    optimizer = model.optimizer
    if not getattr(optimizer, "dynamic", False):  # a LossScaleOptimizer's property
        return []
    return [optimizer._loss_scale.current_loss_scale, optimizer.dynamic_counter]


def rank_seed(seed: int, rank: int, stream: int = 0) -> int:
    """A seed for random stream ``stream`` of worker ``rank`` in a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, rank, stream]).generate_state(1)[0])


def seed_per_rank(seed: int, rank: int, model) -> None:
    """Give this worker random numbers of its own for what ``model`` draws while training
    (dropout): with one seed everywhere, every rank would draw the same masks for its
    different examples. Call after the model is built (its initial weights come from the
    run's seed, identical everywhere) and before training is traced.

    Each random layer (tf_keras' ``RandomGenerator``) gets a seed from (run seed, rank,
    layer): without ``deterministic`` that is the op seed of its seeded dropout ops; with
    it, its ``tf.random.Generator`` is reseeded (see checkpoints.random_generators). The
    global seed stays the run's: tf.data combines it with the data's own seeds, and the
    data order must be the same on every rank (see toolkit.data).
    """
    modules = [model, *model.submodules]
    generators = [module._random_generator for module in modules
                  if hasattr(getattr(module, "_random_generator", None), "make_legacy_seed")]
    for index, generator in enumerate(generators, start=1):
        stream = rank_seed(seed, rank, index)
        if isinstance(getattr(generator, "_generator", None), tf.random.Generator):
            generator._generator.reset_from_seed(stream)
        else:
            generator._seed = stream  # tf_keras: the seed its next dropout op is given


def _nvidia_device_files() -> bool:
    """True when the kernel exposes NVIDIA GPUs (/dev/nvidia0, ...) to this process."""
    try:
        return any(name[len("nvidia"):].isdigit() for name in os.listdir("/dev")
                   if name.startswith("nvidia"))
    except OSError:
        return False
