"""What each worker uses while it trains: CPU, memory and, where there are NVIDIA GPUs,
GPU utilisation and memory.

Every rank samples its own process every ``log_every_steps`` steps and at each epoch end;
the samples are gathered to the chief (a collective: every rank runs the callback), which
writes them to TensorBoard as ``system/<metric>/rank_<r>`` and warns, once per worker, when
a worker's memory grows at every epoch end (a leak ends a long run in an out-of-memory kill
hours later). The peaks go to summary.json.

GPU figures come from NVML (the ``pynvml`` module of NVIDIA's ``nvidia-ml-py``): a machine
without NVIDIA's driver simply has none, which is not an error.
"""

import dataclasses
import os
import resource
import socket
import time
import typing

import psutil
import pynvml
import tensorflow as tf
import tf_keras as keras

from toolkit.worker import distributed

# A worker's memory is "growing" when it rose at each of this many consecutive epoch ends
# ...
GROWTH_EPOCHS = 3
# ... by at least this much in total (the first epoch's caches are filled by its end, so
# later growth is not the data being loaded).
GROWTH_FRACTION = 0.10
GROWTH_MIN_MB = 64.0


def _gpu_index(local_rank: int) -> typing.Optional[int]:
    """NVML's index of the GPU this worker uses (its local rank among the visible GPUs:
    see distributed.pin_to_local_gpu); NVML ignores CUDA_VISIBLE_DEVICES, so it is
    applied here."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return local_rank
    devices = [device.strip() for device in visible.split(",") if device.strip()]
    if local_rank >= len(devices) or not devices[local_rank].isdigit():
        return None  # no GPU for this worker, or given by UUID: not looked up
    return int(devices[local_rank])


class GpuReader:
    """Utilisation and memory of one GPU through NVML; ``read()`` gives None for both
    where there is no NVIDIA driver or GPU."""

    def __init__(self, local_rank: int):
        self.handle = None
        index = _gpu_index(local_rank)
        try:
            pynvml.nvmlInit()
            if index is not None and index < pynvml.nvmlDeviceGetCount():
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError:  # no driver (this machine), no device, no permission
            pass

    def read(self) -> typing.Tuple[typing.Optional[float], typing.Optional[float]]:
        if self.handle is None:
            return None, None
        try:
            busy = pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
            used = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
        except pynvml.NVMLError:  # the GPU fell off the bus, the driver was reloaded
            return None, None
        return float(busy), used / 2 ** 20


class Sampler:
    """One process's resource use; each ``sample()`` covers the time since the last."""

    def __init__(self, local_rank: int):
        self.hostname = socket.gethostname()
        self.process = psutil.Process()
        self.gpu = GpuReader(local_rank)
        self.peak_gpu_memory_mb = None
        self._last = self._clock()

    def _clock(self):
        times = self.process.cpu_times()
        return time.monotonic(), times.user + times.system

    def sample(self) -> typing.Dict[str, typing.Optional[float]]:
        (wall, cpu), (last_wall, last_cpu) = self._clock(), self._last
        self._last = (wall, cpu)
        busy, gpu_memory = self.gpu.read()
        if gpu_memory is not None:
            self.peak_gpu_memory_mb = max(self.peak_gpu_memory_mb or 0.0, gpu_memory)
        return {
            "cpu_percent": 100.0 * (cpu - last_cpu) / max(wall - last_wall, 1e-6),
            "rss_mb": self.process.memory_info().rss / 2 ** 20,
            # ru_maxrss: KiB on Linux.
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "gpu_utilization_percent": busy,
            "gpu_memory_mb": gpu_memory,
        }


def growing(rss_at_epoch_ends: typing.Sequence[float]) -> bool:
    """Whether memory rose at each of the last GROWTH_EPOCHS epoch ends, and by at least
    GROWTH_FRACTION (and GROWTH_MIN_MB) over them."""
    if len(rss_at_epoch_ends) < GROWTH_EPOCHS + 1:
        return False
    window = list(rss_at_epoch_ends[-(GROWTH_EPOCHS + 1):])
    rising = all(later > earlier for earlier, later in zip(window, window[1:]))
    grown = window[-1] - window[0]
    return rising and grown >= max(GROWTH_MIN_MB, GROWTH_FRACTION * window[0])


@dataclasses.dataclass
class WorkerHistory:
    """What the chief keeps of one worker: memory at each epoch end, whether it warned."""

    rss_at_epoch_ends: typing.List[float] = dataclasses.field(default_factory=list)
    warned: bool = False


class ResourceMetrics(keras.callbacks.Callback):
    """Every rank (a collective, ``gather``): sample this process every ``every_steps``
    steps and at each epoch end; on the chief (``log_dir`` set) write every rank's sample
    to TensorBoard and warn about growing memory (see ``growing``)."""

    def __init__(self, sampler: Sampler, every_steps: int, log_dir: typing.Optional[str],
                 gather: typing.Callable[[typing.Any], typing.List[typing.Any]] = (
                     distributed.allgather_object)):
        super().__init__()
        self.sampler = sampler
        self.every_steps = every_steps
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.gather = gather
        self.history: typing.Dict[int, WorkerHistory] = {}

    def on_train_begin(self, logs=None):
        # Counted locally, as StepScalars does: all ranks take the same steps.
        self.step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every_steps == 0:
            self._record()

    def on_epoch_end(self, epoch, logs=None):
        samples = self._record()
        if self.writer is None:
            return
        for rank, (hostname, sample) in enumerate(samples):
            history = self.history.setdefault(rank, WorkerHistory())
            history.rss_at_epoch_ends.append(sample["rss_mb"])
            if not history.warned and growing(history.rss_at_epoch_ends):
                history.warned = True
                window = history.rss_at_epoch_ends[-(GROWTH_EPOCHS + 1):]
                print(f"[toolkit] warning: the memory of rank {rank} on "
                      f"{hostname} grew at each of the last {GROWTH_EPOCHS} "
                      f"epoch ends ({' -> '.join(f'{mb:.0f}' for mb in window)} MB, epoch "
                      f"{epoch + 1 - GROWTH_EPOCHS} to {epoch + 1}): a leak would end the run "
                      "out of memory; TensorBoard shows system/rss_mb per rank. Warned once",
                      flush=True)

    def _record(self):
        samples = self.gather((self.sampler.hostname, self.sampler.sample()))
        if self.writer is not None:
            with self.writer.as_default(step=self.step):
                for rank, (_, sample) in enumerate(samples):
                    for name, value in sample.items():
                        if value is not None:
                            tf.summary.scalar(f"system/{name}/rank_{rank}", value)
            self.writer.flush()
        return samples

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.flush()
