"""``make bench-serve``: ``make serve`` under closed-loop load, measured.

    python -m toolkit.launcher.bench_serve [--recipes=bert,image,speech]
        [--model=RECIPE=RUN_DIR ...] [--concurrency=1,8,32] [--requests=400]
        [--seconds=20] [--repeats=3]

The model of each recipe: ``--model``, else the newest run under ``runs/<recipe>/`` that
has an export, else a short run of the recipe's default configuration, trained once into
``.cache/bench-serve/<recipe>/`` (a few steps: what a request costs depends on the model's
architecture and the input, not on how far its weights are trained; delete the folder to
train it again).

The requests carry one example each, from the recipe's built-in data set: WordNet
definitions (BERT, strings), Fashion-MNIST test images as PNG files (image, base64), the
generated test clips as float waveforms (speech). They are sent by this process over
loopback, as JSON in TF Serving's row format, to one ``make serve`` process serving every
recipe's model on a free port, started twice per repeat: with batching
(``--max_batch_size=32``) and without (``--max_batch_size=1``). At each concurrency C,
C clients each send their next request as soon as the last is answered (a closed loop):
2 x C untimed requests first, then until ``--requests`` are answered or ``--seconds``
pass. Measured: requests/s, latency percentiles, errors (any answer but 200).

The baseline: the same requests, one at a time, through the SavedModel's
``serving_default`` loaded in this process (no HTTP, no JSON), with nothing else running.

Client and server share this machine's cores, so the figures are a floor for a server
with a machine of its own. Results: ``bench/serve/<time>/results.json`` and ``report.md``.
"""

import argparse
import asyncio
import base64
import datetime
import glob
import io
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

import toolkit
from toolkit import log_noise
from toolkit.launcher import bench as bench_lib

PROJECT_ROOT = toolkit.PROJECT_ROOT
RECIPES = ("bert", "image", "speech")
BATCHING = {"on": ["--max_batch_size=32"], "off": ["--max_batch_size=1"]}
TARGETS = {"bert_batched_vs_unbatched_c32": 2.0, "bert_p99_c1_vs_direct": 1.5}
# A short run of the default configuration when no trained model is given or found.
SHORT_RUN = ["--np=1", "--epochs=1", "--max_steps_per_epoch=8",
             "--max_validation_examples=64", "--confusion_matrix=false"]
EXAMPLES = 200  # distinct requests per recipe, sent round-robin


# ------------------------------------------------------------------------- the models


