"""The inference log: a sample of what a served model received and answered, as Parquet.

The server calls ``InferenceLog.record`` for every scored request; a sampled request's rows
(the features as received, the prediction, the model version, the request id and the time)
go into a bounded in-memory queue, and a writer thread moves them to the model's folder of
the dataset store (``DatasetStore.write_inference``), one file per hour every ``flush_seconds``
(or sooner, when ``flush_records`` are queued)::

    <dataset root>/<model>/inference/hour=2026-12-01T10/part-<ms>-<id>.parquet

The request path never waits on the store: ``record`` is a random draw and an append, and a
full queue drops the record and counts it (``helmsman_inference_log_records{outcome=
"dropped"}``) rather than block. ``close`` writes what is queued; the server calls it after
its graceful shutdown, so a rollout or a scale-down loses nothing the server answered.
pyarrow is imported by the writer thread only, so a server that logs nothing never loads it.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from helmsman_steps import logs
from helmsman_steps.store import DatasetStore
from helmsman_steps.tally import Tally

log = logs.get(__name__)

# The columns every file has besides the model's raw columns.
TIMESTAMP, REQUEST_ID, ROW, VERSION, PREDICTION = (
    "timestamp", "request_id", "row", "model_version", "prediction",
)  # fmt: skip
RESERVED = (TIMESTAMP, REQUEST_ID, ROW, VERSION, PREDICTION)


# One sampled request: (seconds since the epoch, request id or None, model version, msgpack of
# (the validated columns as received, the predictions)). Packed bytes, not the lists: tens of
# thousands of queued records made of lists and dicts would be traversed by every full
# garbage collection, and the request path would see those pauses (measured: 40 ms).
_Record = tuple[float, "str | None", str, bytes]
# The writer converts this many records at a time and then lets the event loop run: converting
# a whole flush at once would hold the GIL for milliseconds, and that is what p99 would show.
CHUNK = 256


_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder().decode


OUTCOMES = ("sampled", "written", "dropped")


class InferenceLog:
    """Sample, queue and write one server's requests (see the module's docstring)."""

    def __init__(
        self,
        store: DatasetStore,
        columns: Mapping[str, str],
        sample: float,
        classes: int | None = None,
        capacity: int = 20_000,
        flush_seconds: float = 30.0,
        flush_records: int = 10_000,
    ) -> None:
        if not 0 < sample <= 1:
            raise ValueError(f"the inference log's sample is a share in (0, 1], got {sample}")
        self.store, self.sample = store, sample
        self.types = dict(columns)  # column -> its type in the spec: float, int or category
        self.columns = tuple(columns)
        self.classes = classes  # a multiclass model's class count: a probability each
        clash = set(self.columns) & set(RESERVED)
        if clash:
            raise ValueError(f"columns {sorted(clash)} clash with the inference log's own")
        self.capacity, self.flush_seconds, self.flush_records = (
            capacity, flush_seconds, flush_records,
        )  # fmt: skip
        # deque appends and pops are atomic: the event loop appends, the writer pops.
        self.pending: collections.deque[_Record] = collections.deque()
        # Records (requests) by outcome; Prometheus reads them when scraped (``collect``), so
        # the request path touches no metric. A ``Tally``: they add up across workers.
        self.tally = Tally("inference_log", len(OUTCOMES))
        self._warm_up()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def record(
        self,
        columns: Mapping[str, Sequence[Any]] | Callable[[], Mapping[str, Sequence[Any]]],
        predictions: np.ndarray,
        version: str,
        request_id: str | None,
    ) -> None:
        """Log one answered request with probability ``sample``; never blocks. ``columns``
        may be a function that makes them: it is called only for a request that is logged."""
        if self.sample < 1 and random.random() >= self.sample:  # noqa: S311 - not security
            return
        if len(self.pending) >= self.capacity:
            self._count("dropped")
            return
        if callable(columns):
            columns = columns()
        packed = _pack((columns, predictions.tolist()))
        self.pending.append((time.time(), request_id, version, packed))
        self._count("sampled")
        if len(self.pending) == self.flush_records:
            self._wake.set()

    def close(self, timeout: float = 30.0) -> dict[str, int]:
        """Write everything queued and stop the writer; the counts of records by outcome."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the inference log's writer did not finish", queued=len(self.pending))
        counts = self.counts()
        log.info("inference log closed", **counts)
        return counts

    def counts(self) -> dict[str, int]:
        """This process's records by outcome."""
        return {outcome: int(n) for outcome, n in zip(OUTCOMES, self.tally.values, strict=True)}

    def _warm_up(self) -> None:
        """Import pyarrow and write one table to memory now, while the server is not ready
        yet: done by the first flush, it would stall requests for a quarter of a second."""
        import io

        import pyarrow.parquet as pq

        sample = {c: [None] for c in self.columns}
        scores = [[0.0] * self.classes] if self.classes else [0.0]
        record: _Record = (time.time(), "warm-up", "0", _pack((sample, scores)))
        pq.write_table(self._table([record]), io.BytesIO())

    def collect(self) -> Any:
        """``helmsman_inference_log_records_total{outcome}``, for a Prometheus registry."""
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "helmsman_inference_log_records",
            "Requests the inference log sampled, wrote to the store, or dropped (queue full, or "
            "the store refused them)",
            labels=["outcome"],
        )
        for outcome, count in zip(OUTCOMES, self.tally.totals(), strict=True):
            family.add_metric([outcome], float(count))
        yield family

    # -- the writer thread ---------------------------------------------------------------
    def _count(self, outcome: str, n: int = 1) -> None:
        self.tally.values[OUTCOMES.index(outcome)] += n

    def _run(self) -> None:
        failed: list[_Record] = []  # a batch the store refused: tried again next time
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            stopping = self._stop
            batch = failed
            while self.pending:
                batch.append(self.pending.popleft())
            failed = self._write(batch) if batch else []
            if stopping:
                if failed:
                    failed = self._write(failed)  # once more, then give up loudly
                if failed:
                    log.error("inference log records lost: the store refused them",
                              records=len(failed), root=self.store.root)  # fmt: skip
                    self._count("dropped", len(failed))
                return

    def _write(self, batch: list[_Record]) -> list[_Record]:
        """Write ``batch``, one file per hour it spans; the records not written."""
        by_hour: dict[int, list[_Record]] = collections.defaultdict(list)
        for record in batch:
            by_hour[int(record[0] // 3600)].append(record)
        failed: list[_Record] = []
        for hours, records in by_hour.items():
            hour = dt.datetime.fromtimestamp(hours * 3600, dt.UTC).strftime("%Y-%m-%dT%H")
            try:
                self.store.write_inference(hour, self._table(records))
            except Exception as exc:  # the store is down or full: keep them for the next try
                log.warning("could not write the inference log", hour=hour,
                            records=len(records), error=str(exc))  # fmt: skip
                failed.extend(records)
            else:
                self._count("written", len(records))
        return failed

    def _table(self, records: list[_Record]) -> Any:
        import pyarrow as pa

        batches = []
        for start in range(0, len(records), CHUNK):
            batches.append(self._batch(records[start : start + CHUNK]))
            time.sleep(0)  # let the event loop have the GIL between chunks
        return pa.Table.from_batches(batches, schema=self._schema())

    def _schema(self) -> Any:
        import pyarrow as pa

        # Every file's columns have the spec's types, whatever one batch holds (a nullable
        # column that is all null in a batch is still a string or a number).
        kinds = {"float": pa.float64(), "int": pa.int64(), "category": pa.string()}
        return pa.schema([
            (TIMESTAMP, pa.timestamp("us", tz="UTC")), (REQUEST_ID, pa.string()),
            (ROW, pa.int32()), (VERSION, pa.string()),
            *((c, kinds[t]) for c, t in self.types.items()),
            # A score a row; a multiclass model's probabilities a row.
            (PREDICTION, pa.list_(pa.float32(), self.classes) if self.classes
             else pa.float32()),
        ])  # fmt: skip

    def _batch(self, records: list[_Record]) -> Any:
        import pyarrow as pa

        schema = self._schema()
        unpacked = [_unpack(r[3]) for r in records]
        sizes = np.fromiter((len(u[1]) for u in unpacked), np.int64, len(records))
        micros = np.fromiter((r[0] for r in records), np.float64, len(records)) * 1e6
        ids = [r[1] or uuid.uuid4().hex for r in records]
        starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
        scores = np.array([p for u in unpacked for p in u[1]], dtype=np.float32)
        if scores.ndim == 2:
            prediction = pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1)),
                                                           scores.shape[1])  # fmt: skip
        else:
            prediction = pa.array(scores)
        arrays = [
            pa.array(np.repeat(micros.astype(np.int64), sizes), schema.field(TIMESTAMP).type),
            pa.array(np.repeat(np.array(ids, dtype=object), sizes), pa.string()),
            pa.array((np.arange(len(starts)) - starts).astype(np.int32)),
            pa.array(np.repeat(np.array([r[2] for r in records], dtype=object), sizes),
                     pa.string()),
            *(pa.array(list(itertools.chain.from_iterable(u[0][c] for u in unpacked)),
                       schema.field(c).type) for c in self.columns),
            prediction,
        ]  # fmt: skip
        return pa.RecordBatch.from_arrays(arrays, schema=schema)
