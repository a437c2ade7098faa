"""Two Horovod workers on localhost: identical weights, gradients averaged, the learning
rate following the global batch, validation metrics over all workers' data."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from helpers import (PYTHON, TINY_IMAGE, event_scalars, horovodrun, launch,
                     predict_in_fresh_process, read_json, results, run)
from recipes import image

pytestmark = pytest.mark.multiprocess


@pytest.mark.timeout(400)
def test_two_workers_end_with_identical_weights_and_scaled_lr(tmp_path):
    # Peak LR from the first step (no warm-up, no decay), so every logged step shows it.
    # (NP=1 against NP=2 on the same global batch is the SGD equivalence test below.)
    run_dir = str(tmp_path / "np2")
    launch(["--recipe=image", "--np=2", f"--run_dir={run_dir}"] + TINY_IMAGE + [
        "--epochs=2", "--max_steps_per_epoch=10", "--warmup_epochs=0", "--lr_decay=none",
        "--base_learning_rate=0.001"])
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert summary["world_size"] == 2
    assert summary["global_steps"] == 20
    assert len(summary["weights_sha256_per_rank"]) == 2
    assert len(set(summary["weights_sha256_per_rank"])) == 1
    assert summary["weights_identical_on_all_ranks"] is True
    rates = event_scalars(run_dir, "train", "step/learning_rate")
    assert rates and all(rate == pytest.approx(0.002) for rate in rates)


@pytest.mark.timeout(300)
def test_without_distributed_optimizer_weights_differ():
    """The control: the same hash comparison detects workers that drifted apart. The
    distributed run also shows Horovod's allreduce traced without AutoGraph (the start-up
    workaround in toolkit.worker.distributed) and the weights still equal."""
    hashes, traced_with_autograph = {}, {}
    for mode in ("distributed", "local"):
        by_rank = results(horovodrun(2, ["tests/workers/consistency.py", mode]).stdout)
        hashes[mode] = {by_rank[0]["sha256"], by_rank[1]["sha256"]}
        traced_with_autograph[mode] = {by_rank[0]["allreduce_autograph"],
                                       by_rank[1]["allreduce_autograph"]}
    assert len(hashes["distributed"]) == 1
    assert len(hashes["local"]) == 2
    assert traced_with_autograph["distributed"] == {False}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("deterministic", ["false", "true"])
def test_each_rank_draws_its_own_dropout_masks_from_the_run_seed(tmp_path, deterministic):
    """Same seed, same initial weights, but dropout masks of each rank's own (with and
    without deterministic dropout generators). (That they are drawn again the same on a
    resume is the BERT exact-resume test.)"""
    by_rank = results(horovodrun(2, ["tests/workers/dropout_masks.py", str(tmp_path / "run"),
                                     deterministic]).stdout)
    assert by_rank[0]["weights"] == by_rank[1]["weights"]
    assert by_rank[0]["masks"] != by_rank[1]["masks"]


def final_kernel(run_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
        os.path.join(run_dir, "checkpoints")))
    [name] = [name for name in reader.get_variable_to_shape_map()
              if name.startswith("model/") and name.endswith("kernel/.ATTRIBUTES/VARIABLE_VALUE")]
    return reader.get_tensor(name)


@pytest.mark.timeout(300)
def test_two_workers_on_a_global_batch_take_the_steps_one_worker_takes(tmp_path):
    """Plain SGD, 16 steps of a fixed global batch of 64: NP=2 (32 each, gradients
    averaged, learning rate for the global batch) ends where NP=1 (64) ends. Summed
    gradients, or a learning rate scaled by the number of workers instead of the global
    batch, would double the steps of one of them."""
    settings = ["global_batch_size=64", "batch_size_per_worker=32", "epochs=2"]
    one = str(tmp_path / "np1")
    run([PYTHON, "tests/workers/sgd_equivalence.py", one, *settings], timeout=200)
    two = str(tmp_path / "np2")
    horovodrun(2, ["tests/workers/sgd_equivalence.py", two, *settings], timeout=200)
    for run_dir in (one, two):
        summary = read_json(os.path.join(run_dir, "summary.json"))
        assert summary["global_batch_size"] == 64 and summary["global_steps"] == 16
    initial_scale = np.abs(final_kernel(one)).mean()
    assert initial_scale > 0.1
    np.testing.assert_allclose(final_kernel(two), final_kernel(one), rtol=1e-4, atol=1e-6)


@pytest.mark.timeout(300)
def test_accumulating_two_batches_takes_the_steps_of_one_batch_twice_as_large(tmp_path):
    """NP=2, plain SGD with warm-up and cosine decay: batches of 16 per worker accumulated
    over 2 backward passes end where batches of 32 end. The base rate is for one worker's
    batch, so the accumulating run, with half the batch, has half the base rate and must
    scale it by the effective batch (4 batches of 16), and warm up and decay over updates,
    not batches."""
    schedule = ["warmup_epochs=0.5", "lr_decay=cosine", "epochs=2"]
    large = str(tmp_path / "large")
    horovodrun(2, ["tests/workers/sgd_equivalence.py", large, "global_batch_size=64",
                   "batch_size_per_worker=32", "base_learning_rate=0.05", *schedule],
               timeout=200)
    accumulated = str(tmp_path / "accumulated")
    horovodrun(2, ["tests/workers/sgd_equivalence.py", accumulated, "global_batch_size=32",
                   "batch_size_per_worker=16", "backward_passes_per_step=2",
                   "base_learning_rate=0.025", *schedule], timeout=200)
    assert read_json(os.path.join(large, "summary.json"))["global_steps"] == 16
    summary = read_json(os.path.join(accumulated, "summary.json"))
    assert summary["global_steps"] == 32 and summary["weights_identical_on_all_ranks"]
    assert np.abs(final_kernel(large)).mean() > 0.1
    np.testing.assert_allclose(final_kernel(accumulated), final_kernel(large), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.timeout(120)
def test_gradients_accumulated_before_an_elastic_reset_are_dropped():
    """A worker that survives a reset may hold half an update's sums (the commit it goes
    back to was taken between updates, when they were zero). Cleared, the next update is
    the one a fresh worker makes; left, it would mix in a batch from before the reset."""
    result = run([PYTHON, "tests/workers/accumulation_reset.py"], timeout=100)
    outcome = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert outcome["weights_unchanged_by_first_batch"]  # the first batch was only summed
    assert outcome["cleared_equals_fresh"]
    assert not outcome["uncleared_equals_fresh"]  # the control: the sums do matter


PREDICT_PIXELS = r"""
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
pixels = np.load(sys.argv[2])
out = model.signatures["serving_pixels"](pixels=tf.constant(pixels))
print("RESULT " + json.dumps({"probabilities": out["probabilities"].numpy().tolist()}))
"""


@pytest.mark.timeout(300)
def test_reported_validation_metrics_are_those_of_all_workers_data(tmp_path):
    """Each rank validates its own shard (even / odd examples); the reported metrics must
    be those of the union, not of rank 0's half."""
    run_dir = str(tmp_path / "run")
    count = 400
    # float32: the export computes in float32, and its answers are the reference here.
    # Shifts as well as flips: this short run then leaves the two halves' accuracies
    # apart (with flips alone both halves scored the same after 15 steps). No label
    # smoothing: the reference loss is the plain cross-entropy of the export's answers.
    launch(["--recipe=image", "--np=2", f"--run_dir={run_dir}", *TINY_IMAGE, "--epochs=1",
            "--max_steps_per_epoch=15", f"--max_validation_examples={count}",
            "--mixed_precision=false", "--shift_fraction=0.125", "--label_smoothing=0"])
    reported = read_json(os.path.join(run_dir, "summary.json"))["validation"]
    images, labels = image.fashion_mnist_split(image.ImageConfig().fashion_mnist_dir, "t10k")
    pixels_path = str(tmp_path / "pixels.npy")
    np.save(pixels_path, images[:count, ..., None])
    probabilities = np.array(predict_in_fresh_process(
        PREDICT_PIXELS, os.path.join(run_dir, "export", "1"), pixels_path,
        cwd=str(tmp_path))["probabilities"])
    labels = labels[:count]
    correct = np.argmax(probabilities, axis=1) == labels
    losses = -np.log(probabilities[np.arange(count), labels])
    union, rank0, rank1 = correct.mean(), correct[0::2].mean(), correct[1::2].mean()
    # The halves differ, so a metric of one half alone would be caught.
    assert abs(rank0 - union) > 2 / count and abs(rank1 - union) > 2 / count, (rank0, rank1)
    # One prediction may flip between batchings of the same weights; no more.
    assert abs(reported["accuracy"] - union) <= 1 / count + 1e-6, (reported, union)
    assert reported["loss"] == pytest.approx(losses.mean(), rel=1e-5)
    for half in (losses[0::2], losses[1::2]):
        assert abs(reported["loss"] - half.mean()) > 1e-3