def find_model(recipe, given, runs_dir):
    """(run folder, where it came from) for ``recipe``, training a short run if needed."""
    if given:
        return given, "given (--model)"
    finished = sorted(path for path in glob.glob(os.path.join(runs_dir, recipe, "*"))
                      if glob.glob(os.path.join(path, "export", "[0-9]*", "saved_model.pb")))
    if finished:
        return finished[-1], "the newest run in " + runs_dir
    run_dir = os.path.join(PROJECT_ROOT, ".cache", "bench-serve", recipe)
    if not glob.glob(os.path.join(run_dir, "export", "[0-9]*", "saved_model.pb")):
        print(f"[bench-serve] no {recipe} run with an export: training a short run of its "
              f"default configuration into {run_dir}", flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        result = subprocess.run(
            [sys.executable, "-m", "toolkit.launcher.launch", f"--recipe={recipe}",
             f"--run_dir={run_dir}", *SHORT_RUN], cwd=PROJECT_ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise SystemExit(f"training the {recipe} model failed (exit {result.returncode}):"
                             f"\n{result.stdout[-3000:]}")
    return run_dir, f"a short run of the default configuration ({' '.join(SHORT_RUN)})"


def latest_export(run_dir):
    versions = [int(name) for name in os.listdir(os.path.join(run_dir, "export"))
                if name.isdigit()]
    return os.path.join(run_dir, "export", str(max(versions)))


# ------------------------------------------------------------------------- requests


def examples(recipe):
    """EXAMPLES inputs of one row each, as Python values for serving_default: strings,
    encoded image bytes, or float32 waveforms."""
    if recipe == "bert":
        from recipe_helpers import text_files
        from recipes import bert

        validation = text_files.read(bert.data_files(bert.BertConfig())[1])
        return list(validation.texts[:EXAMPLES])
    if recipe == "image":
        from PIL import Image

        from recipes import image

        pixels, _ = image.fashion_mnist_split(image.ImageConfig().fashion_mnist_dir, "t10k")
        encoded = []
        for item in pixels[:EXAMPLES]:
            stream = io.BytesIO()
            Image.fromarray(item).save(stream, "PNG")
            encoded.append(stream.getvalue())
        return encoded
    if recipe == "speech":
        import tensorflow as tf

        from recipes import speech

        config = speech.SpeechConfig()
        data_dir, _ = speech.resolve_data_dir(config)
        clips, _, _, _ = speech.scan_folder(config, data_dir)
        test = speech.split_clips(clips, data_dir, config)["test"][:EXAMPLES]
        return [tf.audio.decode_wav(tf.io.read_file(clip.path), desired_channels=1)
                [0][:, 0].numpy() for clip in test]
    raise ValueError(f"no requests for recipe {recipe!r}")


def request_body(value):
    """TF Serving's row format for one example."""
    if isinstance(value, bytes):
        value = {"b64": base64.b64encode(value).decode()}
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    return json.dumps({"instances": [value]}).encode()


def percentiles(latencies):
    values = np.array(latencies) * 1000
    return {f"p{q}_ms": float(np.percentile(values, q)) for q in (50, 95, 99)}


# -------------------------------------------------------------------- measurements


def direct(export, values, count, seconds):
    """Latency of serving_default called in this process, one example at a time."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the ops BERT's export tokenises with)

    function = tf.saved_model.load(export).signatures["serving_default"]
    (name, spec), = function.structured_input_signature[1].items()

    def call(value):
        function(**{name: tf.constant([value], dtype=spec.dtype)})

    for value in values[:10]:
        call(value)
    latencies, deadline = [], time.monotonic() + seconds
    while len(latencies) < count and time.monotonic() < deadline:
        started = time.perf_counter()
        call(values[len(latencies) % len(values)])
        latencies.append(time.perf_counter() - started)
    return {"answered": len(latencies), **percentiles(latencies)}


async def post(session, url, body):
    """(seconds, error or None) of one request."""
    import aiohttp

    started = time.perf_counter()
    try:
        async with session.post(url, data=body,
                                headers={"Content-Type": "application/json"}) as answer:
            text = await answer.read()
            error = None if answer.status == 200 else f"{answer.status}: {text[:200]!r}"
    except (aiohttp.ClientError, asyncio.TimeoutError) as failure:
        error = f"{type(failure).__name__}: {failure}"
    return time.perf_counter() - started, error


async def closed_loop(url, bodies, concurrency, count, seconds):
    """``concurrency`` clients sending ``bodies`` round-robin, each sending again when
    answered: 2 x concurrency requests untimed, then until ``count`` are answered or
    ``seconds`` pass."""
    import aiohttp

    order = itertools.count()
    latencies, errors = [], []

    async def client(session, stop_at, limit, sent_so_far, timed):
        while time.monotonic() < stop_at and sent_so_far[0] < limit:
            sent_so_far[0] += 1
            took, error = await post(session, url, bodies[next(order) % len(bodies)])
            if error:
                errors.append(error)
            elif timed:
                latencies.append(took)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120),
                                     connector=connector) as session:
        warm_up = [0]
        await asyncio.gather(*[client(session, time.monotonic() + 300, 2 * concurrency,
                                      warm_up, False) for _ in range(concurrency)])
        timed, started = [0], time.monotonic()
        await asyncio.gather(*[client(session, started + seconds, count, timed, True)
                               for _ in range(concurrency)])
        elapsed = time.monotonic() - started
    return {"answered": len(latencies), "errors": len(errors), "error_examples": errors[:3],
            "seconds": round(elapsed, 3), "requests_per_second": len(latencies) / elapsed,
            **percentiles(latencies or [float("nan")])}


class Server:
    """A ``toolkit.launcher.serve`` process on a free loopback port."""

    def __init__(self, run_dirs, options):
        import requests

        self.port = bench_lib.free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}/v1/models"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "toolkit.launcher.serve", f"--port={self.port}",
             *[f"--model={run_dir}" for run_dir in run_dirs], *options],
            cwd=PROJECT_ROOT, env=bench_lib.environment(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"make serve exited {self.process.returncode}:\n"
                                 f"{self.process.stdout.read()[-3000:]}")
            try:
                requests.get(self.url + "/none", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.5)
        self.stop()
        raise SystemExit("make serve did not answer within 300 s")

    def stop(self):
        """SIGTERM; (predictions answered, model calls) from its closing line."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=120)
        closing = [line for line in output.splitlines() if "predictions answered in" in line]
        if self.process.returncode != 0 or not closing:
            raise SystemExit(f"make serve ended with {self.process.returncode}:\n"
                             f"{output[-3000:]}")
        words = closing[-1].split()
        return int(words[words.index("predictions") - 1]), int(words[words.index("model") - 1])


# ----------------------------------------------------------------------- the report


def median(rows, key):
    values = [row[key] for row in rows if np.isfinite(row[key])]
    return statistics.median(values) if values else float("nan")


def spread(rows, key, digits=1):
    values = [row[key] for row in rows if np.isfinite(row[key])]
    if not values:
        return "n/a"
    return (f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}.."
            f"{max(values):.{digits}f})")


def analyse(results):
    """The targets, as (name, measured, "<=" or ">=", target), and the same latency ratio
    for the other recipes, reported without a target."""
    checks, others = [], []
    load = results["load"]

    def p99_ratio(recipe):
        return (median(load["on"][recipe]["1"], "p99_ms")
                / median(results["direct"][recipe], "p99_ms"))

    if "32" in load["on"].get("bert", {}):
        ratio = (median(load["on"]["bert"]["32"], "requests_per_second")
                 / median(load["off"]["bert"]["32"], "requests_per_second"))
        checks.append(("BERT requests/s at concurrency 32, batching on vs off (medians)",
                       ratio, ">=", TARGETS["bert_batched_vs_unbatched_c32"]))
    if "1" in load["on"].get("bert", {}):
        checks.append(("BERT p99 at concurrency 1 (batching on) vs in-process (medians)",
                       p99_ratio("bert"), "<=", TARGETS["bert_p99_c1_vs_direct"]))
    errors = sum(row["errors"] for mode in load.values() for levels in mode.values()
                 for rows in levels.values() for row in rows)
    checks.append(("errors (any answer but 200), all runs", errors, "<=", 0))
    for recipe in results["models"]:
        if recipe != "bert" and "1" in load["on"].get(recipe, {}):
            others.append((recipe, p99_ratio(recipe)))
    return checks, others


def write_report(directory, results):
    """report.md and results.json, with the checks against the targets."""
    checks, others = analyse(results)
    met = lambda value, op, target: value <= target if op == "<=" else value >= target  # noqa: E731
    lines = [f"# make bench-serve, {results['started']}", "",
             f"Machine: {os.cpu_count()} CPU cores, no GPU; client and server on it, over "
             "loopback. One example per request.", f"Repeats: {results['repeats']}; figures "
             "are median (min..max) over them. Up to "
             f"{results['requests']} timed requests or {results['seconds']} s per level.", "",
             "## Models", ""]
    for recipe, model in results["models"].items():
        lines.append(f"- {recipe}: {model['export']} ({model['source']}); requests: "
                     f"{model['requests']}")
    lines += ["", "## In-process SavedModel (serving_default, one example per call)", "",
              "| recipe | p50 ms | p99 ms |", "|---|---|---|"]
    for recipe, rows in results["direct"].items():
        lines.append(f"| {recipe} | {spread(rows, 'p50_ms')} | {spread(rows, 'p99_ms')} |")
    lines += ["", "## make serve under load", "",
              "| recipe | batching | concurrency | requests/s | p50 ms | p95 ms | p99 ms | "
              "errors |", "|---|---|---|---|---|---|---|---|"]
    for recipe in results["models"]:
        for mode in BATCHING:
            for level, rows in results["load"][mode].get(recipe, {}).items():
                lines.append(
                    f"| {recipe} | {mode} | {level} | {spread(rows, 'requests_per_second')} | "
                    f"{spread(rows, 'p50_ms')} | {spread(rows, 'p95_ms')} | "
                    f"{spread(rows, 'p99_ms')} | {sum(row['errors'] for row in rows)} |")
    lines += ["", "Rows per model call (all requests of a server process, warm-up included): "
              + ", ".join(f"batching {mode}: {np.mean(values):.1f}"
                          for mode, values in results["rows_per_call"].items() if values), "",
              "## Targets", "", "| check | measured | target | met |", "|---|---|---|---|"]
    for name, value, op, target in checks:
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"| {name} | {shown} | {op} {target} | "
                     f"{'yes' if met(value, op, target) else 'NO'} |")
    if others:
        lines += ["", "Without a target: p99 at concurrency 1 (batching on) vs in-process, "
                  + ", ".join(f"{recipe} {ratio:.2f}" for recipe, ratio in others)
                  + ". A request's HTTP, JSON and thread hand-over cost a few milliseconds "
                  "whatever the model, so the ratio grows as the model gets faster."]
    examples = [example for mode in results["load"].values() for levels in mode.values()
                for rows in levels.values() for row in rows for example in row["error_examples"]]
    if examples:
        lines += ["", "## Errors (examples)", "", *[f"- {example}" for example in examples[:10]]]
    with open(os.path.join(directory, "report.md"), "w") as stream:
        stream.write("\n".join(lines) + "\n")
    with open(os.path.join(directory, "results.json"), "w") as stream:
        json.dump(dict(results, targets=TARGETS,
                       checks=[dict(zip(("check", "measured", "op", "target"), check))
                               for check in checks],
                       p99_c1_vs_direct_without_target=dict(others)), stream, indent=2)


