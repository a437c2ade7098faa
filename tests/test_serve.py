"""make serve: the real server on a free loopback port, spoken to over HTTP."""

import base64
import concurrent.futures
import io
import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image

from helpers import PYTHON, PROJECT_ROOT, TINY_IMAGE, environment, launch
from recipes import image
from toolkit import recipe as recipe_lib
from toolkit.launcher import serve

# Importing TensorFlow Text registers the ops BERT's export tokenises with.
import tensorflow_text  # noqa: F401,E402


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Served:
    """A ``toolkit.launcher.serve`` process; stopped (SIGTERM) by ``stop``."""

    def __init__(self, models, *options):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/models"
        self.process = subprocess.Popen(
            [PYTHON, "-m", "toolkit.launcher.serve", *[f"--model={model}" for model in models],
             f"--port={self.port}", *options], cwd=PROJECT_ROOT, env=environment(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stdout.read()
            try:
                requests.get(f"{self.url}/none", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.5)
        raise AssertionError("the server did not start within 120 s")

    def predict(self, name, body, version=None):
        path = f"{self.url}/{name}" + (f"/versions/{version}" if version else "")
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(path + ":predict", data=data, timeout=60)

    def stop(self):
        """SIGTERM; (exit code, output). Safe to call again."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            output, _ = self.process.communicate(timeout=60)
        except ValueError:  # already collected
            output = ""
        return self.process.returncode, output


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A short image run with its export, and BERT and speech runs from their tiny
    configs (the recipes' own two-step checks)."""
    root = tmp_path_factory.mktemp("serve")
    runs = {"image": root / "image", "bert": root / "bert", "speech": root / "speech"}
    launch(["--recipe=image", "--np=1", f"--run_dir={runs['image']}", "--epochs=1",
            "--max_steps_per_epoch=40", *TINY_IMAGE])
    for name in ("bert", "speech"):
        tiny = recipe_lib.get(name).tiny_overrides
        launch([f"--recipe={name}", "--np=1", f"--run_dir={runs[name]}", "--epochs=1",
                "--max_steps_per_epoch=2", *[f"--{key}={value}" for key, value in tiny.items()]],
               timeout=600)
    return runs


@pytest.fixture(scope="module")
def server(exports):
    served = Served(exports.values(), "--max_body_mb=1", "--max_batch_size=8",
                    "--batch_timeout_ms=20")
    yield served
    served.stop()


def png(pixels):
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, "PNG")
    return stream.getvalue()


def test_image_predictions_equal_the_savedmodel_in_both_formats(server, exports):
    pixels, _ = image.fashion_mnist_split(image.ImageConfig().fashion_mnist_dir, "t10k")
    files = [png(item) for item in pixels[:6]]
    direct = tf.saved_model.load(str(exports["image"] / "export" / "1")).signatures[
        "serving_default"](images=tf.constant(files))
    b64 = [{"b64": base64.b64encode(data).decode()} for data in files]
    rows = server.predict("image", {"instances": b64})
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert [row["label"] for row in predictions] == [
        label.decode() for label in direct["label"].numpy()]
    assert np.allclose([row["probabilities"] for row in predictions],
                       direct["probabilities"].numpy(), atol=1e-6)
    columns = server.predict("image", {"inputs": {"images": b64}}, version=1)
    assert columns.status_code == 200, columns.text
    assert columns.json()["outputs"]["label_id"] == direct["label_id"].numpy().tolist()
    pixels_signature = server.predict("image", {"signature_name": "serving_pixels",
                                                "instances": pixels[:2, :, :, None].tolist()})
    assert pixels_signature.status_code == 200, pixels_signature.text
    status = requests.get(f"{server.url}/image", timeout=10).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    metadata = requests.get(f"{server.url}/image/metadata", timeout=10).json()
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["images"]["dtype"] == "DT_STRING"


def test_bert_and_speech_predictions_equal_the_savedmodel(server, exports):
    texts = ["a small domestic cat", "a piece of furniture"]
    direct = tf.saved_model.load(str(exports["bert"] / "export" / "1")).signatures[
        "serving_default"](text=tf.constant(texts))
    answer = server.predict("bert", {"instances": texts})
    assert answer.status_code == 200, answer.text
    assert np.allclose([row["probabilities"] for row in answer.json()["predictions"]],
                       direct["probabilities"].numpy(), atol=1e-6)
    pairs = server.predict("bert", {"signature_name": "serving_pairs", "instances": [
        {"text": "a cat", "text_pair": "a dog"}]})
    assert pairs.status_code == 200, pairs.text
    waves = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 16000)).astype(np.float32)
    direct = tf.saved_model.load(str(exports["speech"] / "export" / "1")).signatures[
        "serving_default"](waveform=tf.constant(waves))
    answer = server.predict("speech", {"inputs": waves.tolist()})
    assert answer.status_code == 200, answer.text
    assert np.allclose(answer.json()["outputs"]["probabilities"],
                       direct["probabilities"].numpy(), atol=1e-5)


