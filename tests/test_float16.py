"""The GPU precision path (float16, a dynamic loss scale, Horovod's DistributedOptimizer
inside tf_keras' LossScaleOptimizer), run on CPU workers exactly as a GPU run builds it:
``mixed_precision_type=float16`` forces it where ``auto`` would pick bfloat16."""

import os

import pytest
import tensorflow as tf

from helpers import (TINY_IMAGE, event_steps, faults, kill_after_checkpoint, launch,
                     predict_in_fresh_process, read_json)

pytestmark = pytest.mark.multiprocess

LOSS_SCALE = "optimizer/loss_scale/current_loss_scale/.ATTRIBUTES/VARIABLE_VALUE"

OUTPUT_TYPES = r"""
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
outputs = model.signatures["serving_pixels"](pixels=tf.zeros([2, 28, 28, 1], tf.uint8))
print("RESULT " + json.dumps({name: value.dtype.name for name, value in outputs.items()}))
"""


@pytest.mark.timeout(600)
def test_float16_with_loss_scaling_skips_overflows_together_and_resumes_its_scale(tmp_path):
    """Rank 1's loss spikes at step 3, so its scaled float16 gradients overflow: every
    rank must skip that update and halve the loss scale (the NaN guard stays out of it).
    The run is killed after a later checkpoint and resumed: the scale must come back
    from the checkpoint, on every rank (a rank left at the initial scale would average
    gradients scaled differently, and the ranks' weights would part)."""
    run_dir = str(tmp_path / "float16")
    arguments = ["--recipe=image", "--np=2", *TINY_IMAGE, "--mixed_precision=true",
                 "--mixed_precision_type=float16", "--epochs=2", "--max_steps_per_epoch=8",
                 "--checkpoint_every_steps=4", "--checkpoints_to_keep=5", "--log_every_steps=1"]
    spike = faults(overflow_at_step=3, overflow_rank=1)
    kill_after_checkpoint(arguments, run_dir, step=4, env=spike)
    launch(arguments + [f"--run_dir={run_dir}"], env=spike)

    summary = read_json(os.path.join(run_dir, "summary.json"))
    resumed = summary["resumed_from_step"]
    assert 4 <= resumed < 16
    assert summary["global_steps"] == summary["planned_global_steps"] == 16
    assert summary["nonfinite_steps_skipped"] == 0
    assert summary["weights_identical_on_all_ranks"]
    scales = event_steps(run_dir, "train", "step/loss_scale")
    assert scales[3] == scales[2] / 2, scales
    saved = float(tf.train.load_checkpoint(
        os.path.join(run_dir, "checkpoints", f"ckpt-{resumed}")).get_tensor(LOSS_SCALE))
    assert saved <= scales[3] < 2 ** 15, (saved, scales)
    # The first step after the resume (the killed run may not have logged the step of
    # its checkpoint) trains with the saved scale, not the initial 2 ** 15.
    assert scales[resumed + 1] == saved, (resumed, saved, scales)
    assert summary["loss_scale"] == scales[16]
    types = predict_in_fresh_process(OUTPUT_TYPES, os.path.join(run_dir, "export", "1"),
                                     cwd=str(tmp_path))
    assert set(types.values()) <= {"float32", "int64", "int32", "string"}, types
    assert types["probabilities"] == "float32"
