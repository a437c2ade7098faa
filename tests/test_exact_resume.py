"""A run killed at a chosen step and rerun ends with the same weights, bit for bit.

The kill point is drawn from a seeded generator: the seed is printed, and
``TOOLKIT_TEST_SEED=<seed>`` replays a failure exactly.
"""

import os
import random

import pytest

from helpers import kill_after_checkpoint, launch, read_json, tiny_arguments

pytestmark = pytest.mark.multiprocess

SEED = int(os.environ.get("TOOLKIT_TEST_SEED", random.SystemRandom().randrange(10 ** 6)))


def kill_point(choices):
    print(f"kill point drawn with TOOLKIT_TEST_SEED={SEED}")
    return random.Random(SEED).choice(choices)


def assert_resumed_identically(arguments, tmp_path, steps_per_epoch, epochs, choices):
    reference = str(tmp_path / "uninterrupted")
    launch(arguments + [f"--run_dir={reference}"], timeout=300)
    expected = read_json(os.path.join(reference, "summary.json"))

    step = kill_point(choices)
    run_dir = str(tmp_path / "killed")
    kill_after_checkpoint(arguments, run_dir, step)
    launch(arguments + [f"--run_dir={run_dir}"], timeout=300)
    resumed = read_json(os.path.join(run_dir, "summary.json"))
    assert resumed["resumed_from_step"] >= step
    assert resumed["resumed_from_step"] % steps_per_epoch != 0, "resume was not mid-epoch"
    assert resumed["global_steps"] == expected["global_steps"] == epochs * steps_per_epoch
    assert resumed["weights_identical_on_all_ranks"]
    # Bit for bit: the SHA-256 of every weight of the model.
    assert resumed["weights_sha256"] == expected["weights_sha256"], (
        f"killed after step {step} (TOOLKIT_TEST_SEED={SEED}), resumed from "
        f"{resumed['resumed_from_step']}")


@pytest.mark.timeout(600)
def test_image_run_with_gradient_accumulation_killed_mid_epoch_then_rerun_gives_identical_weights(
        tmp_path):
    """Batch norm, augmentation and gradients accumulated over 2 batches (checkpoints fall
    between updates; the BERT test below covers runs without accumulation)."""
    steps_per_epoch, epochs, every = 20, 2, 4
    arguments = ["--recipe=image", "--np=2", "--deterministic=true", f"--epochs={epochs}",
                 f"--max_steps_per_epoch={steps_per_epoch}", "--backward_passes_per_step=2",
                 f"--checkpoint_every_steps={every}", "--max_validation_examples=256",
                 "--batch_size_per_worker=32", "--export=false"]
    # Mid-epoch checkpoints whose successor is also mid-epoch, so a kill that overshoots by
    # one checkpoint still resumes mid-epoch.
    assert_resumed_identically(arguments, tmp_path, steps_per_epoch, epochs,
                               choices=[4, 8, 24, 28])


@pytest.mark.timeout(600)
def test_bert_with_dropout_killed_mid_epoch_then_rerun_gives_identical_weights(tmp_path):
    """Dropout draws random masks every step: the seeded generators live in variables,
    are checkpointed, and a resumed run draws the masks the uninterrupted one drew."""
    steps_per_epoch, epochs, every = 12, 1, 4
    arguments = ["--recipe=bert", "--np=2", "--deterministic=true", *tiny_arguments("bert"),
                 f"--epochs={epochs}", f"--max_steps_per_epoch={steps_per_epoch}",
                 f"--checkpoint_every_steps={every}", "--export=false"]
    # Checkpoints at steps 4 and 8 (12 ends the run): a kill after 4 resumes mid-epoch
    # from 4 or, overshooting by one, from 8.
    assert_resumed_identically(arguments, tmp_path, steps_per_epoch, epochs, choices=[4])