# ---------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m toolkit.launcher.bench_serve",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--model", action="append", default=[],
                        help="RECIPE=RUN_DIR: the run whose export to serve")
    parser.add_argument("--runs_dir", default=os.path.join(PROJECT_ROOT, "runs"))
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=400,
                        help="timed requests per level (at most)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="seconds per level (at most)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output_root", default=os.path.join(PROJECT_ROOT, "bench"))
    options = parser.parse_args(argv)
    recipes = [name.strip() for name in options.recipes.split(",") if name.strip()]
    unknown = sorted(set(recipes) - set(RECIPES))
    given = dict(item.split("=", 1) for item in options.model if "=" in item)
    bad = [item for item in options.model if "=" not in item] + sorted(set(given) - set(recipes))
    levels = [int(level) for level in options.concurrency.split(",")]
    if unknown or bad or min(levels) < 1 or options.requests < 1 or options.repeats < 1:
        parser.error(f"recipes must be among {list(RECIPES)} (got {unknown or recipes}); "
                     f"--model RECIPE=RUN_DIR for one of them (got {bad or options.model}); "
                     "--concurrency, --requests and --repeats >= 1")
    log_noise.set_level(verbose=False)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = {"started": stamp, "repeats": options.repeats, "requests": options.requests,
               "seconds": options.seconds, "models": {}, "direct": {},
               "load": {mode: {} for mode in BATCHING},
               "rows_per_call": {mode: [] for mode in BATCHING}}
    run_dirs, bodies, values = {}, {}, {}
    for recipe in recipes:
        run_dirs[recipe], source = find_model(recipe, given.get(recipe), options.runs_dir)
        with log_noise.hidden(False):
            values[recipe] = examples(recipe)
        bodies[recipe] = [request_body(value) for value in values[recipe]]
        sizes = [len(body) for body in bodies[recipe]]
        results["models"][recipe] = {
            "export": latest_export(run_dirs[recipe]), "source": source,
            "requests": f"{len(sizes)} distinct, {statistics.median(sizes):,.0f} bytes "
                        "(median JSON body)"}
    directory = os.path.join(options.output_root, "serve", stamp)
    os.makedirs(directory)
    for repeat in range(options.repeats):
        for recipe in recipes:
            print(f"[bench-serve] repeat {repeat + 1}: {recipe} in-process", flush=True)
            with log_noise.hidden(False):
                results["direct"].setdefault(recipe, []).append(
                    direct(results["models"][recipe]["export"], values[recipe],
                           options.requests, options.seconds))
        for mode, server_options in BATCHING.items():
            server = Server(run_dirs.values(), server_options)
            try:
                for recipe in recipes:
                    for level in levels:
                        print(f"[bench-serve] repeat {repeat + 1}: {recipe}, batching {mode},"
                              f" concurrency {level}", flush=True)
                        row = asyncio.run(closed_loop(
                            f"{server.url}/{recipe}:predict", bodies[recipe], level,
                            options.requests, options.seconds))
                        results["load"][mode].setdefault(recipe, {}).setdefault(
                            str(level), []).append(row)
            finally:
                answered, calls = server.stop()
            results["rows_per_call"][mode].append(answered / max(calls, 1))
    write_report(directory, results)
    bench_lib.show_report(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
