"""Serve: an HTTP model server for one model version, fast enough to need one core.

Endpoints (what the Deployment's probes and the rollout's health gate use):
  GET  /healthz   200 while the process is alive
  GET  /readyz    200 once the model is loaded and warmed, 503 before
  GET  /metadata  model name, version, run id, aliases it was resolved through
  POST /predict   {"instances": [{feature: value, ...}, ...]} -> {"predictions": [...]}: a
                  score a row (a probability, or a regression's value), or for a multiclass
                  model a probability per class a row, with "classes" naming them in order;
                  MLflow's {"dataframe_records": [...]} is accepted too. Bad input gets a 400
                  that says what is wrong and where, never a 500.
  GET  /metrics   Prometheus: requests and errors by endpoint and code, latency histogram,
                  the histogram of predicted scores (what a rollout compares between
                  versions), the model version being served

A request that carries ``x-helmsman-compare`` (the rollout adds it, through the Gateway, while
it mirrors traffic to a new version) gets its predictions logged with its ``x-request-id``,
so the rollout can pair the stable and the shadow version's answers to the same request.

The model is the version's ONNX graph on ONNX Runtime (helmsman_steps.runtime; a version from
before ONNX: its numpy export), with the featurizer and request type derived from the spec the
version was trained with; it is loaded after the port is bound so /healthz answers during the
download; the server is a bare ASGI app on uvicorn with
uvloop and httptools, and requests are decoded and validated in one pass by msgspec.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from helmsman_steps import logs, registry
from helmsman_steps.exitcodes import BadInputError, ExitCode
from helmsman_steps.modelinfo import PROBABILITY_BUCKETS, ModelInfo, score_counts
from helmsman_steps.runtime import Predictor, load_scorer

log = logs.get(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_BATCH = 10_000
MAX_BODY_BYTES = 8 * 1024 * 1024


# The raw columns of versions registered without a spec (before model.yaml): churn's.
DEFAULT_COLUMNS: dict[str, dict[str, Any]] = dict(ModelInfo.churn().raw_columns)  # type: ignore[arg-type]


def instance_type(columns: Mapping[str, Mapping[str, Any]]) -> type[msgspec.Struct]:
    """A msgspec type for one input row, derived from the spec's raw columns (``schema.columns``
    of model.yaml, as the version stored it): a number within its range, a category within its
    vocabulary, ``null`` only where the column is nullable, no other field. A bad row is a 400
    whose message names the field, e.g. ``Expected `float` >= 18.0 - at `$.instances[0].age```.

    The spec arrives as plain JSON (validated when the DAG was parsed and again by training):
    the server does not import pydantic for it.
    """
    fields: list[tuple[str, Any]] = []
    for name, column in columns.items():
        kind: Any
        if column["type"] == "category":
            kind = Literal[tuple(column["vocabulary"])]
        else:
            bounds = column.get("range")
            number: type = int if column["type"] == "int" else float
            if bounds is None:
                kind = number
            elif number is int:  # whole bounds: the first and last whole values allowed
                low, high = math.ceil(bounds[0]), math.floor(bounds[1])
                kind = Annotated[int, msgspec.Meta(ge=low, le=high)]
            else:
                kind = Annotated[float, msgspec.Meta(ge=bounds[0], le=bounds[1])]
        fields.append((name, kind | None if column.get("nullable") else kind))
    return msgspec.defstruct("Instance", fields, forbid_unknown_fields=True)


def request_type(columns: Mapping[str, Mapping[str, Any]]) -> type[msgspec.Struct]:
    """``{"instances": [row, ...]}``, or MLflow's ``{"dataframe_records": [...]}``."""
    row = instance_type(columns)
    return msgspec.defstruct(
        "PredictRequest",
        [("instances", list[row] | None, None), ("dataframe_records", list[row] | None, None)],  # type: ignore[valid-type]
        forbid_unknown_fields=True,
    )


