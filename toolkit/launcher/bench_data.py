"""``make bench-data``: the data path at real sizes, measured.

    python -m toolkit.launcher.bench_data [--images=200000] [--records=1000000]
                                          [--repeats=3] [--baseline=COMMIT]

Generates, once, in ``.cache/bench-data/``: an image folder of ``images`` small PNG files
in 100 classes, and a TFRecord set of 64 files holding ``records`` records (the same kind
of images). Then, for both sources, with the image recipe's default model:

* time from launch to the end of the first training step, at NP=1 and NP=2: a first run
  that scans the source (its manifest deleted) and ``repeats`` runs that read the
  manifest;
* time to the first step when resuming a long plan (90 epochs) at 1 % and at 90 % of it:
  a real checkpoint of that plan whose step counters are moved to those points, so that
  everything the resume does (the position arithmetic, opening files there) is real;
* peak resident memory per worker (summary.json of the NP=2 manifest runs);
* samples/s of one worker's input pipeline against the model's own step rate on one core
  (synthetic data), as in make bench: real files read with ``--cache=none`` (every
  example read and decoded from its file, as in a first epoch or a run too big to
  cache), decoding and augmentation, for both sources.

With ``--baseline=COMMIT`` the launch-to-first-step runs are repeated with that commit's
code (exported with git archive), each bounded by ``--bound`` seconds: the before/after.
Times are from the bench's clock: from starting ``python -m toolkit.launcher.launch`` to
the chief's "first training step done" line (for the baseline, its first progress line).

Results: ``bench/data/<time>/results.json`` and ``report.md``.
"""

import argparse
import datetime
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import toolkit
from toolkit.launcher import bench as bench_lib

PROJECT_ROOT = toolkit.PROJECT_ROOT
CLASSES = 100
TFRECORD_FILES = 64
TARGETS = {"manifest_start_seconds": 20.0, "resume_late_vs_early": 1.5,
           "pipeline_vs_model_rate": 3.0, "peak_rss_mb": 2048.0}
# Short runs: the time to the first step is what is measured.
RUN_ARGS = ["--epochs=1", "--max_steps_per_epoch=4", "--max_validation_examples=256",
            "--export=false", "--confusion_matrix=false", "--log_every_steps=1"]
LONG_PLAN_ARGS = ["--epochs=90", "--max_validation_examples=256", "--export=false",
                  "--confusion_matrix=false", "--log_every_steps=1",
                  "--checkpoint_every_steps=2"]


# ------------------------------------------------------------------- the data sets


def _encoded_images(count, seed=0):
    """``count`` distinct 28x28 grey PNG files per class, as bytes: a class's images
    share a brightness pattern, so the model has something to learn."""
    import io

    from PIL import Image

    generator = np.random.default_rng(seed)
    images = {}
    for label in range(CLASSES):
        base = generator.integers(0, 256, size=(7, 7))
        for variant in range(count):
            pixels = np.kron(base, np.ones((4, 4))) + generator.normal(0, 20, size=(28, 28))
            stream = io.BytesIO()
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(stream, "PNG")
            images[label, variant] = stream.getvalue()
    return images


