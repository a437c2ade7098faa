"""Warm starts (--init_from, --new_head): a new run from an earlier run's weights."""

import os

import numpy as np
import pytest
from PIL import Image

from helpers import TINY_IMAGE, launch, read_json
from recipes import image

# One run of Fashion-MNIST the warm starts start from (built once per session). Without
# label smoothing: this tiny model is far from trained after 120 steps, and smoothing
# moved the warm start's accuracy by more than the 0.01 margin below (0.472 against the
# first run's 0.496, 1,024 examples); what is tested is the warm start, not the loss.
STEPS = 120
SHORT_RUN = ["--recipe=image", "--np=1", "--epochs=1", *TINY_IMAGE, "--export=false",
             "--max_validation_examples=1024", "--label_smoothing=0"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("warm") / "first"
    launch(SHORT_RUN + [f"--run_dir={run_dir}", f"--max_steps_per_epoch={STEPS}"])
    return run_dir


@pytest.mark.timeout(400)
def test_warm_start_reaches_the_earlier_accuracy_in_a_quarter_of_the_steps(tmp_path,
                                                                         finished_run):
    before = read_json(finished_run / "summary.json")
    run_dir = tmp_path / "again"
    launch(SHORT_RUN + [f"--run_dir={run_dir}", f"--max_steps_per_epoch={STEPS // 4}",
                        f"--init_from={finished_run}"])
    after = read_json(run_dir / "summary.json")
    assert after["global_steps"] == STEPS // 4
    assert after["validation"]["accuracy"] >= before["validation"]["accuracy"] - 0.01, (
        before["validation"], after["validation"])
    config = read_json(run_dir / "config.json")
    assert config["init_from"]["checkpoint"].startswith(str(finished_run / "checkpoints"))
    assert config["init_from"]["new_head"] is False
    # The control: the same quarter of the steps from scratch stays well below.
    scratch = tmp_path / "scratch"
    launch(SHORT_RUN + [f"--run_dir={scratch}", f"--max_steps_per_epoch={STEPS // 4}"])
    assert (read_json(scratch / "summary.json")["validation"]["accuracy"]
            < before["validation"]["accuracy"] - 0.02)


def subset_folder(root, names, per_class=200):
    """Fashion-MNIST test images of ``names`` as PNG class folders."""
    pixels, labels = image.fashion_mnist_split(image.ImageConfig().fashion_mnist_dir, "t10k")
    for name in names:
        os.makedirs(root / name)
        members = np.flatnonzero(labels == image.FASHION_MNIST_CLASSES.index(name))
        for index in members[:per_class]:
            Image.fromarray(pixels[index]).save(root / name / f"{index}.png")


@pytest.mark.timeout(400)
def test_new_head_for_a_subset_of_classes(tmp_path, finished_run):
    names = ["bag", "sneaker", "trouser"]
    subset_folder(tmp_path / "data", names)
    arguments = ["--recipe=image", "--np=1", "--epochs=3", *TINY_IMAGE,
                 f"--data_dir={tmp_path / 'data'}", f"--init_from={finished_run}",
                 f"--cache_dir={tmp_path / 'cache'}"]
    refused = launch(arguments + [f"--run_dir={tmp_path / 'refused'}"], check=False)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "was trained on other classes" in refused.stderr
    assert "not here: ['t-shirt/top', 'pullover', 'dress', 'coat', 'sandal', 'shirt', " \
           "'ankle boot']" in refused.stderr
    assert "--new_head=true" in refused.stderr
    run_dir = tmp_path / "subset"
    launch(arguments + [f"--run_dir={run_dir}", "--new_head=true"])
    assert read_json(run_dir / "export" / "1" / "labels.json")["class_names"] == names
    init = read_json(run_dir / "config.json")["init_from"]
    assert init["new_head"] is True and init["classes_of_checkpoint"] == (
        image.FASHION_MNIST_CLASSES)
    # Everything but the head (2 of the model's floating-point variables) came from the
    # earlier run.
    assert init["variables_taken"] > 2
    assert read_json(run_dir / "summary.json")["validation"]["accuracy"] > 0.8


@pytest.mark.fast
def test_refusals_before_launch(tmp_path, capsys):
    from toolkit import errors
    from toolkit.launcher import launch as launch_lib

    def refused(arguments, *fragments):
        assert launch_lib.main(arguments) == errors.USER_ERROR_EXIT_CODE
        message = capsys.readouterr().err
        for fragment in fragments:
            assert fragment in message, message

    refused(["--recipe=image", f"--run_dir={tmp_path}/r", f"--init_from={tmp_path}/none"],
            f"init_from={tmp_path}/none: no checkpoint there")
    other = tmp_path / "speech-run"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    (other / "checkpoints" / "ckpt-1.index").write_bytes(b"")
    (other / "config.json").write_text('{"recipe": "speech", "class_names": ["yes", "no"]}')
    refused(["--recipe=image", f"--run_dir={tmp_path}/r", f"--init_from={other}"],
            "is a run of recipe 'speech'; this run is 'image'")
