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
  /v2/...         the Open Inference Protocol v2 (KServe, Triton, MLServer clients): server
                  and model metadata, liveness and readiness, and
                  POST /v2/models/{name}[/versions/{version}]/infer with one input tensor per
                  raw column (shape [rows], FP32/FP64 or INT* for numbers, BYTES for
                  categories), answering the output tensor ``score`` ([rows], or [rows,
                  classes]); the same checks as /predict, errors as {"error": ...}
  GET  /metrics   Prometheus: requests and errors by endpoint and code, latency histogram,
                  the histogram of predicted scores (what a rollout compares between
                  versions), the model version being served, the inference log's records
                  sampled, written and dropped

With ``--log-sample`` a share of the scored requests is written, off the request path, to the
model's inference log in the dataset store (helmsman_steps.inference_log), which the model's
monitor compares with its training data.

A request that carries ``x-helmsman-compare`` (the rollout adds it, through the Gateway, while
it mirrors traffic to a new version) gets its predictions logged with its ``x-request-id``,
so the rollout can pair the stable and the shadow version's answers to the same request.

The model is the version's ONNX graph on ONNX Runtime (helmsman_steps.runtime; a version from
before ONNX: its numpy export), with the featurizer and request type derived from the spec the
version was trained with; it is loaded after the port is bound so /healthz answers during the
download; the server is a bare ASGI app on uvicorn with
uvloop and httptools, and requests are decoded and validated in one pass by msgspec. With
``--workers N`` it runs N such processes on the one port (``serve``), their metrics summed.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import gc
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import numpy as np
from msgspec.structs import astuple

from helmsman_steps import contract, logs, registry
from helmsman_steps.exitcodes import BadInputError, ExitCode
from helmsman_steps.inference_log import InferenceLog
from helmsman_steps.modelinfo import PROBABILITY_BUCKETS, ModelInfo, score_counts
from helmsman_steps.runtime import Predictor, load_scorer
from helmsman_steps.store import DatasetStore
from helmsman_steps.tally import MULTIPROC_ENV, Tally

