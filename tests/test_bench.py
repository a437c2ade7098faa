"""make bench's tool produces its report from real (tiny) measurements."""

import json
import os

import pytest

from helpers import PYTHON, run

pytestmark = pytest.mark.multiprocess


@pytest.mark.timeout(600)
def test_bench_measures_every_configuration_and_writes_its_report(tmp_path):
    result = run([PYTHON, "-m", "toolkit.launcher.bench", "--recipe=image", "--np=1 2",
                  "--repeats=1", "--steps=3", "--warmup=2", f"--output_root={tmp_path}",
                  "--width=8", "--stages=2", "--batch_size_per_worker=32"], timeout=580)
    [folder] = os.listdir(tmp_path / "image")
    directory = tmp_path / "image" / folder
    for name in ("results.json", "report.md", "scaling.png"):
        assert (directory / name).stat().st_size > 0, name
    assert os.listdir(directory / "tensorboard")
    results = json.loads((directory / "results.json").read_text())
    names = {row["name"] for row in results["rows"]}
    assert names == {"ours-synthetic-np1", "ours-synthetic-np2", "ours-real-np1",
                     "ours-real-np2", "ours-synthetic-np1-allcores",
                     "plain-keras-synthetic-np1", "mwms-synthetic-np2", "pipeline-real-np2"}
    for row in results["rows"]:
        assert "error" not in row, row
        assert row["samples_per_second"] > 0 and len(results["raw"][row["name"]]) == 1
        # The timed steps are the ones asked for, not the warm-up.
        assert len(results["raw"][row["name"]][0]["step_seconds"]) == 3
    efficiency = next(row for row in results["rows"]
                      if row["name"] == "ours-synthetic-np2")["scaling_efficiency"]
    assert 0 < efficiency < 2
    assert set(results["ratios"]) == {"toolkit_vs_plain_keras_np1", "scaling_efficiency_np2",
                                      "toolkit_vs_multiworker_mirrored_np2",
                                      "pipeline_vs_model_rate"}
    report = (directory / "report.md").read_text()
    assert "| scaling_efficiency_np2 |" in report and ">= 0.85" in report
    assert "samples/s" in result.stdout
