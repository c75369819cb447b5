"""The inference log: sampled requests as Parquet in the model's folder of the dataset store,
off the request path, and nothing the server answered lost on a graceful stop."""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from helmsman_steps.inference_log import InferenceLog
from helmsman_steps.store import DatasetStore
from tests.mlflow_fixtures import Trained, model_server

ROW = {"age": 30, "tenure_months": 3, "monthly_charges": 95.5, "total_charges": 300,
       "support_calls": 4, "plan": "basic", "region": "south"}  # fmt: skip
TYPES = {"age": "float", "plan": "category"}


def _read_log(store: DatasetStore) -> pd.DataFrame:
    now = dt.datetime.now(dt.UTC)
    files = store.inference_files(now - dt.timedelta(hours=3), now + dt.timedelta(hours=1))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _scores(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    store = DatasetStore(str(tmp_path / "churn"))
    log = InferenceLog(store, TYPES, sample=1.0, capacity=5, flush_seconds=3600)
    started = time.perf_counter()
    for i in range(8):
        log.record({"age": [30.0 + i], "plan": ["basic"]}, _scores(0.5), "3", f"r{i}")
    assert time.perf_counter() - started < 1  # never waited on the writer
    assert log.close() == {"sampled": 5, "written": 5, "dropped": 3}
    written = _read_log(store)
    assert sorted(written["request_id"]) == [f"r{i}" for i in range(5)]  # the first five


def test_rows_keep_the_features_as_received_with_the_spec_types(tmp_path: Path) -> None:
    store = DatasetStore(str(tmp_path / "churn"))
    log = InferenceLog(store, TYPES, sample=1.0, flush_seconds=3600)
    log.record({"age": [30.0, 41.5], "plan": [None, None]}, _scores(0.25, 0.75), "7", "req-1")
    log.record({"age": [None], "plan": ["premium"]}, _scores(0.5), "7", None)
    assert log.close()["written"] == 2
    frame = _read_log(store).sort_values(["timestamp", "row"], ignore_index=True)
    assert frame["request_id"].iloc[:2].tolist() == ["req-1", "req-1"]
    assert len(frame["request_id"].iloc[2]) == 32  # no id sent: one is made up
    assert frame["row"].tolist() == [0, 1, 0]
    assert frame["model_version"].tolist() == ["7", "7", "7"]
    assert frame["prediction"].tolist() == [0.25, 0.75, 0.5]
    np.testing.assert_array_equal(frame["age"].to_numpy(), [30.0, 41.5, np.nan])
    assert frame["plan"].isna().tolist() == [True, True, False]
    # A category column that is all null in a file is still a string column, not "null".
    ever = dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    first = pd.read_parquet(store.inference_files(*ever)[0])
    assert pd.api.types.is_string_dtype(first["plan"])
    assert str(frame["timestamp"].dt.tz) == "UTC"


def test_a_sample_logs_about_that_share_of_requests(tmp_path: Path) -> None:
    log = InferenceLog(DatasetStore(str(tmp_path / "m")), TYPES, sample=0.1, flush_seconds=3600)
    for _ in range(5000):
        log.record({"age": [1.0], "plan": ["basic"]}, _scores(0.5), "1", "r")
    counts = log.close()
    # Binomial(5000, 0.1): mean 500, sd 21; five sd either side.
    assert 395 <= counts["sampled"] <= 605, counts
    assert counts["written"] == counts["sampled"]


def test_files_are_partitioned_by_the_hour_each_request_was_answered(tmp_path: Path) -> None:
    store = DatasetStore(str(tmp_path / "churn"))
    for hour in ("2026-11-30T23", "2026-12-01T00"):
        table = InferenceLog.__new__(InferenceLog)  # only its table layout, no writer thread
        table.types, table.columns, table.classes = TYPES, tuple(TYPES), None
        store.write_inference(hour, table._table([]))
    day = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    assert len(store.inference_files(day, day + dt.timedelta(days=1))) == 1
    assert len(store.inference_files(day + dt.timedelta(hours=23), day + dt.timedelta(days=2))) == 2
    # A window that starts mid-hour reads that hour's file too (the reader filters rows by time);
    # one that ends on the hour does not read the hour it ends on.
    late = day + dt.timedelta(hours=23, minutes=30)
    hours = [f.split("/")[-2] for f in store.inference_files(late, late + dt.timedelta(minutes=30))]
    assert hours == ["hour=2026-11-30T23"]


def test_a_store_that_refuses_writes_loses_them_loudly_and_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    log = InferenceLog(DatasetStore(str(blocker / "churn")), TYPES, 1.0, flush_seconds=3600)
    log.record({"age": [1.0], "plan": ["basic"]}, _scores(0.5), "1", "r")
    assert log.close() == {"sampled": 1, "written": 0, "dropped": 1}


def test_the_server_logs_every_answered_request_even_when_stopped_under_load(
    champion: Trained, step_env: dict[str, str], tmp_path: Path
) -> None:
    """Steady traffic from several clients, /predict and /v2 alike; SIGTERM in the middle of
    it (as a rollout or a scale-down does). Every request the server answered with a 200 is in
    the log, row for row, with the prediction it answered; nothing else is (the rollout's own
    checks are answered and not logged)."""
    datasets = tmp_path / "datasets"
    server = model_server(
        f"models:/{champion.model_name}/{champion.version}", step_env, tmp_path,
        "--log-sample", "1", "--dataset-uri", str(datasets), "--drain-seconds", "1",
    )  # fmt: skip
    assert server.proc is not None
    answered: dict[str, list[float]] = {}
    stop = threading.Event()
    v2_inputs = [
        {"name": k, "shape": [2], "datatype": "BYTES" if isinstance(v, str) else "FP64",
         "data": [v, v]} for k, v in ROW.items()
    ]  # fmt: skip

    def client(worker: int) -> None:
        url = server.url  # type: ignore[attr-defined]
        with httpx.Client(base_url=url, timeout=5) as http:
            i = 0
            while not stop.is_set():
                request_id = f"w{worker}-{i}"
                i += 1
                try:
                    if i % 2:
                        body = {"instances": [{**ROW, "age": 20 + i % 50}]}
                        r = http.post("/predict", json=body, headers={"x-request-id": request_id})
                        if r.status_code == 200:
                            answered[request_id] = r.json()["predictions"]
                    else:
                        path = f"/v2/models/{champion.model_name}/infer"
                        r = http.post(path, json={"inputs": v2_inputs},
                                      headers={"x-request-id": request_id})  # fmt: skip
                        if r.status_code == 200:
                            answered[request_id] = r.json()["outputs"][0]["data"]
                except httpx.HTTPError:  # the server has stopped
                    return

    workers = [threading.Thread(target=client, args=(w,)) for w in range(3)]
    for w in workers:
        w.start()
    time.sleep(1)
    url = server.url  # type: ignore[attr-defined]
    verify = {"x-request-id": "verify-1", "x-helmsman-verify": "1"}
    checked = httpx.post(f"{url}/predict", json={"instances": [ROW]}, headers=verify)
    assert checked.status_code == 200  # the platform's own check: answered, never logged
    time.sleep(1)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0, server.log()
    stop.set()
    for w in workers:
        w.join()
    logged = _read_log(DatasetStore(str(datasets / champion.model_name)))
    assert len(answered) > 50, "too little traffic to mean anything"
    assert set(logged["request_id"]) == set(answered)
    for request_id, rows in logged.groupby("request_id"):
        rows = rows.sort_values("row")
        np.testing.assert_allclose(rows["prediction"], answered[str(request_id)], rtol=1e-6)
    assert (logged["model_version"] == champion.version).all()
    predict = logged[logged["request_id"].isin([k for k, v in answered.items() if len(v) == 1])]
    assert predict["plan"].eq("basic").all()
    print(f"\nrequests answered during the stop: {len(answered)}, logged: "
          f"{logged['request_id'].nunique()} ({len(logged)} rows)")  # fmt: skip


def test_logging_without_a_store_is_refused_at_start(
    champion: Trained, step_env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in step_env.items() if k != "HELMSMAN_DATASET_URI"}
    with pytest.raises(RuntimeError, match="exited with 2") as raised:
        model_server(f"models:/{champion.model_name}/{champion.version}", env, tmp_path,
                     "--log-sample", "0.1")  # fmt: skip
    assert "--log-sample needs the dataset store" in str(raised.value)