def make_folder(root, count):
    """An image folder of ``count`` PNG files in CLASSES class folders (made once)."""
    directory = os.path.join(root, f"folder-{count}")
    if os.path.exists(os.path.join(directory, ".complete")):
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    images = _encoded_images(20)
    for index in range(count):
        label = index % CLASSES
        folder = os.path.join(directory, f"class-{label:03d}")
        if index < CLASSES:
            os.makedirs(folder)
        with open(os.path.join(folder, f"{index:07d}.png"), "wb") as stream:
            stream.write(images[label, index // CLASSES % 20])
    open(os.path.join(directory, ".complete"), "w").close()
    return directory


def make_records(root, count):
    """A TFRecord set of TFRECORD_FILES files holding ``count`` records, and a small
    validation set (made once). Returns the two globs."""
    import tensorflow as tf

    directory = os.path.join(root, f"records-{count}")
    if not os.path.exists(os.path.join(directory, ".complete")):
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        images = _encoded_images(20, seed=1)

        def serialized(label, variant):
            return tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[images[label, variant]])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                    value=[label]))})).SerializeToString()

        records = {key: serialized(*key) for key in images}
        per_file = count // TFRECORD_FILES
        generator = np.random.default_rng(2)
        for file_index in range(TFRECORD_FILES):
            labels = generator.integers(0, CLASSES, size=per_file + (
                file_index < count % TFRECORD_FILES))
            variants = generator.integers(0, 20, size=len(labels))
            path = os.path.join(directory, f"train-{file_index:05d}-of-{TFRECORD_FILES:05d}")
            with tf.io.TFRecordWriter(path) as writer:
                for label, variant in zip(labels, variants):
                    writer.write(records[int(label), int(variant)])
        with tf.io.TFRecordWriter(os.path.join(directory, "validation-00000")) as writer:
            for label in range(CLASSES):
                for variant in range(10):
                    writer.write(records[label, variant])
        open(os.path.join(directory, ".complete"), "w").close()
    return (os.path.join(directory, "train-*"), os.path.join(directory, "validation-*"))


# --------------------------------------------------------------------- one launch


def launch(arguments, run_dir, workers, *, stop_at_first_step=False, code_dir=PROJECT_ROOT,
           bound=900, first_line="[toolkit] first training step done"):
    """Start a training run; return seconds to the chief's ``first_line`` (None if it
    never came within ``bound``), and the summary.json when the run was let finish."""
    command = [sys.executable, "-m", "toolkit.launcher.launch", "--recipe=image",
               f"--np={workers}", f"--run_dir={run_dir}", *arguments]
    environment = dict(os.environ, PYTHONPATH=code_dir)
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=code_dir, env=environment, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    seconds, tail = None, []
    deadline = started + bound
    try:
        for line in process.stdout:
            tail = (tail + [line])[-30:]
            if seconds is None and first_line in line:
                seconds = time.monotonic() - started
                if stop_at_first_step:
                    break
            if time.monotonic() > deadline:
                break
    finally:
        if process.poll() is None and (stop_at_first_step or time.monotonic() > deadline):
            stop(process)
        process.wait()
    summary = None
    summary_path = os.path.join(run_dir, "summary.json")
    if not stop_at_first_step and process.returncode == 0 and os.path.exists(summary_path):
        with open(summary_path) as stream:
            summary = json.load(stream)
    failed = None
    if seconds is None:
        failed = f"no first step within {bound} s (exit {process.returncode}): " + "".join(tail)
    return {"seconds": seconds, "summary": summary, "error": failed}


