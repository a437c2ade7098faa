"""``make serve``: the TF Serving REST API for the runs' exports, with batching.

    python -m toolkit.launcher.serve --model=RUN_DIR [--model=...] [--port=8501]
        [--host=127.0.0.1] [--model_name=NAME] [--max_batch_size=32]
        [--batch_timeout_ms=0] [--max_queue=256] [--max_body_mb=16]

Each ``--model`` is a run folder (its ``export/``), a TF Serving base path (integer
version folders), or a folder of those (one model per subfolder, named after it). A
model is named ``--model_name`` (one model only), else after its subfolder in a models
folder, else after its recipe (``labels.json``). Every version found is loaded.

Routes, as TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest):

    GET  /v1/models/<name>[/versions/<v>]             status
    GET  /v1/models/<name>[/versions/<v>]/metadata    signatures
    POST /v1/models/<name>[/versions/<v>]:predict     {"instances": [...]} or {"inputs": ...}

``signature_name`` chooses the signature (default ``serving_default``); binary inputs are
``{"b64": "..."}``. Answers are ``{"predictions": [...]}`` (row format) or
``{"outputs": ...}`` (columnar), errors ``{"error": "..."}`` with a 4xx status naming the
problem, 503 when ``--max_queue`` requests already wait, 413 over ``--max_body_mb``.

Batching: requests for the same model, version and signature whose inputs agree in all
but the first dimension are joined into one call of up to ``--max_batch_size`` rows
(``--max_batch_size=1`` turns it off); each request gets its own rows back. One thread
per model version runs the calls, one at a time: requests that arrive while a call runs
are joined into the next, so batches grow with the load while a lone request runs at
once; ``--batch_timeout_ms`` makes an idle model wait that long for more. SIGTERM (or Ctrl-C) stops accepting connections, lets the requests in flight
finish, and exits 0.

No authentication and no TLS: it listens on 127.0.0.1 by default. Before exposing it,
put a reverse proxy in front that terminates TLS and authenticates (README, "Serving").
"""

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import json
import os
import sys
import traceback
import typing

import numpy as np
import orjson

import toolkit  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from toolkit import errors
from toolkit import log_noise

DEFAULT_SIGNATURE = "serving_default"