@pytest.mark.parametrize("name, body, status, fragment", [
    ("image", b"{not json", 400, "malformed JSON"),
    ("nothing", {"instances": ["x"]}, 404, "no model named 'nothing'"),
    ("image", {"signature_name": "serve_all", "instances": ["x"]}, 400,
     "no signature 'serve_all'"),
    ("image", {"signature_name": ["serving_default"], "instances": ["x"]}, 400,
     "\"signature_name\" must be a string"),
    ("image", {"inputs": {"pictures": ["x"]}}, 400, "must name the inputs ['images']"),
    ("image", {"instances": [{"b64": "@@not base64@@"}]}, 400, "invalid base64"),
    ("image", {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}, 400,
     "could not use the input"),
    ("speech", {"instances": [["loud", "noise"]]}, 400, "expected float32 values"),
    ("speech", {"instances": [0.1, 0.2]}, 400, "expected shape [-1, -1], got [2]"),
    ("image", {"instances": []}, 400, "non-empty list"),
    ("image", b"x" * (2 * 2 ** 20), 413, "request body over"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(server, name, body, status, fragment):
    answer = server.predict(name, body)
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["error"], answer.json()
    # ... and the server goes on serving.
    assert requests.get(f"{server.url}/image", timeout=10).status_code == 200


def test_unknown_version_is_404(server):
    answer = server.predict("image", {"instances": ["x"]}, version=7)
    assert answer.status_code == 404 and "no version 7" in answer.json()["error"]


def test_concurrent_requests_are_batched_with_the_same_answers(exports):
    pixels, _ = image.fashion_mnist_split(image.ImageConfig().fashion_mnist_dir, "t10k")
    bodies = [{"instances": [{"b64": base64.b64encode(png(item)).decode()}]}
              for item in pixels[:24]]
    alone = Served([exports["image"]], "--max_batch_size=1")
    try:
        expected = [alone.predict("image", body).json()["predictions"][0] for body in bodies]
    finally:
        alone.stop()
    batched = Served([exports["image"]], "--max_batch_size=8", "--batch_timeout_ms=200")
    try:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda body: batched.predict("image", body), bodies))
    finally:
        code, output = batched.stop()
    assert [answer.status_code for answer in answers] == [200] * 24
    got = [answer.json()["predictions"][0] for answer in answers]
    assert [row["label"] for row in got] == [row["label"] for row in expected]
    assert np.allclose([row["probabilities"] for row in got],
                       [row["probabilities"] for row in expected], atol=1e-6)
    calls = int(output.split("predictions answered in ")[1].split()[0])
    assert code == 0 and calls < 24, output


class SlowModel:
    """A signature that doubles its input, taking ``seconds`` per call."""

    def __init__(self, seconds):
        self.seconds, self.call_rows = seconds, []

    def __call__(self, x):
        self.call_rows.append(int(x.shape[0]))
        time.sleep(self.seconds)
        return {"y": x * 2}


def batcher(model, max_rows, wait_seconds):
    version = serve.Version(number=1, path="", signatures={"serving_default": model},
                            executor=concurrent.futures.ThreadPoolExecutor(1), module=None)
    return serve.Batcher(version, "serving_default", max_rows, wait_seconds)


async def timed_call(batcher, value, delay=0.0):
    """(seconds, answer) of one one-row request sent after ``delay``."""
    import asyncio

    await asyncio.sleep(delay)
    started = time.monotonic()
    answer = await batcher.call({"x": np.array([value], np.float32)})
    return time.monotonic() - started, float(answer["y"][0])


@pytest.mark.fast
def test_a_lone_request_runs_at_once_and_requests_arriving_meanwhile_form_batches():
    import asyncio

    model = SlowModel(0.3)
    joins = batcher(model, max_rows=4, wait_seconds=0.0)

    async def scenario():
        alone = await timed_call(joins, 1.0)
        # One request finds the model idle; nine arrive while it runs.
        together = await asyncio.gather(timed_call(joins, 0.0),
                                        *[timed_call(joins, value, 0.05)
                                          for value in range(1, 10)])
        return alone, together

    (seconds, answer), together = asyncio.run(scenario())
    assert answer == 2.0 and seconds < 0.3 + 0.15
    assert model.call_rows == [1, 1, 4, 4, 1]
    assert [answer for _, answer in together] == [2.0 * value for value in range(10)]


@pytest.mark.fast
def test_batch_timeout_makes_an_idle_model_wait_for_more():
    import asyncio

    model = SlowModel(0.01)
    waits = batcher(model, max_rows=8, wait_seconds=0.3)

    async def scenario():
        return await asyncio.gather(*[timed_call(waits, value, value * 0.05)
                                      for value in range(3)])

    answers = asyncio.run(scenario())
    assert model.call_rows == [3]
    assert answers[0][0] >= 0.3 and [answer for _, answer in answers] == [0.0, 2.0, 4.0]


def test_overload_is_503_and_sigterm_lets_requests_finish(exports):
    served = Served([exports["image"]], "--max_queue=2", "--max_batch_size=64",
                    "--batch_timeout_ms=1500")
    body = {"instances": [{"b64": base64.b64encode(png(np.zeros((28, 28), np.uint8))).decode()}]}
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            waiting = [pool.submit(served.predict, "image", body) for _ in range(6)]
            statuses = sorted(future.result().status_code for future in waiting)
        assert statuses.count(200) == 2 and statuses.count(503) == 4, statuses
        assert served.predict("image", body).status_code == 200
        # SIGTERM while a request waits for its batch: it is answered, then exit 0.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(served.predict, "image", body)
            time.sleep(0.5)
            code, output = served.stop()
            assert in_flight.result().status_code == 200
        assert code == 0, output
    finally:
        served.stop()


def test_bad_model_folder_is_refused(tmp_path):
    result = subprocess.run([PYTHON, "-m", "toolkit.launcher.serve", f"--model={tmp_path}"],
                            cwd=PROJECT_ROOT, env=environment(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert f"--model {tmp_path}: neither a run folder" in result.stderr
    assert not os.path.exists(tmp_path / "export")