def stop(process):
    """Kill the launcher and everything it started (horovodrun starts the workers in
    sessions of their own, so the launcher's process group does not hold them)."""
    import psutil

    try:
        family = [psutil.Process(process.pid)]
        family += family[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


def move_checkpoint(run_dir, global_step, steps_per_epoch):
    """Rewrite the run's newest checkpoint as if taken at ``global_step``: its step
    counter and completed epochs change, everything else stays as it was written."""
    import tensorflow as tf

    prefix = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    reader = tf.train.load_checkpoint(prefix)
    names = sorted(reader.get_variable_to_dtype_map())
    values = {name: reader.get_tensor(name) for name in names}
    values["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] = np.int64(global_step)
    values["epochs_done/.ATTRIBUTES/VARIABLE_VALUE"] = np.int64(global_step // steps_per_epoch)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(values[name]) for name in names])


# -------------------------------------------------------------------- the measures


def startup(source, arguments, workers_list, repeats, cache_dir, work):
    """First (scanning) and later (manifest) launches at each NP."""
    rows = []
    for workers in workers_list:
        shutil.rmtree(os.path.join(cache_dir, "manifests"), ignore_errors=True)
        first = launch(arguments + RUN_ARGS, os.path.join(work, f"{source}-scan-{workers}"),
                       workers)
        again = [launch(arguments + RUN_ARGS,
                        os.path.join(work, f"{source}-manifest-{workers}-{repeat}"), workers)
                 for repeat in range(repeats)]
        rows.append({"source": source, "workers": workers, "scan_seconds": first["seconds"],
                     "manifest_seconds": [run["seconds"] for run in again],
                     "peak_rss_mb_per_rank": [run["summary"]["peak_rss_mb_per_rank"]
                                              for run in again if run["summary"]],
                     "errors": [run["error"] for run in [first] + again if run["error"]]})
    return rows


def resume_cost(source, arguments, workers, repeats, work):
    """Time to the first step resuming a 90-epoch plan at 1 % and at 90 % of it."""
    seed_dir = os.path.join(work, f"{source}-long-plan")
    # Stopped at step 3: the checkpoint of step 2 is complete by then.
    started = launch(arguments + LONG_PLAN_ARGS, seed_dir, workers, bound=900,
                     stop_at_first_step=True, first_line="step 3/")
    with open(os.path.join(seed_dir, "config.json")) as stream:
        steps_per_epoch = json.load(stream)["steps_per_epoch"]
    plan = 90 * steps_per_epoch
    result = {"source": source, "workers": workers, "planned_steps": plan,
              "errors": [started["error"]] if started["error"] else []}
    for name, fraction in (("early", 0.01), ("late", 0.90)):
        step = int(plan * fraction) // 2 * 2
        times = []
        for repeat in range(repeats):
            run_dir = os.path.join(work, f"{source}-resume-{name}-{repeat}")
            shutil.copytree(seed_dir, run_dir)
            move_checkpoint(run_dir, step, steps_per_epoch)
            run = launch(arguments + LONG_PLAN_ARGS, run_dir, workers, stop_at_first_step=True)
            times.append(run["seconds"])
            if run["error"]:
                result["errors"].append(run["error"])
        result[f"{name}_step"], result[f"{name}_seconds"] = step, times
    return result


def pipeline_rate(sources, repeats):
    """Samples/s of one of two workers' input pipelines (each source, streamed from its
    files), and of the model on one core."""
    def options(arguments):
        return argparse.Namespace(recipe="image", warmup=20, steps=100, overrides=dict(
            argument.split("=", 1) for argument in arguments + ["--cache=none"]))

    pipeline = {"mode": "pipeline", "data": "real", "np": 2, "threads": 1, "pin": True}
    model = {"mode": "plain", "data": "synthetic", "np": 1, "threads": 1, "pin": True}
    rates = {"model": [], **{source: [] for source in sources}}
    for _ in range(repeats):
        for kind, arguments in sources.items():
            rates[kind].append(measured_rate(options(arguments), pipeline))
        rates["model"].append(measured_rate(options(sources["folder"]), model))
    return rates


def measured_rate(options, spec):
    result = bench_lib.run_measurement(options, spec)
    return None if "error" in result else bench_lib.samples_per_second(result)


def baseline_startup(commit, source, arguments, workers, bound, work):
    """Launch to first step with the code of ``commit`` (no manifests there)."""
    code_dir = os.path.join(work, f"code-{commit}")
    if not os.path.isdir(code_dir):
        os.makedirs(code_dir)
        archive = subprocess.run(["git", "-C", PROJECT_ROOT, "archive", commit],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", code_dir], input=archive, check=True)
        os.symlink(os.path.join(PROJECT_ROOT, ".venv"), os.path.join(code_dir, ".venv"))
    run = launch(arguments + RUN_ARGS, os.path.join(work, f"{source}-baseline-{workers}"),
                 workers, code_dir=code_dir, bound=bound, first_line="step 1/")
    return {"source": source, "workers": workers, "commit": commit,
            "seconds": run["seconds"], "bound": bound}


# -------------------------------------------------------------------------- report


def spread(values):
    if not values:
        return "not measured"
    values = [value for value in values if value is not None]
    if not values:
        return "failed"
    return (f"{statistics.median(values):.1f} ({min(values):.1f}..{max(values):.1f}, "
            f"n={len(values)})")


def analyse(results):
    ratios, checks = {}, []
    for row in results["startup"]:
        times = [value for value in row["manifest_seconds"] if value is not None]
        if times:
            ratios[f"manifest_start_seconds_{row['source']}_np{row['workers']}"] = max(times)
            checks.append((f"{row['source']} NP={row['workers']} start with the manifest "
                           "(slowest run)", max(times), "<=",
                           TARGETS["manifest_start_seconds"]))
        peaks = [peak for run in row["peak_rss_mb_per_rank"] for peak in run]
        if peaks:
            checks.append((f"{row['source']} NP={row['workers']} peak RSS per worker, MB",
                           max(peaks), "<=", TARGETS["peak_rss_mb"]))
    for source in ("folder", "tfrecords"):
        medians = {row["workers"]: statistics.median(
            [value for value in row["manifest_seconds"] if value is not None] or [np.inf])
            for row in results["startup"] if row["source"] == source}
        if 1 in medians and 2 in medians:
            checks.append((f"{source}: NP=2 start vs NP=1 (medians)", medians[2] / medians[1],
                           "<=", 1.0))
    late_vs_early = []
    for row in results["resume"]:
        early = [value for value in row["early_seconds"] if value is not None]
        late = [value for value in row["late_seconds"] if value is not None]
        if early and late:
            ratio = statistics.median(late) / statistics.median(early)
            late_vs_early.append(ratio)
            checks.append((f"{row['source']}: resume at 90 % vs 1 % (medians)", ratio, "<=",
                           TARGETS["resume_late_vs_early"]))
    if late_vs_early:
        ratios["resume_late_vs_early"] = max(late_vs_early)
    rates = results["pipeline"]
    pipeline_ratios = []
    for source in ("folder", "tfrecords"):
        if all(rates.get(source) or [None]) and all(rates["model"]):
            ratio = statistics.median(rates[source]) / statistics.median(rates["model"])
            pipeline_ratios.append(ratio)
            checks.append((f"{source} pipeline vs model samples/s (medians)", ratio, ">=",
                           TARGETS["pipeline_vs_model_rate"]))
    if pipeline_ratios:
        ratios["pipeline_vs_model_rate"] = min(pipeline_ratios)
    return ratios, checks


def write_report(directory, results, ratios, checks):
    met = lambda value, op, target: value <= target if op == "<=" else value >= target  # noqa: E731
    lines = [f"# make bench-data, {results['started']}", "",
             f"Machine: {os.cpu_count()} CPU cores, no GPU. Sources: {results['sources']}.",
             "Seconds from starting the launcher to the chief's first finished training step;",
             "median (min..max, n).", "", "## Start-up", "",
             "| source | NP | first run (scans) | later runs (manifest) | peak RSS/worker MB |",
             "|---|---|---|---|---|"]
    for row in results["startup"]:
        peaks = [peak for run in row["peak_rss_mb_per_rank"] for peak in run]
        lines.append(f"| {row['source']} | {row['workers']} | {spread([row['scan_seconds']])} "
                     f"| {spread(row['manifest_seconds'])} | "
                     f"{max(peaks) if peaks else 'n/a'} |")
    if results.get("baseline"):
        lines += ["", "## Before: the same launch with the earlier code", "",
                  "| source | NP | commit | seconds to the first step |", "|---|---|---|---|"]
        for row in results["baseline"]:
            seconds = (f"{row['seconds']:.1f}" if row["seconds"] is not None
                       else f"not reached within {row['bound']} s")
            lines.append(f"| {row['source']} | {row['workers']} | {row['commit']} | {seconds} |")
    lines += ["", "## Resuming a 90-epoch plan", "",
              "| source | NP | planned steps | at 1 % | at 90 % |", "|---|---|---|---|---|"]
    for row in results["resume"]:
        lines.append(f"| {row['source']} | {row['workers']} | {row['planned_steps']} | "
                     f"step {row['early_step']}: {spread(row['early_seconds'])} | "
                     f"step {row['late_step']}: {spread(row['late_seconds'])} |")
    rates = results["pipeline"]
    lines += ["", "## Input pipeline vs model (samples/s, one worker of two, one core)", "",
              "Read from the files with --cache=none, decoded and augmented:", "",
              f"- pipeline, image folder: {spread(rates['folder'])}",
              f"- pipeline, TFRecords: {spread(rates['tfrecords'])}",
              f"- model step rate, synthetic data: {spread(rates['model'])}", "",
              "## Targets", "", "| check | measured | target | met |", "|---|---|---|---|"]
    for name, value, op, target in checks:
        lines.append(f"| {name} | {value:.2f} | {op} {target} | "
                     f"{'yes' if met(value, op, target) else 'NO'} |")
    errors = [error for row in results["startup"] + results["resume"] for error in row["errors"]]
    if errors:
        lines += ["", "## Errors", "", *[f"```\n{error[-1500:]}\n```" for error in errors]]
    with open(os.path.join(directory, "report.md"), "w") as stream:
        stream.write("\n".join(lines) + "\n")
    with open(os.path.join(directory, "results.json"), "w") as stream:
        json.dump(dict(results, ratios=ratios, targets=TARGETS), stream, indent=2)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m toolkit.launcher.bench_data",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default="", help="a commit to compare start-up with")
    parser.add_argument("--bound", type=int, default=600, help="seconds, baseline runs")
    parser.add_argument("--parts", default="startup,resume,pipeline",
                        help="which measurements (comma-separated): startup, resume, pipeline")
    parser.add_argument("--output_root", default=os.path.join(PROJECT_ROOT, "bench"))
    options = parser.parse_args(argv)
    root = os.path.join(PROJECT_ROOT, ".cache", "bench-data")
    print(f"generating (once) {options.images:,} images and {options.records:,} records "
          f"in {root}", flush=True)
    folder = make_folder(root, options.images)
    train_files, validation_files = make_records(root, options.records)
    cache_dir = os.path.join(root, "toolkit-cache")
    # The model's input stays 28 x 28 grey, as in the measurements before the size and
    # channels could come from the data.
    common = [f"--cache_dir={cache_dir}", "--image_size=28", "--channels=1"]
    sources = {"folder": common + [f"--data_dir={folder}"],
               "tfrecords": common + [f"--train_files={train_files}",
                                      f"--validation_files={validation_files}",
                                      f"--num_classes={CLASSES}"]}
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    directory = os.path.join(options.output_root, "data", stamp)
    os.makedirs(directory)
    work = tempfile.mkdtemp(prefix="bench-data-")
    results = {"started": stamp, "sources": {"folder": f"{options.images:,} PNG files, "
                                             f"{CLASSES} classes",
                                             "tfrecords": f"{options.records:,} records in "
                                             f"{TFRECORD_FILES} files"},
               "startup": [], "resume": [], "baseline": []}
    parts = set(options.parts.split(","))
    results["pipeline"] = {"model": [], **{source: [] for source in sources}}
    try:
        for source, arguments in sources.items():
            if "startup" in parts:
                print(f"start-up: {source}", flush=True)
                results["startup"] += startup(source, arguments, [1, 2], options.repeats,
                                              cache_dir, work)
            if "resume" in parts:
                print(f"resume: {source}", flush=True)
                results["resume"].append(resume_cost(source, arguments, 2, options.repeats,
                                                     work))
        if "pipeline" in parts:
            print("pipeline rate", flush=True)
            results["pipeline"] = pipeline_rate(sources, options.repeats)
        if options.baseline:
            for source, arguments in sources.items():
                print(f"baseline: {source}", flush=True)
                results["baseline"].append(baseline_startup(
                    options.baseline, source, [a for a in arguments if "cache_dir" not in a],
                    2, options.bound, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios, checks = analyse(results)
    write_report(directory, results, ratios, checks)
    bench_lib.show_report(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