@dataclass
class Metrics:
    """Prometheus collectors in a registry of their own (no process-global state)."""

    registry: Any = field(init=False)

    def __post_init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "helmsman_requests", "HTTP requests by endpoint and status code",
            ["endpoint", "code"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "helmsman_request_seconds", "Request latency by endpoint", ["endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )  # fmt: skip
        self.rows = Counter("helmsman_predicted_rows", "Rows scored", registry=self.registry)
        self.predictions = PredictionHistogram()
        self.registry.register(self.predictions)
        self.model = Gauge(
            "helmsman_model_info", "The model version being served (value 1)",
            ["name", "version", "run_id"], registry=self.registry,
        )  # fmt: skip


COMPARE_HEADER = b"x-helmsman-compare"
REQUEST_ID_HEADER = b"x-request-id"


class PredictionHistogram:
    """``helmsman_prediction``: a Prometheus histogram of predicted scores, counted per batch
    with numpy (one ``observe`` per row would cost more than the model for large batches).
    Its buckets are the model's (``ModelInfo.prediction_buckets``), set before it serves."""

    def __init__(self, bounds: tuple[float, ...] = PROBABILITY_BUCKETS) -> None:
        self.lock = threading.Lock()
        self.reset(bounds)

    def reset(self, bounds: tuple[float, ...]) -> None:
        with self.lock:
            self.bounds = bounds
            self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)
            self.total = 0.0

    def observe(self, scores: np.ndarray) -> None:
        counts = score_counts(scores, self.bounds)
        with self.lock:
            self.counts += counts
            self.total += float(scores.sum())

    def collect(self) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        with self.lock:
            cumulative = np.cumsum(self.counts).tolist()
            total, bounds = self.total, self.bounds
        buckets = [(str(b), c) for b, c in zip(bounds, cumulative, strict=False)]
        family = HistogramMetricFamily("helmsman_prediction", "Predicted scores")
        family.add_metric([], [*buckets, ("+Inf", cumulative[-1])], total)
        yield family


def fetch(model_uri: str, destination: str) -> tuple[registry.ResolvedModel, str, str | None]:
    """Resolve and download the model in a child process (``helmsman-step fetch-model``).

    MLflow's client is what the download needs and nothing else does: imported here it would
    stay resident for the pod's life (~130 MB of each serving pod's ~170 MB). In a child it
    leaves when the download is done. The child's log lines go to this process's stderr; its
    exit code keeps its meaning (2: a model URI a person must fix).
    """
    cmd = [sys.executable, "-m", "helmsman_steps", "fetch-model",
           "--model-uri", model_uri, "--dest", destination]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)  # noqa: S603
    sys.stderr.write(proc.stderr)
    if proc.returncode:
        reason = _last_error(proc.stderr) or f"exit code {proc.returncode}"
        if proc.returncode == ExitCode.BAD_INPUT:
            raise BadInputError(reason)
        raise RuntimeError(f"fetching {model_uri} failed: {reason}")
    found = json.loads(proc.stdout)
    resolved = registry.ResolvedModel(
        found["name"], found["version"], found["run_id"], tuple(found["aliases"])
    )
    return resolved, str(found["path"]), found.get("spec_path")


def _last_error(stderr: str) -> str:
    """The error of the child's last JSON log line that has one."""
    for line in reversed(stderr.splitlines()):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("error"):
                return str(record["error"])
    return ""


