"""make bench's tool produces its report from real (tiny) measurements."""

import json
import os

import pytest

from helpers import PYTHON, TINY_IMAGE, launch, run

pytestmark = pytest.mark.multiprocess


@pytest.mark.timeout(600)
def test_bench_measures_every_configuration_and_writes_its_report(tmp_path):
    result = run([PYTHON, "-m", "toolkit.launcher.bench", "--recipe=image", "--np=1 2",
                  "--repeats=1", "--steps=3", "--warmup=2", f"--output_root={tmp_path}",
                  "--local_sgd=2",
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
                     "plain-keras-synthetic-np1", "mwms-synthetic-np2", "pipeline-real-np2",
                     "ours-synthetic-local_sgd-np1", "ours-synthetic-local_sgd-np2"}
    for row in results["rows"]:
        assert "error" not in row, row
        assert row["samples_per_second"] > 0 and len(results["raw"][row["name"]]) == 1
        # The timed steps are the ones asked for, not the warm-up.
        assert len(results["raw"][row["name"]][0]["step_seconds"]) == 3
    # Ours and its peers compute in one precision (the toolkit's choice for this machine).
    precisions = {results["raw"][row["name"]][0]["precision"] for row in results["rows"]
                  if not row["name"].startswith("pipeline")}
    assert len(precisions) == 1, precisions
    efficiency = next(row for row in results["rows"]
                      if row["name"] == "ours-synthetic-np2")["scaling_efficiency"]
    assert 0 < efficiency < 2
    assert set(results["ratios"]) == {"toolkit_vs_plain_keras_np1", "scaling_efficiency_np2",
                                      "toolkit_vs_multiworker_mirrored_np2",
                                      "pipeline_vs_model_rate",
                                      "scaling_efficiency_local_sgd_np2"}
    report = (directory / "report.md").read_text()
    assert "| scaling_efficiency_np2 |" in report and ">= 0.85" in report
    assert "samples/s" in result.stdout
    # The projection: checked against the published points, then drawn from this model.
    projected = results["projection"]
    base = next(row for row in results["rows"] if row["name"] == "ours-synthetic-np1")
    assert not projected["withheld"] and len(projected["validation"]) == 3
    assert projected["inputs"]["compute_ms"] == base["step_ms_mean"]
    # Batch-norm statistics are weights but not gradients.
    assert 0 < projected["inputs"]["gradient_bytes"] < projected["inputs"]["weight_bytes"]
    assert len(projected["rows"]) == 3 * 4 * 3  # GPUs x networks x modes
    assert all(0 < row["efficiency"] <= 1 for row in projected["rows"])
    assert "## Projection to 8-512 GPUs" in report and "| VGG-16 | 512 |" in report
    assert "| 512 | 25 Gb/s |" in report
    assert (directory / "projection.png").stat().st_size > 0


@pytest.mark.timeout(600)
def test_bench_serve_loads_the_server_both_ways_and_writes_its_report(tmp_path):
    run_dir = tmp_path / "image-run"
    launch(["--recipe=image", "--np=1", f"--run_dir={run_dir}", "--epochs=1",
            "--max_steps_per_epoch=4", *TINY_IMAGE])
    result = run([PYTHON, "-m", "toolkit.launcher.bench_serve", "--recipes=image",
                  f"--model=image={run_dir}", "--concurrency=1,4", "--requests=30",
                  "--seconds=60", "--repeats=1", f"--output_root={tmp_path}"], timeout=500)
    [folder] = os.listdir(tmp_path / "serve")
    directory = tmp_path / "serve" / folder
    results = json.loads((directory / "results.json").read_text())
    assert results["models"]["image"]["export"] == str(run_dir / "export" / "1")
    for mode in ("on", "off"):
        for level in ("1", "4"):
            [row] = results["load"][mode]["image"][level]
            # The timed requests are the ones asked for, every one answered.
            assert row["answered"] == 30 and row["errors"] == 0, row
            assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
            assert row["requests_per_second"] > 0
    assert results["rows_per_call"]["off"] == [1.0]
    [direct] = results["direct"]["image"]
    assert direct["answered"] == 30 and direct["p99_ms"] > 0
    checks = {check["check"]: check for check in results["checks"]}
    assert checks["errors (any answer but 200), all runs"]["measured"] == 0
    report = (directory / "report.md").read_text()
    assert "| image | on | 4 |" in report and "| image | off | 1 |" in report
    assert "p99 at concurrency 1" in report
    assert set(results["p99_c1_vs_direct_without_target"]) == {"image"}


def test_bench_serve_refuses_an_unknown_recipe(tmp_path):
    result = run([PYTHON, "-m", "toolkit.launcher.bench_serve", "--recipes=imagenet",
                  f"--output_root={tmp_path}"], timeout=60, check=False)
    assert result.returncode == 2 and "recipes must be among" in result.stderr
    assert not os.path.exists(tmp_path / "serve")