class RequestError(Exception):
    """A request that cannot be answered; ``status`` is the HTTP status to send."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------- the models


@dataclasses.dataclass
class Version:
    number: int
    path: str
    signatures: typing.Dict[str, typing.Any]  # name -> concrete function
    executor: concurrent.futures.ThreadPoolExecutor
    module: typing.Any  # the loaded SavedModel: keeps the functions' variables alive


@dataclasses.dataclass
class Model:
    name: str
    versions: typing.Dict[int, Version]

    def version(self, number: typing.Optional[int]) -> Version:
        if number is None:
            return self.versions[max(self.versions)]
        if number not in self.versions:
            raise RequestError(f"model {self.name!r} has no version {number}; versions: "
                               f"{sorted(self.versions)}", 404)
        return self.versions[number]


def base_paths(location: str) -> typing.List[typing.Tuple[str, str]]:
    """(name or "", base path) for each model at ``location``: a run folder, a base path,
    or a folder of either."""
    if not os.path.isdir(location):
        raise errors.ConfigError(f"--model {location}: no such folder")
    if os.path.isdir(os.path.join(location, "export")):
        return [("", os.path.join(location, "export"))]
    if any(name.isdigit() for name in os.listdir(location)):
        return [("", location)]
    found = []
    for name in sorted(os.listdir(location)):
        inner = os.path.join(location, name)
        if os.path.isdir(os.path.join(inner, "export")):
            found.append((name, os.path.join(inner, "export")))
        elif os.path.isdir(inner) and any(part.isdigit() for part in os.listdir(inner)):
            found.append((name, inner))
    if not found:
        raise errors.ConfigError(f"--model {location}: neither a run folder (with export/), "
                                 "a model base path (with version folders 1/, 2/, ...) nor "
                                 "a folder of those")
    return found


def load_models(locations: typing.Sequence[str], model_name: str = "") -> typing.Dict[str, Model]:
    import tensorflow as tf
    # Registers the tokenizer ops BERT's exports use (a pinned dependency).
    import tensorflow_text  # noqa: F401

    places = [place for location in locations for place in base_paths(location)]
    if model_name and len(places) != 1:
        raise errors.ConfigError(f"--model_name names one model, but {len(places)} were "
                                 "given; name them by their folders instead")
    models: typing.Dict[str, Model] = {}
    for folder_name, base in places:
        numbers = sorted(int(name) for name in os.listdir(base)
                         if name.isdigit() and os.path.isdir(os.path.join(base, name)))
        if not numbers:
            raise errors.ConfigError(f"{base} has no exported version (1/, 2/, ...): was "
                                     "the run trained with --export=false, or not finished?")
        labels_path = os.path.join(base, str(numbers[-1]), "labels.json")
        recipe = ""
        if os.path.exists(labels_path):
            with open(labels_path) as stream:
                recipe = json.load(stream).get("recipe", "")
        name = model_name or folder_name or recipe or os.path.basename(os.path.dirname(base))
        if name in models:
            raise errors.ConfigError(f"two models are named {name!r} ({base} and another); "
                                     "serve them from a models folder, one subfolder each")
        versions = {}
        for number in numbers:
            path = os.path.join(base, str(number))
            loaded = tf.saved_model.load(path)
            versions[number] = Version(
                number=number, path=path, signatures=dict(loaded.signatures),
                executor=concurrent.futures.ThreadPoolExecutor(1, f"{name}-v{number}"),
                module=loaded)
        models[name] = Model(name=name, versions=versions)
    return models


# ------------------------------------------------------------------ request bodies


def _decode_binary(value, where):
    """{"b64": "..."} -> bytes, recursively through lists."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise RequestError(f"{where}: an object value must be {{\"b64\": \"<base64>\"}}, "
                               f"got keys {sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{where}: invalid base64 in \"b64\"") from None
    if isinstance(value, list):
        return [_decode_binary(item, where) for item in value]
    return value


def to_array(value, spec, where):
    """A JSON value as a numpy array for the input ``spec`` (a tf.TensorSpec)."""
    import tensorflow as tf

    value = _decode_binary(value, where)
    try:
        if spec.dtype == tf.string:
            array = np.array(value, dtype=object)
            flat = [item.encode() if isinstance(item, str) else item for item in array.flat]
            if not all(isinstance(item, bytes) for item in flat):
                raise ValueError("not strings")
            array = np.array(flat, dtype=object).reshape(array.shape)
        else:
            array = np.array(value, dtype=spec.dtype.as_numpy_dtype)
            if array.dtype == object:
                raise ValueError("ragged")
    except (ValueError, TypeError, OverflowError):
        raise RequestError(f"{where}: expected {spec.dtype.name} values of shape "
                           f"{_shape(spec.shape)}, got {_describe(value)}") from None
    if not spec.shape.is_compatible_with(array.shape):
        raise RequestError(f"{where}: expected shape {_shape(spec.shape)}, got "
                           f"{list(array.shape)}")
    return array


def _shape(shape):
    return [dimension if dimension is not None else -1 for dimension in shape.as_list()]


def _describe(value):
    text = json.dumps(value if not isinstance(value, bytes) else "<bytes>", default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def read_body(body: bytes) -> dict:
    """A predict request's JSON object (orjson: several times faster than json on the
    long number lists of waveforms)."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RequestError(f"malformed JSON body: {error}") from None
    if not isinstance(request, dict):
        raise RequestError("the body must be a JSON object with \"instances\" or \"inputs\"")
    return request


def parse_predict(request: dict, function) -> typing.Tuple[typing.Dict[str, np.ndarray], str]:
    """The inputs of a predict request, as arrays by input name, and its format."""
    specs = function.structured_input_signature[1]
    names = sorted(specs)
    if ("instances" in request) == ("inputs" in request):
        raise RequestError("give exactly one of \"instances\" (row format) or \"inputs\" "
                           "(columnar format)")
    if "instances" in request:
        rows = request["instances"]
        if not isinstance(rows, list) or not rows:
            raise RequestError("\"instances\" must be a non-empty list")
        if len(names) == 1 and not all(isinstance(row, dict) and set(row) == {names[0]}
                                       for row in rows):
            columns = {names[0]: rows}
        else:
            for index, row in enumerate(rows):
                if not isinstance(row, dict) or set(row) != set(names):
                    raise RequestError(f"instances[{index}] must be an object with the inputs "
                                       f"{names}, got {_describe(row)}")
            columns = {name: [row[name] for row in rows] for name in names}
        form = "row"
    else:
        inputs = request["inputs"]
        if len(names) == 1 and not isinstance(inputs, dict):
            inputs = {names[0]: inputs}
        if not isinstance(inputs, dict) or set(inputs) != set(names):
            got = sorted(inputs) if isinstance(inputs, dict) else _describe(inputs)
            raise RequestError(f"\"inputs\" must name the inputs {names}, got {got}")
        columns, form = inputs, "columnar"
    arrays = {name: to_array(columns[name], specs[name], f"input {name!r}") for name in names}
    sizes = {name: len(array) if array.ndim else None for name, array in arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise RequestError(f"every input needs the same number of rows, got {sizes}")
    return arrays, form


def _jsonable(array: np.ndarray):
    if array.dtype == object:
        return [_jsonable(item) if isinstance(item, np.ndarray) else
                item.decode("utf-8", "replace") for item in array]
    return array.tolist()


def answer(outputs: typing.Dict[str, np.ndarray], form: str):
    names = sorted(outputs)
    if form == "columnar":
        columns = {name: _jsonable(outputs[name]) for name in names}
        return {"outputs": columns[names[0]] if len(names) == 1 else columns}
    rows = len(next(iter(outputs.values())))
    columns = {name: _jsonable(outputs[name]) for name in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{name: columns[name][row] for name in names}
                            for row in range(rows)]}


# ------------------------------------------------------------------------ batching


class Batcher:
    """Joins concurrent requests for one signature into calls of at most ``max_rows``.

    One call runs at a time (the version's thread). A request that finds the model idle is
    run at once, or after up to ``wait_seconds`` when that is set, to let others join;
    requests that arrive while a call runs wait for the next one, which takes as many of
    them as fit. So a lone request is not delayed, and under load the batches grow by
    themselves.
    """

    def __init__(self, version: Version, signature: str, max_rows: int, wait_seconds: float):
        self.version, self.signature = version, signature
        self.function = version.signatures[signature]
        self.max_rows, self.wait_seconds = max_rows, wait_seconds
        self.pending: typing.List[typing.Tuple[dict, int, asyncio.Future]] = []
        self.running = False
        self.timer: typing.Optional[asyncio.TimerHandle] = None
        self.calls = 0  # model calls made, for the closing line

    async def call(self, arrays: typing.Dict[str, np.ndarray]) -> typing.Dict[str, np.ndarray]:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((arrays, len(next(iter(arrays.values()))), future))
        self._start(waited=False)
        return await future

    def _start(self, waited: bool):
        """Start the next call if the model is idle and the batch should not wait."""
        if self.running or not self.pending:
            return
        full = sum(rows for _, rows, _ in self.pending) >= self.max_rows
        if not (waited or full or self.wait_seconds <= 0):
            if self.timer is None:
                self.timer = asyncio.get_running_loop().call_later(
                    self.wait_seconds, self._start, True)
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer = None
        batch, rows = [], 0
        while self.pending and (not batch or rows + self.pending[0][1] <= self.max_rows):
            rows += self.pending[0][1]
            batch.append(self.pending.pop(0))
        self.running = True
        asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch):
        try:
            await self._answer(batch)
        finally:
            self.running = False
            self._start(waited=True)  # those left have waited while the model ran

    async def _answer(self, batch):
        joined = {name: np.concatenate([arrays[name] for arrays, _, _ in batch])
                  for name in batch[0][0]}
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self.version.executor, self._invoke, joined)
        except RequestError as error:
            if len(batch) == 1:
                _settle(batch[0][2], error=error)
            else:  # one request's bad input must not fail the others: each on its own
                for item in batch:
                    await self._answer([item])
            return
        except Exception as error:  # a bug: every waiting request hears of it
            for _, _, future in batch:
                _settle(future, error=error)
            return
        self.calls += 1
        start = 0
        for _, rows, future in batch:
            _settle(future, {name: value[start:start + rows] for name, value in outputs.items()})
            start += rows

    def _invoke(self, arrays):
        import tensorflow as tf

        try:
            outputs = self.function(**{name: tf.constant(value)
                                       for name, value in arrays.items()})
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            message = getattr(error, "message", str(error)).strip().splitlines()[0]
            raise RequestError(f"the model could not use the input: {message[:300]}") from None
        return {name: value.numpy() for name, value in outputs.items()}


def _settle(future: asyncio.Future, result=None, error=None):
    """Answer a waiting request, unless its client has gone (the future cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Server:
    def __init__(self, models: typing.Dict[str, Model], max_batch_size: int,
                 batch_timeout_ms: float, max_queue: int):
        self.models = models
        self.max_batch_size, self.wait = max_batch_size, batch_timeout_ms / 1000
        self.max_queue, self.waiting = max_queue, 0
        self.batchers: typing.Dict[tuple, Batcher] = {}
        self.answered = 0  # predictions answered, for the closing line

    def model(self, request) -> typing.Tuple[Model, typing.Optional[int]]:
        name = request.match_info["name"]
        if name not in self.models:
            raise RequestError(f"no model named {name!r}; models: {sorted(self.models)}", 404)
        version = request.match_info.get("version")
        if version is not None and not version.isdigit():
            raise RequestError(f"version must be a whole number, got {version!r}", 404)
        return self.models[name], int(version) if version is not None else None

    async def status(self, request):
        model, number = self.model(request)
        versions = [model.version(number)] if number is not None else [
            model.versions[key] for key in sorted(model.versions, reverse=True)]
        return {"model_version_status": [
            {"version": str(version.number), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}} for version in versions]}

    async def metadata(self, request):
        model, number = self.model(request)
        version = model.version(number)

        from tensorflow.core.framework import types_pb2

        def tensors(specs):
            return {name: {"dtype": types_pb2.DataType.Name(spec.dtype.as_datatype_enum),
                           "name": name,
                           "tensor_shape": {"dim": [{"size": str(size), "name": ""}
                                                    for size in _shape(spec.shape)],
                                            "unknown_rank": False}}
                    for name, spec in specs.items()}

        signatures = {name: {"inputs": tensors(function.structured_input_signature[1]),
                             "outputs": tensors(function.structured_outputs),
                             "method_name": "tensorflow/serving/predict"}
                      for name, function in version.signatures.items()}
        return {"model_spec": {"name": model.name, "signature_name": "",
                               "version": str(version.number)},
                "metadata": {"signature_def": {"signature_def": signatures}}}

    async def predict(self, request):
        model, number = self.model(request)
        version = model.version(number)
        body = read_body(await request.read())
        signature = body.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(signature, str):
            raise RequestError(f"\"signature_name\" must be a string, got {_describe(signature)}")
        if signature not in version.signatures:
            raise RequestError(f"model {model.name!r} version {version.number} has no "
                               f"signature {signature!r}; signatures: "
                               f"{sorted(version.signatures)}")
        arrays, form = parse_predict(body, version.signatures[signature])
        if self.waiting >= self.max_queue:
            raise RequestError(f"overloaded: {self.waiting} requests are waiting (max_queue="
                               f"{self.max_queue}); retry later", 503)
        key = (model.name, version.number, signature,
               tuple((name, array.shape[1:]) for name, array in sorted(arrays.items())))
        if key not in self.batchers:
            self.batchers[key] = Batcher(version, signature, self.max_batch_size, self.wait)
        self.waiting += 1
        try:
            outputs = await self.batchers[key].call(arrays)
        finally:
            self.waiting -= 1
        self.answered += 1
        return answer(outputs, form)


def application(server: Server, max_body_bytes: int):
    from aiohttp import web

    def json_response(content, status=200):
        return web.Response(body=orjson.dumps(content), status=status,
                            content_type="application/json")

    def route(method):
        async def handle(request):
            return json_response(await method(request))
        return handle

    @web.middleware
    async def errors_as_json(request, handler):
        try:
            return await handler(request)
        except RequestError as error:
            return json_response({"error": str(error)}, status=error.status)
        except web.HTTPRequestEntityTooLarge:
            return json_response({"error": f"request body over {max_body_bytes} bytes "
                                           "(--max_body_mb)"}, status=413)
        except web.HTTPException as error:
            return json_response({"error": f"{error.reason}: {request.method} "
                                           f"{request.path}"}, status=error.status)
        except Exception as error:  # a bug: say so, print it, keep serving
            traceback.print_exc()
            return json_response({"error": f"internal error: {type(error).__name__}: "
                                           f"{error}"}, status=500)

    app = web.Application(middlewares=[errors_as_json], client_max_size=max_body_bytes)
    model = "/v1/models/{name}"
    version = "/v1/models/{name}/versions/{version}"
    for prefix in (model, version):
        app.router.add_get(prefix, route(server.status))
        app.router.add_get(prefix + "/metadata", route(server.metadata))
        app.router.add_post(prefix + ":predict", route(server.predict))
    return app


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m toolkit.launcher.serve",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True,
                        help="a run folder, a model base path, or a folder of those")
    parser.add_argument("--model_name", default="")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--batch_timeout_ms", type=float, default=0.0)
    parser.add_argument("--max_queue", type=int, default=256)
    parser.add_argument("--max_body_mb", type=float, default=16.0)
    options = parser.parse_args(argv)
    try:
        for key in ("max_batch_size", "max_queue", "port"):
            if getattr(options, key) < 1:
                raise errors.ConfigError(f"--{key} must be >= 1, got {getattr(options, key)}")
        if options.batch_timeout_ms < 0 or options.max_body_mb <= 0:
            raise errors.ConfigError("--batch_timeout_ms must be >= 0 and --max_body_mb > 0")
        with log_noise.hidden(False):
            models = load_models(options.model, options.model_name)
    except errors.UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return errors.USER_ERROR_EXIT_CODE
    from aiohttp import web

    server = Server(models, options.max_batch_size, options.batch_timeout_ms,
                    options.max_queue)
    for model in models.values():
        print(f"[serve] {model.name}: versions {sorted(model.versions)} "
              f"({model.version(None).path})", flush=True)
    print(f"[serve] http://{options.host}:{options.port}/v1/models/<name>[:predict]; "
          f"batches of up to {options.max_batch_size}, waiting {options.batch_timeout_ms} ms",
          flush=True)
    web.run_app(application(server, int(options.max_body_mb * 2 ** 20)), host=options.host,
                port=options.port, print=None, shutdown_timeout=30, handle_signals=True)
    calls = sum(batcher.calls for batcher in server.batchers.values())
    print(f"[serve] stopped: {server.answered} predictions answered in {calls} model calls",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
