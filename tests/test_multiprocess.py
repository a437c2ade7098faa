"""Two Horovod workers on localhost, through the launcher and under horovodrun."""

import json
import os
import re

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from conftest import TINY_IMAGE, horovodrun, launch, read_json

pytestmark = pytest.mark.multiprocess


def results(stdout):
    """The RESULT lines of every rank, by rank."""
    found = [json.loads(match) for match in re.findall(r"RESULT (\{.*\})", stdout)]
    return {result["rank"]: result for result in found}


def step_scalars(run_dir, tag):
    accumulator = event_accumulator.EventAccumulator(
        os.path.join(run_dir, "tensorboard", "train"), size_guidance={"tensors": 0})
    accumulator.Reload()
    return [float(tensor_util.make_ndarray(event.tensor_proto))
            for event in accumulator.Tensors(tag)]


@pytest.mark.timeout(400)
def test_two_workers_end_with_identical_weights_and_scaled_lr(tmp_path):
    # Peak LR from the first step (no warm-up, no decay), so every logged step shows it.
    arguments = TINY_IMAGE + ["--epochs=2", "--max_steps_per_epoch=10", "--warmup_epochs=0",
                              "--lr_decay=none", "--base_learning_rate=0.001"]
    for np in (1, 2):
        run_dir = str(tmp_path / f"np{np}")
        launch(["--recipe=image", f"--np={np}", f"--run_dir={run_dir}"] + arguments)
        summary = read_json(os.path.join(run_dir, "summary.json"))
        assert summary["world_size"] == np
        assert summary["global_steps"] == 20
        assert len(summary["weights_sha256_per_rank"]) == np
        assert len(set(summary["weights_sha256_per_rank"])) == 1
        assert summary["weights_identical_on_all_ranks"] is True
        rates = step_scalars(run_dir, "step/learning_rate")
        assert rates and all(rate == pytest.approx(0.001 * np) for rate in rates)


@pytest.mark.timeout(300)
def test_without_distributed_optimizer_weights_differ():
    """The control: the same hash comparison detects workers that drifted apart."""
    hashes = {}
    for mode in ("distributed", "local"):
        by_rank = results(horovodrun(2, ["tests/workers/consistency.py", "weights", mode]).stdout)
        hashes[mode] = {by_rank[0]["sha256"], by_rank[1]["sha256"]}
    assert len(hashes["distributed"]) == 1
    assert len(hashes["local"]) == 2


@pytest.mark.timeout(200)
def test_metrics_are_averaged_over_workers():
    by_rank = results(horovodrun(2, ["tests/workers/consistency.py", "metrics"]).stdout)
    for rank in (0, 1):
        assert by_rank[rank]["logs"]["loss"] == pytest.approx(1.5)
        assert by_rank[rank]["logs"]["accuracy"] == pytest.approx(0.375)
