"""Resume an interrupted run; use the export in a fresh process."""

import io
import os
import subprocess
import time

import numpy as np
import pytest

from helpers import (TINY_IMAGE, assert_nothing_left, kill_session, launch,
                     predict_in_fresh_process, read_json, start_launch)
from recipes import image

pytestmark = pytest.mark.multiprocess


@pytest.mark.timeout(400)
def test_killed_run_resumes_from_its_last_epoch_and_ends_on_plan(tmp_path):
    run_dir = str(tmp_path / "resume")
    steps_per_epoch, epochs = 40, 3
    arguments = ["--recipe=image", "--np=2", f"--run_dir={run_dir}", *TINY_IMAGE,
                 f"--epochs={epochs}",
                 f"--max_steps_per_epoch={steps_per_epoch}"]
    first = start_launch(arguments, output=subprocess.DEVNULL)
    pointer = os.path.join(run_dir, "checkpoints", "checkpoint")
    deadline = time.time() + 240
    while not os.path.exists(pointer) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    # Kill the launcher, horovodrun and both workers as a machine failure would.
    kill_session(first)
    assert os.path.exists(pointer), "the first run never wrote a checkpoint"
    assert not os.path.exists(os.path.join(run_dir, "summary.json")), "killed too late"
    assert_nothing_left(run_dir)

    launch(arguments, timeout=300)  # the same command again
    summary = read_json(os.path.join(run_dir, "summary.json"))
    assert 1 <= summary["resumed_from_epoch"] < epochs
    assert summary["resumed_from_step"] == summary["resumed_from_epoch"] * steps_per_epoch
    assert summary["global_steps"] == summary["planned_global_steps"] == epochs * steps_per_epoch
    assert summary["weights_identical_on_all_ranks"]


def png_bytes(pixels):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


PREDICT = r"""
import json, sys
import numpy as np
import tensorflow as tf
export, images_path = sys.argv[1], sys.argv[2]
model = tf.saved_model.load(export)
stored = np.load(images_path, allow_pickle=False)
encoded = model.signatures["serving_default"](images=tf.constant(list(stored["png"])))
pixels = model.signatures["serving_pixels"](pixels=tf.constant(stored["pixels"]))
print("RESULT " + json.dumps({
    "names": [name.decode() for name in encoded["label"].numpy()],
    "ids": encoded["label_id"].numpy().tolist(),
    "pixel_ids": pixels["label_id"].numpy().tolist(),
    "sums": encoded["probabilities"].numpy().sum(axis=1).tolist(),
    "dtype": encoded["probabilities"].dtype.name}))
"""


@pytest.mark.timeout(700)
def test_export_predicts_on_raw_images_in_a_fresh_process(tmp_path):
    run_dir = str(tmp_path / "export")
    launch(["--recipe=image", "--np=2", f"--run_dir={run_dir}", "--epochs=1",
            "--max_steps_per_epoch=150", "--max_validation_examples=512"], timeout=300)
    images, labels = image.fashion_mnist_split(image.ImageConfig().fashion_mnist_dir, "t10k")
    images, labels = images[:200], labels[:200]
    images_path = str(tmp_path / "images.npz")
    np.savez(images_path, png=np.array([png_bytes(pixels) for pixels in images], dtype=object)
             .astype(bytes), pixels=images[..., None])
    # A fresh interpreter that imports neither the toolkit nor the recipe.
    answer = predict_in_fresh_process(PREDICT, os.path.join(run_dir, "export", "1"),
                                      images_path, cwd=str(tmp_path))
    assert answer["ids"] == answer["pixel_ids"]  # both signatures agree
    assert answer["names"] == [image.FASHION_MNIST_CLASSES[i] for i in answer["ids"]]
    assert np.allclose(answer["sums"], 1.0, atol=1e-4) and answer["dtype"] == "float32"
    accuracy = float(np.mean(np.array(answer["ids"]) == labels))
    # Chance is 0.1; a short run lands around 0.6-0.75.
    assert accuracy > 0.45, f"accuracy {accuracy} on 200 test images after a short run"
    labels_file = read_json(os.path.join(run_dir, "export", "1", "labels.json"))
    assert labels_file["class_names"] == image.FASHION_MNIST_CLASSES
    # The export is a TF Serving base path: resumed for one more epoch, the run exports
    # version 2 beside version 1, which stays as it was.
    first = open(os.path.join(run_dir, "export", "1", "saved_model.pb"), "rb").read()
    launch(["--recipe=image", "--np=2", f"--run_dir={run_dir}", "--epochs=2",
            "--max_steps_per_epoch=150", "--max_validation_examples=512"], timeout=300)
    assert sorted(os.listdir(os.path.join(run_dir, "export"))) == ["1", "2"]
    assert open(os.path.join(run_dir, "export", "1", "saved_model.pb"), "rb").read() == first
    assert read_json(os.path.join(run_dir, "summary.json"))["export"] == os.path.join(
        run_dir, "export", "2")
    assert read_json(os.path.join(run_dir, "export", "2", "labels.json"))["version"] == 2