class App:
    """The ASGI application."""

    def __init__(self, model_uri: str) -> None:
        self.model_uri = model_uri
        self.model: Predictor | None = None
        self.resolved: registry.ResolvedModel | None = None
        self.metrics = Metrics()
        self.columns: tuple[str, ...] = ()
        self.classes: dict[str, Any] = {}  # a multiclass model's {"classes": [...]}
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            request_type(DEFAULT_COLUMNS)
        )
        self.encoder = msgspec.json.Encoder()
        self.load_error: BaseException | None = None
        self.draining = False  # SIGTERM received: answer, but leave the endpoints

    # -- model loading -------------------------------------------------------------------
    def load(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            resolved, path, spec_path = fetch(self.model_uri, tmp)
            info = ModelInfo.from_file(spec_path, resolved.name)
            model = Predictor(info, load_scorer(path))
        self.decoder = msgspec.json.Decoder(request_type(info.raw_columns))
        self.columns = tuple(info.input_columns)
        self.classes = {"classes": list(info.classes or ())} if info.task == "multiclass" else {}
        self.metrics.predictions.reset(info.prediction_buckets())
        # Warm up: the first calls allocate and pick kernels; do it before saying ready.
        sample = info.sample()
        for _ in range(3):
            model.predict(sample)
        self.metrics.model.labels(resolved.name, resolved.version, resolved.run_id).set(1)
        self.resolved, self.model = resolved, model
        log.info("model ready", model=resolved.name, version=resolved.version)

    # -- HTTP ----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        path, method = scope["path"], scope["method"]
        endpoint = (
            path
            if path in ("/healthz", "/readyz", "/metadata", "/predict", "/metrics")
            else "other"
        )
        try:
            code, body, content_type = await self._route(path, method, receive, scope["headers"])
        except Exception:  # a bug must still answer, and be counted
            log.exception("unhandled error", path=path)
            code, body, content_type = 500, b'{"error":"internal error"}', b"application/json"
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if self.draining:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.requests.labels(endpoint, str(code)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _json(self, code: int, payload: Any) -> tuple[int, bytes, bytes]:
        return code, self.encoder.encode(payload), b"application/json"

    async def _route(
        self, path: str, method: str, receive: Receive, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[int, bytes, bytes]:
        if path == "/healthz":
            return self._json(200, {"status": "alive"})
        if path == "/readyz":
            if self.draining:
                return self._json(503, {"status": "draining"})
            if self.model is None:
                return self._json(503, {"status": "loading model"})
            return self._json(200, {"status": "ready"})
        if path == "/metadata":
            if self.resolved is None:
                return self._json(503, {"status": "loading model"})
            r = self.resolved
            return self._json(200, {"model_name": r.name, "model_version": r.version,
                                    "run_id": r.run_id, "model_uri": self.model_uri,
                                    "aliases": list(r.aliases), **self.classes})  # fmt: skip
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST.encode()
        if path == "/predict":
            if method != "POST":
                return self._json(405, {"error": "use POST with a JSON body"})
            return self._predict(await self._body(receive), headers)
        return self._json(404, {"error": f"no such endpoint: {path}"})

    async def _body(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _predict(
        self, body: bytes | None, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> tuple[int, bytes, bytes]:
        model = self.model
        if model is None or self.resolved is None:
            return self._json(503, {"error": "model not loaded yet"})
        if body is None:
            return self._json(413, {"error": f"request body over {MAX_BODY_BYTES} bytes"})
        try:
            request = self.decoder.decode(body)
        except msgspec.ValidationError as exc:
            return self._json(400, {"error": f"invalid request: {exc}"})
        except msgspec.DecodeError as exc:
            return self._json(400, {"error": f"request body is not valid JSON: {exc}"})
        rows = request.instances if request.instances is not None else request.dataframe_records
        if not rows:
            return self._json(
                400, {"error": 'send {"instances": [ {...}, ... ]} with at least one row'}
            )
        if len(rows) > MAX_BATCH:
            return self._json(400, {"error": f"{len(rows)} rows is over the {MAX_BATCH}-row limit"})
        columns = {name: [getattr(r, name) for r in rows] for name in self.columns}
        predictions = model.predict(columns)
        self.metrics.rows.inc(len(rows))
        self.metrics.predictions.observe(model.info.observed(predictions))
        sent = dict(headers)
        if COMPARE_HEADER in sent:
            request_id = sent.get(REQUEST_ID_HEADER, b"").decode("latin-1")
            log.info("prediction", request_id=request_id, predictions=predictions.tolist(),
                     version=self.resolved.version)  # fmt: skip
        return self._json(200, {"predictions": predictions.tolist(), **self.classes,
                                "model_version": self.resolved.version})  # fmt: skip


def serve(
    model_uri: str, host: str, port: int, graceful_seconds: int = 20, drain_seconds: float = 0
) -> int:
    """Bind, load the model in the background, serve until SIGTERM; return the exit code.

    On SIGTERM the server first drains for ``drain_seconds``: ``/readyz`` answers 503 (so the
    pod leaves its Services' endpoints) and every answer closes its connection (so keep-alive
    clients and proxies reconnect to another pod), while requests are still served. Only then
    does it stop, waiting up to ``graceful_seconds`` for requests in flight. Without the drain,
    requests that proxies send over connections to a pod that just stopped fail.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if drain_seconds > 0 and not app.draining:
                app.draining = True
                log.info("draining before shutdown", seconds=drain_seconds)
                timer = threading.Timer(drain_seconds, self.handle_exit, (sig, frame))
                timer.daemon = True
                timer.start()
                return
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after a graceful shutdown, so the process would end
            # "killed by SIGTERM" (143). A drained shutdown is the normal end of a pod: exit 0.
            self._captured_signals.clear()

    app = App(model_uri)
    config = uvicorn.Config(
        app, host=host, port=port, loop="uvloop", http="httptools", lifespan="on",
        access_log=False, log_level="warning", timeout_graceful_shutdown=graceful_seconds,
    )  # fmt: skip
    server = Server(config)

    def load() -> None:
        try:
            app.load()
        except BaseException as exc:
            app.load_error = exc
            log.error("model failed to load; shutting down", model_uri=model_uri, error=str(exc))
            server.should_exit = True

    threading.Thread(target=load, name="model-loader", daemon=True).start()
    log.info("serving", host=host, port=port, model_uri=model_uri)
    server.run()
    if isinstance(app.load_error, BadInputError):
        return ExitCode.BAD_INPUT
    if app.load_error is not None:
        return ExitCode.INTERNAL
    return ExitCode.OK
