"""Resource metrics per worker (toolkit.worker.resources) without a training run: the
memory-growth warning, and the GPU path through a stand-in for NVML (this machine has no
NVIDIA driver). A real run's series are checked in test_tensorboard.py."""

import types

import pytest

from toolkit.worker import resources

pytestmark = pytest.mark.fast


def test_memory_is_growing_only_when_it_rose_at_each_of_the_last_epoch_ends_by_enough():
    assert resources.growing([900, 1000, 1100, 1200])  # +300 MB over 3 epochs
    assert resources.growing([500, 2000, 2100, 2200, 2300])  # the first epoch's fill is ignored
    assert not resources.growing([1000, 1100, 1200])  # too few epochs to tell
    assert not resources.growing([1000, 1100, 1090, 1200])  # fell once: not steady
    assert not resources.growing([1000, 1010, 1020, 1030])  # +3 %: noise, not a leak
    assert not resources.growing([2000, 2100, 2200, 2300, 2300])  # stopped growing


class FakeModel:
    class optimizer:  # noqa: N801 (stands in for model.optimizer)
        iterations = types.SimpleNamespace(numpy=lambda: 0)


class ScriptedSampler:
    """Rank 1's memory grows by 200 MB an epoch; rank 0's stays flat."""
    hostname = "worker-a"

    def __init__(self):
        self.calls = 0

    def sample(self):
        self.calls += 1
        return {"cpu_percent": 90.0, "rss_mb": 1000.0, "peak_rss_mb": 1000.0,
                "gpu_utilization_percent": None, "gpu_memory_mb": None}


def test_a_worker_whose_memory_grows_at_every_epoch_end_is_named_once(tmp_path, capsys):
    sampler = ScriptedSampler()

    def gather(own):
        hostname, sample = own
        leaking = dict(sample, rss_mb=1000.0 + 200 * sampler.calls)
        return [own, ("worker-b", leaking)]

    callback = resources.ResourceMetrics(sampler, every_steps=10, log_dir=str(tmp_path),
                                         gather=gather)
    callback.set_model(FakeModel())
    callback.on_train_begin()
    for epoch in range(8):
        for batch in range(20):
            callback.on_train_batch_end(batch)
        callback.on_epoch_end(epoch)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert "rank 1 on worker-b" in warnings[0] and "epoch 1 to 4" in warnings[0]
    assert sampler.calls == 8 * 3  # every 10 steps of 20, and each epoch end


def test_gpu_utilisation_and_memory_come_from_nvml_for_the_workers_own_gpu(monkeypatch):
    opened = []

    class FakeNvml:
        class NVMLError(Exception):
            pass

        @staticmethod
        def nvmlInit():
            pass

        @staticmethod
        def nvmlDeviceGetCount():
            return 4

        @staticmethod
        def nvmlDeviceGetHandleByIndex(index):
            opened.append(index)
            return index

        @staticmethod
        def nvmlDeviceGetUtilizationRates(handle):
            return types.SimpleNamespace(gpu=75)

        @staticmethod
        def nvmlDeviceGetMemoryInfo(handle):
            return types.SimpleNamespace(used=(3 + handle) * 2 ** 30)

    monkeypatch.setattr(resources, "pynvml", FakeNvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    sampler = resources.Sampler(local_rank=1)
    sample = sampler.sample()
    assert opened == [3]  # local rank 1 of the visible GPUs 2 and 3
    assert sample["gpu_utilization_percent"] == 75.0
    assert sample["gpu_memory_mb"] == 6 * 1024
    assert sampler.peak_gpu_memory_mb == 6 * 1024

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert resources.Sampler(local_rank=1).gpu.handle == 1

    def no_driver():
        raise FakeNvml.NVMLError("NVML Shared Library Not Found")

    monkeypatch.setattr(FakeNvml, "nvmlInit", staticmethod(no_driver))
    sample = resources.Sampler(local_rank=0).sample()
    assert sample["gpu_utilization_percent"] is None and sample["gpu_memory_mb"] is None
    assert sample["rss_mb"] > 50 and sample["peak_rss_mb"] >= sample["rss_mb"] * 0.9