log = logs.get(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_BATCH = 10_000
# Micro-batching's default bound on a call's rows. Four 64-row requests share a call: the
# model call's cost is mostly per call at these sizes (measured with wrk, 64-row requests, one
# worker: 1.50x the rows/s of a 64-row bound under 4 clients, 1.27x under 32, and a lower p99
# under both; 512 and 1024 rows gave the same within the noise). Batch 1 is unchanged: its
# calls hold one row per client.
BATCH_MAX_ROWS = 256
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


class V2Input(msgspec.Struct, forbid_unknown_fields=True):
    """An Open Inference Protocol v2 input tensor (its JSON form)."""

    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class V2Output(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    parameters: dict[str, Any] | None = None


class V2Request(msgspec.Struct, forbid_unknown_fields=True):
    """An Open Inference Protocol v2 inference request."""

    inputs: list[V2Input]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2Output] | None = None


# The v2 datatypes each column type takes: numbers as any numeric tensor (a whole-number float
# column may arrive as INT64 from a client's integer array), categories as strings.
_V2_INTS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
V2_DATATYPES = {"float": ("FP32", "FP64", "FP16", *_V2_INTS), "int": _V2_INTS,
                "category": ("BYTES",)}  # fmt: skip
V2_DECLARED = {"float": "FP32", "int": "INT64", "category": "BYTES"}  # what metadata lists
_ROW_PATH = re.compile(r"`\$\[(\d+)\]\.(\w+)`")


@dataclass
class Metrics:
    """Prometheus collectors in a registry of their own (no process-global state)."""

    registry: Any = field(init=False)
    exposed: Any = field(init=False)

    def __post_init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        # Collectors live in ``registry``; ``/metrics`` renders ``exposed``: the same registry
        # in one process; with several workers (multiprocess mode, its folder in the
        # environment before prometheus_client is imported), every worker's files summed.
        self.registry = CollectorRegistry()
        folder = os.environ.get(MULTIPROC_ENV)
        if folder:
            from prometheus_client.multiprocess import MultiProcessCollector

            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed, folder)  # type: ignore[no-untyped-call]
        else:
            self.exposed = self.registry
        self.answered = RequestCounts()
        self.exposed.register(self.answered)
        self.predictions = PredictionHistogram()
        self.exposed.register(self.predictions)
        self.model = Gauge(
            "helmsman_model_info", "The model version being served (value 1)",
            ["name", "version", "run_id"], registry=self.registry, multiprocess_mode="max",
        )  # fmt: skip

    def request(self, endpoint: str, code: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.answered.request(endpoint, code, seconds)

    def scored(self, info: ModelInfo, scores: np.ndarray) -> None:
        """Count one model call: its rows, and their scores in the prediction histogram."""
        self.answered.scored(len(scores))
        self.predictions.observe(info.observed(scores))


# What ``helmsman_requests_total`` and ``helmsman_request_seconds`` are counted by.
ENDPOINTS = ("/predict", "/v2/infer", "/healthz", "/readyz", "/metadata", "/metrics", "/v2",
             "other")  # fmt: skip
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_CODES = 500  # HTTP status codes 100-599


class RequestCounts:
    """``helmsman_requests_total`` (by endpoint and status code), ``helmsman_request_seconds``
    (a latency histogram by endpoint), ``helmsman_predicted_rows_total`` and
    ``helmsman_model_calls_total``, exposed as Prometheus counters and a histogram.

    Counted as plain increments of ``Tally`` arrays (so they add up across workers) and turned
    into metric families when scraped: prometheus_client's labelled counter and histogram
    cost about five times as much per request (measured: 2.8 us against 0.6), on a request
    path whose own work is tens of microseconds."""

    def __init__(self) -> None:
        self.slot = {endpoint: i for i, endpoint in enumerate(ENDPOINTS)}
        self.width = len(LATENCY_BUCKETS) + 2  # a count per bucket (+Inf last), then the sum
        self.tallies = (Tally("requests", len(ENDPOINTS) * _CODES),
                        Tally("request_seconds", len(ENDPOINTS) * self.width),
                        Tally("model", 2))  # rows scored, model calls  # fmt: skip
        self.requests, self.latency, self.model = (t.values for t in self.tallies)

    def request(self, endpoint: str, code: int, seconds: float) -> None:
        slot = self.slot.get(endpoint, len(ENDPOINTS) - 1)  # "other"
        if not 100 <= code < 100 + _CODES:
            raise ValueError(f"HTTP status {code} is not one (100-599)")
        self.requests[slot * _CODES + code - 100] += 1
        at = slot * self.width
        self.latency[at + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency[at + self.width - 1] += seconds

    def scored(self, rows: int) -> None:
        self.model[0] += rows
        self.model[1] += 1

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        totals = [t.totals() for t in self.tallies]
        requests = totals[0].reshape(len(ENDPOINTS), _CODES)
        family = CounterMetricFamily("helmsman_requests", "HTTP requests by endpoint and "
                                     "status code", labels=["endpoint", "code"])  # fmt: skip
        for slot, code in zip(*np.nonzero(requests), strict=True):
            family.add_metric([ENDPOINTS[slot], str(code + 100)], float(requests[slot, code]))
        yield family
        latency = totals[1].reshape(len(ENDPOINTS), self.width)
        histogram = HistogramMetricFamily(
            "helmsman_request_seconds", "Request latency by endpoint", labels=["endpoint"]
        )
        bounds = [floatToGoString(b) for b in (*LATENCY_BUCKETS, math.inf)]  # type: ignore[no-untyped-call]
        for slot in np.flatnonzero(latency[:, :-1].sum(axis=1)):
            cumulative = np.cumsum(latency[slot, :-1]).tolist()
            histogram.add_metric(
                [ENDPOINTS[slot]],
                list(zip(bounds, cumulative, strict=True)),
                float(latency[slot, -1]),
            )
        yield histogram
        rows, calls = totals[2].tolist()
        yield CounterMetricFamily("helmsman_predicted_rows", "Rows scored", value=rows)
        yield CounterMetricFamily(
            "helmsman_model_calls",
            "Model calls (fewer than requests when micro-batching)",
            value=calls,
        )


class MicroBatcher:
    """Adaptive micro-batching: the requests waiting to be scored at the same moment share
    one model call (a batch that reaches ``max_rows`` rows is scored at once; a request is
    never split), and each gets its own rows back.

    With ``window_s`` 0 (the default) nothing waits on a clock: the batch is scored once a
    turn of the event loop has read no new request, at most ``MAX_TURNS`` turns after the
    first request joined it. One client alone gets its own call two callbacks later, after one
    more poll of the sockets (microseconds); under load the batches grow by themselves, and so
    do the savings. Scoring on the very next turn instead cut the batches short: under 4
    clients the requests arrive a few microseconds apart, just after that turn's poll
    (measured with wrk as bench/serving_bench.py runs it, 4 clients of one row: 2.2 requests a
    call and 6,048 req/s scored on the next turn; 7,974 waiting up to one more turn, 8,092 and
    4.0 requests a call up to two). A window above 0 also waits that long for more, which
    pays only where clients outnumber what the model can take per call. uvloop times
    callbacks in whole milliseconds: 0.5 rounds to 0, 1.5 to 2. ``max_rows`` 1 scores every
    request alone (on the loop's next turn, as a full batch is).

    A full batch, too, is scored on the loop's next turn rather than inside the request that
    filled it: requests scored without ever yielding to the event loop held the tail up
    (measured: 64-row requests under 32 clients, p99 141 -> 35 ms, the same throughput).

    A request is its validated rows; ``columns`` turns a call's rows into the model's
    columns, once per call. ``scored`` is called with the scores of each call that returned
    them (the metrics count calls, rows and scores there: rows of a request whose client went
    away were scored, and count; a call that failed does not)."""

    MAX_TURNS = 2

    def __init__(
        self,
        model: Predictor,
        window_s: float,
        max_rows: int,
        columns: Callable[[list[Any]], Mapping[str, list[Any]]],
        scored: Callable[[np.ndarray], None],
    ) -> None:
        self.model, self.window_s, self.max_rows = model, window_s, max_rows
        self.columns, self.scored = columns, scored
        self.pending: list[tuple[list[Any], asyncio.Future[np.ndarray]]] = []
        self.rows = 0
        self.timer: asyncio.Handle | None = None
        self.turns, self.seen = 0, 0  # turns waited; requests pending at the last one

    async def predict(self, rows: list[Any]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self.pending.append((rows, future))
        self.rows += len(rows)
        if self.rows >= self.max_rows:  # full: no one else joins it
            loop.call_soon(self._score, self._take())
        elif self.timer is None:
            self.timer = loop.call_later(self.window_s, self.flush)  # 0: call_soon
        return await future

    def _take(self) -> list[Any]:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        batch, self.pending, self.rows = self.pending, [], 0
        self.turns, self.seen = 0, 0
        return batch

    def flush(self) -> None:
        """Score what is pending, unless the last turn brought more (then wait one more)."""
        if self.turns < self.MAX_TURNS and len(self.pending) != self.seen:
            self.turns, self.seen = self.turns + 1, len(self.pending)
            self.timer = asyncio.get_running_loop().call_soon(self.flush)
            return
        self._score(self._take())

    def _score(self, batch: list[Any]) -> None:
        if not batch:
            return
        try:
            rows = batch[0][0] if len(batch) == 1 else [r for rows, _ in batch for r in rows]
            scores = self.model.predict(self.columns(rows))
            if len(scores) != len(rows):
                raise RuntimeError(f"the model returned {len(scores)} scores for {len(rows)} rows")
            self.scored(scores)
        except Exception as exc:  # every waiting request answers it (a 500, and is counted)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for rows, future in batch:
            if not future.done():  # a client that went away
                future.set_result(scores[start : start + len(rows)])
            start += len(rows)


COMPARE_HEADER = b"x-helmsman-compare"
REQUEST_ID_HEADER = b"x-request-id"
VERIFY_HEADER = contract.VERIFY_HEADER.encode()  # the platform's own checks: not logged


class PredictionHistogram:
    """``helmsman_prediction``: a Prometheus histogram of predicted scores. Its buckets are the
    model's (``ModelInfo.prediction_buckets``), set before it serves. The counts are a
    ``Tally``: they add up across the server's workers.

    The scores are binned with numpy, not one ``observe`` a row, and not one call a request:
    a call's scores wait until ``FOLD_ROWS`` of them have, ``FOLD_SECONDS`` after the first
    one (another worker's scrape reads this one's counts as they were folded), or this
    worker's own scrape, and are binned together. Binning each call's 64 scores as they came
    cost 7% of the server's time under 64-row requests; an observe is now an append."""

    FOLD_ROWS = 4096
    FOLD_SECONDS = 1.0

    def __init__(self, bounds: tuple[float, ...] = PROBABILITY_BUCKETS) -> None:
        self.lock = threading.Lock()
        self.waiting: list[np.ndarray] = []
        self.waiting_rows = 0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_loop: asyncio.AbstractEventLoop | None = None  # the loop it was set on
        self.reset(bounds)

    def reset(self, bounds: tuple[float, ...]) -> None:
        with self.lock:
            self.bounds = bounds
            # a count per bucket (the last one past every bound), then the sum of the scores
            self.tally = Tally("prediction", len(bounds) + 2)
            self.counts = self.tally.values
            self.waiting, self.waiting_rows = [], 0

    def observe(self, scores: np.ndarray) -> None:
        with self.lock:
            self.waiting.append(scores)
            self.waiting_rows += len(scores)
            full = self.waiting_rows >= self.FOLD_ROWS
        if not full:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop to wait on: count them now
                full = True
            else:  # a timer set on another loop (one that has ended) will never fire
                if self.timer is None or self.timer_loop is not loop:
                    self.timer = loop.call_later(self.FOLD_SECONDS, self.fold)
                    self.timer_loop = loop
        if full:
            self.fold()

    def fold(self) -> None:
        """Bin the waiting scores into the counts."""
        with self.lock:
            if self.timer is not None and self.timer_loop is not None:
                if not self.timer_loop.is_closed():
                    self.timer.cancel()
                self.timer = self.timer_loop = None
            waiting, self.waiting, self.waiting_rows = self.waiting, [], 0
            if not waiting:
                return
            scores = np.concatenate(waiting) if len(waiting) > 1 else waiting[0]
            total = len(self.bounds) + 1
            self.counts[:total] += score_counts(scores, self.bounds)
            self.counts[total] += float(scores.sum())

    def collect(self) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        self.fold()
        with self.lock:
            tally, bounds = self.tally, self.bounds
        totals = tally.totals()
        cumulative = np.cumsum(totals[:-1]).tolist()
        buckets = [(str(b), c) for b, c in zip(bounds, cumulative, strict=False)]
        family = HistogramMetricFamily("helmsman_prediction", "Predicted scores")
        family.add_metric([], [*buckets, ("+Inf", cumulative[-1])], float(totals[-1]))
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


class Fetched(NamedTuple):
    """A model version on local disk: what it resolved to, its model and spec files."""

    resolved: registry.ResolvedModel
    path: str
    spec_path: str | None


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

    def __init__(
        self,
        model_uri: str,
        batch_window_ms: float = 0,
        batch_max_rows: int = BATCH_MAX_ROWS,
        log_sample: float = 0,
        dataset_uri: str = "",
    ) -> None:
        self.model_uri = model_uri
        self.log_sample, self.dataset_uri = log_sample, dataset_uri
        self.inference_log: InferenceLog | None = None
        self.batch_window_s, self.batch_max_rows = batch_window_ms / 1000, batch_max_rows
        self.batcher: MicroBatcher | None = None
        self.model: Predictor | None = None
        self.resolved: registry.ResolvedModel | None = None
        self.metrics = Metrics()
        self.columns: tuple[str, ...] = ()
        self.rows_type: Any = None  # the v2 rows' type, set with the model
        self.classes: dict[str, Any] = {}  # a multiclass model's {"classes": [...]}
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            request_type(DEFAULT_COLUMNS)
        )
        self.encoder = msgspec.json.Encoder()
        self.load_error: BaseException | None = None
        self.draining = False  # SIGTERM received: answer, but leave the endpoints

    # -- model loading -------------------------------------------------------------------
    def load(self, folder: str | None = None) -> Fetched:
        """Fetch the model (into ``folder``, kept for workers; else a temporary one) and load
        it; what was fetched, for the workers to load in turn."""
        with contextlib.ExitStack() as stack:
            folder = folder or stack.enter_context(tempfile.TemporaryDirectory())
            fetched = Fetched(*fetch(self.model_uri, folder))
            self.load_fetched(fetched)
        return fetched

    def load_fetched(self, fetched: Fetched) -> None:
        """Load and warm a fetched model; then the server is ready."""
        resolved, path, spec_path = fetched
        info = ModelInfo.from_file(spec_path, resolved.name)
        model = Predictor(info, load_scorer(path))
        self.decoder = msgspec.json.Decoder(request_type(info.raw_columns))
        self.rows_type = list[instance_type(info.raw_columns)]  # type: ignore[misc]
        self.columns = tuple(info.input_columns)
        self.classes = {"classes": list(info.classes or ())} if info.task == "multiclass" else {}
        self.metrics.predictions.reset(info.prediction_buckets())
        # Warm up: the first calls allocate and pick kernels; do it before saying ready.
        sample = info.sample()
        for _ in range(3):
            model.predict(sample)
        self.metrics.model.labels(resolved.name, resolved.version, resolved.run_id).set(1)
        scored = functools.partial(self.metrics.scored, info)
        self.batcher = MicroBatcher(
            model, self.batch_window_s, self.batch_max_rows, self._columns, scored
        )
        if self.log_sample > 0:
            store = DatasetStore(f"{self.dataset_uri.rstrip('/')}/{resolved.name}")
            types = {c: info.raw_columns[c]["type"] for c in self.columns}
            classes = info.n_outputs if info.task == "multiclass" else None
            self.inference_log = InferenceLog(store, types, self.log_sample, classes)
            self.metrics.exposed.register(self.inference_log)
        self.resolved, self.model = resolved, model
        # What is loaded now lives as long as the process: out of the garbage collector's
        # sight, a full collection (measured: 25 ms with pyarrow loaded) costs about 1 ms.
        gc.freeze()
        log.info("model ready", model=resolved.name, version=resolved.version)

    def close(self) -> None:
        """After the last request is answered: bin the scores still waiting (a worker's
        counts outlive it) and write what the inference log has queued."""
        self.metrics.predictions.fold()
        if self.inference_log is not None:
            self.inference_log.close()

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
            else ("/v2/infer" if path.endswith("/infer") else "/v2")
            if path.startswith("/v2")
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
        self.metrics.request(endpoint, code, time.perf_counter() - started)

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

            return 200, generate_latest(self.metrics.exposed), CONTENT_TYPE_LATEST.encode()
        if path == "/predict":
            if method != "POST":
                return self._json(405, {"error": "use POST with a JSON body"})
            return await self._predict(await self._body(receive), headers)
        if path == "/v2" or path.startswith("/v2/"):
            return await self._v2(path, method, receive, headers)
        return self._json(404, {"error": f"no such endpoint: {path}"})

    # -- Open Inference Protocol v2 ------------------------------------------------------
    async def _v2(
        self, path: str, method: str, receive: Receive, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[int, bytes, bytes]:
        parts = [p for p in path.split("/") if p][1:]  # after "v2"
        if not parts:
            from helmsman_steps import __version__

            return self._json(200, {"name": "helmsman", "version": __version__, "extensions": []})
        if parts == ["health", "live"]:
            return self._json(200, {"live": True})
        if parts == ["health", "ready"]:
            ready = self.model is not None and not self.draining
            return self._json(200 if ready else 503, {"ready": ready})
        if parts[0] != "models" or len(parts) < 2:
            return self._json(404, {"error": f"no such endpoint: {path}"})
        name, rest = parts[1], parts[2:]
        version = None
        if rest[:1] == ["versions"]:
            if len(rest) < 2:
                return self._json(404, {"error": f"no such endpoint: {path}"})
            version, rest = rest[1], rest[2:]
        model, resolved = self.model, self.resolved
        if model is None or resolved is None:
            return self._json(503, {"error": "model not loaded yet"})
        if name != resolved.name or version not in (None, resolved.version):
            asked = f"version {version} of {name!r}" if version else f"model {name!r}"
            served = f"version {resolved.version} of {resolved.name!r}"
            return self._json(404, {"error": f"{asked} is not served here: this server serves "
                                             f"{served}"})  # fmt: skip
        if rest == []:
            return self._json(200, self._v2_metadata(model.info, resolved))
        if rest == ["ready"]:
            return self._json(200, {"name": name, "ready": True})
        if rest == ["infer"]:
            if method != "POST":
                return self._json(405, {"error": "use POST with a JSON inference request"})
            return await self._v2_infer(model, resolved, await self._body(receive), headers)
        return self._json(404, {"error": f"no such endpoint: {path}"})

    def _v2_metadata(self, info: ModelInfo, resolved: registry.ResolvedModel) -> dict[str, Any]:
        shape = [-1, info.n_outputs] if info.task == "multiclass" else [-1]
        meta: dict[str, Any] = {
            "name": resolved.name, "versions": [resolved.version], "platform": "onnxruntime_onnx",
            "inputs": [{"name": c, "datatype": V2_DECLARED[info.raw_columns[c]["type"]],
                        "shape": [-1]} for c in self.columns],
            "outputs": [{"name": "score", "datatype": "FP32", "shape": shape}],
        }  # fmt: skip
        if self.classes:
            meta["properties"] = {"classes": json.dumps(self.classes["classes"])}
        return meta

    async def _v2_infer(
        self,
        model: Predictor,
        resolved: registry.ResolvedModel,
        body: bytes | None,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> tuple[int, bytes, bytes]:
        info = model.info
        if body is None:
            return self._json(413, {"error": f"request body over {MAX_BODY_BYTES} bytes"})
        try:
            request = msgspec.json.decode(body, type=V2Request)
        except msgspec.ValidationError as exc:
            return self._json(400, {"error": f"invalid inference request: {exc}"})
        except msgspec.DecodeError as exc:
            return self._json(400, {"error": f"request body is not valid JSON: {exc}"})
        rows, problem = self._v2_rows(request.inputs, info)
        if problem:
            return self._json(400, {"error": problem})
        unknown = sorted({o.name for o in request.outputs or ()} - {"score"})
        if unknown:
            return self._json(400, {"error": f"unknown outputs {unknown}: this model has 'score'"})
        predictions = await self._score(model, rows, headers)
        answer: dict[str, Any] = {
            "model_name": resolved.name, "model_version": resolved.version,
            "outputs": [{"name": "score", "datatype": "FP32", "shape": list(predictions.shape),
                         "data": predictions.reshape(-1).tolist()}],
        }  # fmt: skip
        if request.id is not None:
            answer["id"] = request.id
        if self.classes:
            answer["parameters"] = self.classes
        return self._json(200, answer)

    def _v2_rows(self, inputs: list[V2Input], info: ModelInfo) -> tuple[list[Any], str | None]:
        """The request's tensors as validated rows, or what is wrong with them."""
        names = [i.name for i in inputs]
        missing = [c for c in self.columns if c not in names]
        extra = sorted(set(names) - set(self.columns))
        if missing or extra or len(set(names)) != len(names):
            return [], (
                f"inputs: one tensor per column of the model, each once ({list(self.columns)}; "
                f"GET /v2/models/{info.name} lists them); missing {missing}, unknown {extra}"
            )
        data: dict[str, list[Any]] = {}
        for tensor in inputs:
            kind = info.raw_columns[tensor.name]["type"]
            if tensor.datatype not in V2_DATATYPES[kind]:
                return [], (
                    f"input {tensor.name!r}: datatype {tensor.datatype} does not fit the {kind} "
                    f"column; send {V2_DECLARED[kind]}"
                )
            if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)):
                return [], f"input {tensor.name!r}: shape {tensor.shape}; send [rows] or [rows, 1]"
            flat = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in tensor.data]
            if len(flat) != tensor.shape[0] or any(isinstance(v, list) for v in flat):
                return [], (
                    f"input {tensor.name!r}: {len(tensor.data)} values for shape {tensor.shape}"
                )
            data[tensor.name] = flat
        rows = {len(v) for v in data.values()}
        if len(rows) != 1:
            return [], f"inputs: tensors of different lengths {sorted(rows)}; one row each"
        (n,) = rows
        if not 1 <= n <= MAX_BATCH:
            return [], f"inputs: {n} rows; send 1 to {MAX_BATCH}"
        as_rows = [
            dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)
        ]
        try:
            checked = msgspec.convert(as_rows, self.rows_type)
        except msgspec.ValidationError as exc:
            where = _ROW_PATH.sub(r"input `\2` element \1", str(exc))
            return [], f"invalid inference request: {where}"
        return checked, None

    def _columns(self, rows: list[Any]) -> dict[str, list[Any]]:
        """Validated rows as columns: a row's fields are the columns in order
        (``instance_type``), transposed in C."""
        transposed = zip(*map(astuple, rows), strict=True)
        return dict(zip(self.columns, map(list, transposed), strict=True))

    async def _score(
        self,
        model: Predictor,
        rows: list[Any],
        headers: Sequence[tuple[bytes, bytes]],
    ) -> np.ndarray:
        """Score validated rows, count, and log the predictions of a compared request (the
        rollout's shadow step pairs them by request id)."""
        if self.batcher is not None and self.batcher.model is model:  # made with the model
            predictions = await self.batcher.predict(rows)
        else:
            predictions = model.predict(self._columns(rows))
            self.metrics.scored(model.info, predictions)
        if self.resolved is None:
            return predictions
        sent = dict(headers)
        request_id = sent.get(REQUEST_ID_HEADER, b"").decode("latin-1")
        if self.inference_log is not None and VERIFY_HEADER not in sent:
            self.inference_log.record(
                functools.partial(self._columns, rows), predictions, self.resolved.version,
                request_id,
            )  # fmt: skip
        if COMPARE_HEADER in sent:
            log.info("prediction", request_id=request_id, predictions=predictions.tolist(),
                     version=self.resolved.version)  # fmt: skip
        return predictions

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

    async def _predict(
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
        predictions = await self._score(model, rows, headers)
        return self._json(200, {"predictions": predictions.tolist(), **self.classes,
                                "model_version": self.resolved.version})  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """How ``serve`` runs; its workers get the same."""

    model_uri: str
    host: str
    port: int
    graceful_seconds: int = 20
    drain_seconds: float = 0
    batch_window_ms: float = 0
    batch_max_rows: int = BATCH_MAX_ROWS
    log_sample: float = 0
    dataset_uri: str = ""

    def app(self) -> App:
        return App(self.model_uri, self.batch_window_ms, self.batch_max_rows, self.log_sample,
                   self.dataset_uri)  # fmt: skip


def serve(settings: Settings, workers: int = 1) -> int:
    """Bind, load the model in the background, serve until SIGTERM; return the exit code.

    On SIGTERM the server first drains for ``drain_seconds``: ``/readyz`` answers 503 (so the
    pod leaves its Services' endpoints) and every answer closes its connection (so keep-alive
    clients and proxies reconnect to another pod), while requests are still served. Only then
    does it stop, waiting up to ``graceful_seconds`` for requests in flight. Without the drain,
    requests that proxies send over connections to a pod that just stopped fail.

    With ``log_sample`` above 0, that share of the scored requests goes to the inference log
    in the model's folder under ``dataset_uri`` (``helmsman_steps.inference_log``); what is
    queued is written after the graceful shutdown, before the process ends.

    With ``workers`` above 1, this process fetches and loads the model, then starts the other
    workers (``Workers``): each loads the same files and listens on the same port
    (SO_REUSEPORT: the kernel spreads connections over the listeners) once it is ready. Their
    metrics add up in Prometheus' multiprocess mode; a SIGTERM reaches every worker, which
    drains as this one does; a worker that dies is replaced.
    """
    if settings.log_sample > 0 and not settings.dataset_uri:
        raise BadInputError(
            "--log-sample needs the dataset store (--dataset-uri or HELMSMAN_DATASET_URI), "
            "where the inference log goes"
        )
    pool: Workers | None = None
    if workers > 1:
        # Before prometheus_client is imported (by App): each process's metrics go to files
        # in this folder, fresh for this server, and /metrics sums them.
        if "prometheus_client" in sys.modules:
            raise RuntimeError("several workers need prometheus_client imported after serve()")
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="helmsman-metrics-")
        pool = Workers(settings, workers - 1)
    try:
        app = settings.app()
        server = _server(app, settings, pool)
    except BaseException:
        if pool is not None:
            pool.stop(0)
        raise

    if pool is not None:
        pool.on_give_up = lambda: setattr(server, "should_exit", True)

    def load() -> None:
        try:
            if pool is None:
                app.load()
            else:
                pool.start(app.load(pool.folder))
        except BaseException as exc:
            app.load_error = exc
            log.error("model failed to load; shutting down", model_uri=settings.model_uri,
                      error=str(exc))  # fmt: skip
            server.should_exit = True

    threading.Thread(target=load, name="model-loader", daemon=True).start()
    log.info("serving", host=settings.host, port=settings.port, model_uri=settings.model_uri,
             workers=workers)  # fmt: skip
    try:
        server.run(sockets=[listen(settings.host, settings.port)] if pool else None)
    finally:
        if pool is not None:
            pool.stop(settings.graceful_seconds + settings.drain_seconds + 5)
    app.close()
    if isinstance(app.load_error, BadInputError):
        return ExitCode.BAD_INPUT
    if app.load_error is not None or (pool is not None and pool.failed):
        return ExitCode.INTERNAL
    return ExitCode.OK


def _server(app: App, settings: Settings, pool: Workers | None = None, worker: bool = False) -> Any:
    """A uvicorn server for ``app`` that drains on SIGTERM (``serve``) and passes the signal
    on to the other workers. A second signal while draining stops at once, except in a worker,
    which may get each shutdown twice (from its process group and from the first worker)."""
    import uvicorn

    drain_seconds = settings.drain_seconds

    class Server(uvicorn.Server):
        signalled = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            if pool is not None:
                pool.signal(sig)
            first, self.signalled = not self.signalled, True
            if worker and not first:  # its process group's signal and the first worker's
                return
            if first and drain_seconds > 0:
                app.draining = True
                log.info("draining before shutdown", seconds=drain_seconds)
                timer = threading.Timer(drain_seconds, self.stop, (sig, frame))
                timer.daemon = True
                timer.start()
                return
            self.stop(sig, frame)

        def stop(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after a graceful shutdown, so the process would end
            # "killed by SIGTERM" (143). A drained shutdown is the normal end of a pod: exit 0.
            self._captured_signals.clear()

    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
        lifespan="on", access_log=False, log_level="warning",
        timeout_graceful_shutdown=settings.graceful_seconds,
    )  # fmt: skip
    return Server(config)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket that other workers may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


class Workers:
    """The server's other worker processes (``python -m helmsman_steps.serve SPEC``)."""

    CHECK_SECONDS = 1.0
    # A worker that ends within this long of its start failed to start; after this many such
    # failures in a row the server gives up (exit 70: the pod restarts, with the kubelet's
    # back-off), rather than load the model again and again while one worker serves.
    SHORT_LIFE_SECONDS = 30.0
    MAX_FAILED_STARTS = 5

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings, self.count = settings, count
        self.folder = tempfile.mkdtemp(prefix="helmsman-model-")  # the fetched model, kept
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started: list[float] = []
        self.failed_starts = 0
        self.failed = False  # gave up replacing workers
        self.on_give_up: Callable[[], None] = lambda: None
        self.spec = ""
        self.stopping = False
        self.lock = threading.RLock()  # reentrant: a signal may arrive while it is held

    def start(self, fetched: Fetched) -> None:
        self.spec = json.dumps({"settings": asdict(self.settings),
                                "log_level": logging.getLevelName(logging.getLogger().level),
                                "fetched": [asdict(fetched.resolved), fetched.path,
                                            fetched.spec_path]})  # fmt: skip
        with self.lock:
            if self.stopping:
                return
            self.procs = [self._spawn() for _ in range(self.count)]
            self.started = [time.monotonic()] * self.count
        threading.Thread(target=self._watch, name="workers", daemon=True).start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "helmsman_steps.serve", self.spec])  # noqa: S603

    def _watch(self) -> None:
        """Replace a worker that ends before the server does, waiting longer after each one
        that failed to start; give up after ``MAX_FAILED_STARTS`` of them in a row."""
        pause = self.CHECK_SECONDS
        while True:
            time.sleep(pause)
            pause = self.CHECK_SECONDS
            with self.lock:
                if self.stopping:
                    return
                for i, proc in enumerate(self.procs):
                    if proc.poll() is None:
                        continue
                    lived = time.monotonic() - self.started[i]
                    short = lived < self.SHORT_LIFE_SECONDS
                    self.failed_starts = self.failed_starts + 1 if short else 0
                    log.error("a worker ended", pid=proc.pid, exit_code=proc.returncode,
                              seconds=round(lived, 1))  # fmt: skip
                    if self.failed_starts >= self.MAX_FAILED_STARTS:
                        log.error("workers keep failing to start; stopping the server",
                                  failed_starts=self.failed_starts)  # fmt: skip
                        self.failed = True
                        self.on_give_up()
                        return
                    self.procs[i], self.started[i] = self._spawn(), time.monotonic()
                    pause = max(pause, 2.0**self.failed_starts if short else 0)

    def signal(self, sig: int) -> None:
        """Pass a shutdown signal on; from now on no worker is replaced."""
        with self.lock:
            self.stopping = True
            for proc in self.procs:
                if proc.poll() is None:
                    proc.send_signal(sig)

    def stop(self, timeout: float) -> None:
        """Stop the workers (SIGTERM, and SIGKILL for any still running after ``timeout``)
        and remove the model's files and the metrics folder."""
        if not self.stopping:
            self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("a worker did not stop in time; killing it", pid=proc.pid)
                proc.kill()
                proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        shutil.rmtree(os.environ.pop(MULTIPROC_ENV, ""), ignore_errors=True)


def _worker(spec: str) -> int:
    """One more worker of a server: load what the first one fetched, listen on its port."""
    found = json.loads(spec)
    logs.configure(found["log_level"])
    settings = Settings(**found["settings"])
    resolved, path, spec_path = found["fetched"]
    resolved["aliases"] = tuple(resolved["aliases"])
    app = settings.app()
    app.load_fetched(Fetched(registry.ResolvedModel(**resolved), path, spec_path))
    server = _server(app, settings, worker=True)

    parent = os.getppid()

    def orphaned() -> None:  # the first worker is gone (SIGKILL): do not outlive it
        while os.getppid() == parent:
            time.sleep(1)
        log.error("the server's first worker is gone; stopping")
        server.should_exit = True

    threading.Thread(target=orphaned, name="parent-watch", daemon=True).start()
    server.run(sockets=[listen(settings.host, settings.port)])
    app.close()
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
