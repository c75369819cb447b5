"""Monitoring: training records a reference profile; a window of the inference log is judged
against it, through the real server, the ``helmsman-step monitor`` command and MLflow.

Live traffic is the synthetic source's days after the training window, through the same ETL
(what the server's validation would let through), scored by the session's real champion.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowSkipException

from helmsman import tasks
from helmsman_steps import contract, etl, inference_log, monitor, onnx_model, registry, sources
from helmsman_steps.modelinfo import ModelInfo
from helmsman_steps.store import DatasetStore
from tests.mlflow_fixtures import DAYS, FIRST_DAY, Trained, model_server, run_step
from tools import prometheus
from tools.procs import free_port

LIVE_FIRST = FIRST_DAY + dt.timedelta(days=DAYS)  # traffic starts the day after training ends
WEEK_HOURS = 7 * 24
ROWS_PER_HOUR = 300
LIVE_START = dt.datetime.combine(LIVE_FIRST, dt.time(), dt.UTC)
# The injected shift: pricier plans and more support calls, from mid-hour of the 6th day.
SHIFTED = tuple(sources.SHIFT)
SHIFT_AT = LIVE_START + dt.timedelta(days=5, hours=13, minutes=30)


@pytest.fixture(scope="module")
def info() -> ModelInfo:
    return ModelInfo.churn("churn-test")


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """A week of live rows, each day's spread evenly over its hours (``timestamp``)."""
    root = str(tmp_path_factory.mktemp("traffic"))
    source = sources.from_uri(f"synthetic://churn?rows_per_day={24 * ROWS_PER_HOUR}&seed=11")
    days = [LIVE_FIRST + dt.timedelta(days=d) for d in range(7)]
    etl.run(source, DatasetStore(root), days[0], days[-1] + dt.timedelta(days=1), 0.05)
    frames = []
    for day in days:
        frame = DatasetStore(root).read_features([day])
        offsets = np.linspace(0, 86_400, len(frame), endpoint=False)
        start = pd.Timestamp(dt.datetime.combine(day, dt.time(), dt.UTC))
        frames.append(frame.assign(timestamp=start + pd.to_timedelta(offsets, unit="s")))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus Pushgateway (Debian's, which `make setup` installs)."""
    if not shutil.which(prometheus.PUSHGATEWAY_BINARY):
        pytest.skip("no prometheus-pushgateway on PATH: `make setup` installs it (as root)")
    server = prometheus.pushgateway_server(tmp_path_factory.mktemp("pushgateway"), free_port())
    server.start(timeout=30)
    try:
        yield server.health_url.removesuffix("/-/ready")
    finally:
        server.stop()


def pushed(gateway: str, model: str) -> tuple[dict[tuple[str, str], float], set[str]]:
    """The monitor's gauges the Pushgateway serves for ``model`` ((metric, feature) -> value)
    and the versions they name; every sample must carry the group's job and model labels."""
    from prometheus_client.parser import text_string_to_metric_families

    values, versions = {}, set()
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("helmsman_monitor_") and sample.labels["model"] == model:
                assert sample.labels["job"] == monitor.PUSH_JOB
                name = sample.name.removeprefix("helmsman_monitor_")
                values[name, sample.labels.get("feature", "")] = sample.value
                versions.add(sample.labels["version"])
    return values, versions


@pytest.fixture(scope="module")
def graph(champion: Trained, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    resolved = registry.resolve(f"models:/{champion.model_name}/{champion.version}")
    path = registry.download_serving_model(resolved, str(tmp_path_factory.mktemp("graph")))
    return Path(path).read_bytes()


@pytest.fixture(scope="module")
def profile(champion: Trained) -> dict[str, Any]:
    import mlflow

    resolved = registry.resolve(f"models:/{champion.model_name}/{champion.version}")
    uri = f"runs:/{resolved.run_id}/{contract.REFERENCE_PROFILE_ARTIFACT}"
    loaded: dict[str, Any] = mlflow.artifacts.load_dict(uri)
    return loaded


def _live(rows: pd.DataFrame, info: ModelInfo, graph: bytes, version: str) -> pd.DataFrame:
    """Rows as the inference log holds them: raw columns, the model's score, version, id."""
    matrix = info.featurizer.to_matrix({c: rows[c].to_numpy() for c in rows.columns})
    return rows[list(info.raw_columns)].assign(**{
        inference_log.TIMESTAMP: rows["timestamp"].to_numpy(),
        inference_log.PREDICTION: onnx_model.predict(graph, matrix),
        inference_log.VERSION: version,
        inference_log.REQUEST_ID: [f"r{i}" for i in range(len(rows))],
    })  # fmt: skip


def test_training_records_the_profile_of_its_rows(
    profile: dict[str, Any], champion: Trained, info: ModelInfo
) -> None:
    days = [champion.end - dt.timedelta(days=d) for d in range(DAYS, 0, -1)]
    trained_on = DatasetStore(champion.dataset_uri).read_features(days)
    assert profile["format"] == monitor.PROFILE_FORMAT
    assert profile["rows"] == min(len(trained_on), monitor.PROFILE_ROWS)
    assert set(profile["columns"]) == set(info.raw_columns)
    plan = trained_on["plan"].value_counts(normalize=True)
    for name, share in profile["columns"]["plan"]["shares"].items():
        assert share == pytest.approx(plan[name], abs=1e-9)
    charges = profile["columns"]["monthly_charges"]
    assert charges["edges"] == sorted(charges["edges"])
    assert sum(charges["shares"]) == pytest.approx(1.0)
    assert charges["low"] == pytest.approx(trained_on["monthly_charges"].min())
    median = np.median(trained_on["monthly_charges"])
    assert charges["edges"][3] <= median <= charges["edges"][5]  # the deciles straddle it
    scores = profile["prediction"]
    assert 0 <= scores["low"] < scores["high"] <= 1  # a binary model's probabilities


def test_a_week_without_shift_raises_no_alarm_and_a_shift_is_named_within_two_intervals(
    traffic: pd.DataFrame,
    profile: dict[str, Any],
    graph: bytes,
    champion: Trained,
    info: ModelInfo,
) -> None:
    thresholds = monitor.Thresholds()
    hours = [LIVE_START + dt.timedelta(hours=h) for h in range(WEEK_HOURS)]
    stamps = traffic["timestamp"]

    def judged(hour: dt.datetime, shift_at: dt.datetime | None) -> monitor.Judgement:
        end = hour + dt.timedelta(hours=1)
        rows = traffic[(stamps >= hour) & (stamps < end)]
        if shift_at is not None:
            late = rows["timestamp"] >= shift_at
            rows = pd.concat([rows[~late], sources.shifted(rows[late])])
        live = _live(rows, info, graph, champion.version)
        return monitor.judge(profile, live, info, champion.version, (hour, end), thresholds)

    steady = [judged(hour, None) for hour in hours]
    false_alarms = [j.summary() for j in steady if j.breaches]
    highest = max(max(c.psi for c in j.columns.values()) for j in steady)

    first_shifted = hours.index(SHIFT_AT.replace(minute=0))
    after = [judged(hour, SHIFT_AT) for hour in hours[first_shifted - 24 :]]
    alarms = [i for i, j in enumerate(after) if j.breaches]
    delay = alarms[0] - 24 + 1 if alarms else None  # in monitoring intervals, 1 = the same hour
    print(
        f"\nmonitoring, {WEEK_HOURS} hourly windows of {ROWS_PER_HOUR} rows: {len(false_alarms)} "
        f"false alarms (highest feature PSI {highest:.3f}); shift at {SHIFT_AT:%Y-%m-%d %H:%M} "
        f"flagged after {delay} interval(s): {after[alarms[0]].summary() if alarms else '-'}"
    )
    assert false_alarms == []
    assert alarms, "the shift was never flagged"
    assert alarms[0] >= 24, "an alarm before the shift"
    assert delay is not None
    assert delay <= 2
    for judgement in after[alarms[0] : alarms[0] + 3]:
        assert set(judgement.drifted) == set(SHIFTED)  # the shifted features, and only those
        assert judgement.prediction.drifted  # the model now sees riskier customers


def _post_rows(url: str, rows: pd.DataFrame, per_request: int, ids: str = "") -> int:
    """Send ``rows``, ``per_request`` in each request; with ``ids``, request ``i`` carries the
    ``x-request-id`` ``{ids}{i}`` (what a client that later learns outcomes keeps)."""
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    sent = 0
    with httpx.Client(timeout=30) as client:
        for i in range(0, len(records), per_request):
            batch = records[i : i + per_request]
            headers = {"x-request-id": f"{ids}{sent}"} if ids else {}
            response = client.post(f"{url}/predict", json={"instances": batch}, headers=headers)
            assert response.status_code == 200, response.text
            sent += 1
    return sent


def _monitor(
    env: dict[str, str], root: Path | str, key: str, *extra: str, end: dt.datetime | None = None
) -> Any:
    """The monitor step over the hour up to ``end`` (a minute from now unless given; a task's
    retry passes its first try's, as Airflow's data interval does)."""
    end = end or dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    return run_step(
        env, "monitor", "--model-name", "churn-test", "--dataset-uri", str(root),
        "--end", f"{end:%Y-%m-%dT%H:%M:%S}", "--window-hours", "1", "--run-key", key, *extra,
    )  # fmt: skip


def test_served_traffic_is_judged_and_the_verdict_recorded_in_mlflow(
    traffic: pd.DataFrame,
    champion: Trained,
    step_env: dict[str, str],
    info: ModelInfo,
    pushgateway: str,
    tmp_path: Path,
) -> None:
    rows = traffic[list(info.raw_columns)].iloc[:600]
    reports, ends = {}, {}
    for scenario, sent in (("steady", rows), ("shifted", sources.shifted(rows))):
        root = tmp_path / scenario
        logged = ("--log-sample", "1", "--dataset-uri", str(root))
        server = model_server(
            f"models:/{champion.model_name}@champion", step_env, tmp_path, *logged
        )
        try:
            requests = _post_rows(server.url, sent, 20)  # type: ignore[attr-defined]
        finally:
            server.stop()  # a graceful stop: the log is written
        ends[scenario] = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
        done = _monitor(step_env, root, f"test/{scenario}", "--pushgateway", pushgateway,
                        end=ends[scenario])  # fmt: skip
        assert done.returncode == 0, done.stderr
        reports[scenario] = report = json.loads(done.stdout)
        assert (report["rows"], report["requests"]) == (600, requests)
        assert report["version"] == champion.version
        # Prometheus' view: the group holds this window's gauges only, of this version.
        gauges, versions = pushed(pushgateway, "churn-test")
        assert report["pushed"] is True
        assert versions == {champion.version}
        drifted = {f for (kind, f), v in gauges.items() if kind == "feature_drifted" and v == 1}
        assert drifted == (set(SHIFTED) if scenario == "shifted" else set())
        assert {f for kind, f in gauges if kind == "feature_psi"} == set(info.raw_columns)
        assert gauges[("window_rows", "")] == 600
        assert gauges[("breaches", "")] == len(report["breaches"])
        window_end = ends[scenario].replace(second=0, microsecond=0)
        assert gauges[("window_end_timestamp_seconds", "")] == window_end.timestamp()
        psi = gauges[("feature_psi", "monthly_charges")]
        assert psi == pytest.approx(report["columns"]["monthly_charges"]["psi"])
        assert (psi >= monitor.Thresholds().psi) == (scenario == "shifted")

    assert reports["steady"]["breaches"] == []
    shifted = reports["shifted"]
    assert set(shifted["drifted"]) == set(SHIFTED)
    assert "BREACH" in shifted["summary"]
    assert "monthly_charges" in shifted["summary"]

    client = registry.client()
    for scenario, verdict in (("steady", "ok"), ("shifted", "breach")):
        run = client.get_run(reports[scenario]["mlflow_run_id"])
        assert run.data.tags[contract.MONITOR_VERDICT_TAG] == verdict
        assert run.data.tags[contract.MODEL_VERSION_TAG] == champion.version
        psi = run.data.metrics["psi.monthly_charges"]
        assert math.isclose(psi, reports[scenario]["columns"]["monthly_charges"]["psi"])
        stored = {a.path for a in client.list_artifacts(run.info.run_id, "monitor")}
        assert stored == {contract.MONITOR_REPORT_ARTIFACT, "monitor/drift.png"}
    breaches = json.loads(client.get_run(shifted["mlflow_run_id"]).data.tags[
        contract.MONITOR_BREACHES_TAG])  # fmt: skip
    assert {b["what"] for b in breaches} >= set(SHIFTED)

    # An earlier window judged again (a cleared task) leaves the later verdict's gauges.
    earlier = ends["shifted"] - dt.timedelta(minutes=1)
    rerun = _monitor(step_env, tmp_path / "steady", "test/steady-rerun", "--pushgateway",
                     pushgateway, end=earlier)  # fmt: skip
    assert json.loads(rerun.stdout)["pushed"] is False, rerun.stderr
    gauges, _ = pushed(pushgateway, "churn-test")
    assert {f for (kind, f), v in gauges.items() if kind == "feature_drifted" and v} == set(SHIFTED)

    # The same window again (a task's retry) is the same MLflow run, not a second one; a
    # Pushgateway that does not answer is a warning, not a failed run.
    gone = f"http://127.0.0.1:{free_port()}"
    again = _monitor(step_env, tmp_path / "shifted", "test/shifted", "--pushgateway", gone,
                     end=ends["shifted"])  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["mlflow_run_id"] == shifted["mlflow_run_id"]
    assert json.loads(again.stdout)["pushed"] is False
    assert "could not push the monitor's gauges" in again.stderr
    assert gone in again.stderr

    # The DAG's alarm: a breach becomes the drift asset event's extra, once per cool-down.
    def alarm(key: str, retrain: bool = True, hours: float = 6) -> dict[str, Any]:
        cooldown = dt.timedelta(hours=hours)
        return tasks.alarm(model_name="churn-test", monitor_run_key=key, retrain=retrain,
                           cooldown=cooldown)  # fmt: skip

    with pytest.raises(AirflowSkipException, match="no breach in"):
        alarm("test/steady")
    off = alarm("test/shifted", retrain=False)
    assert (off["retrain"], off["action"]) == (False, "No training: monitoring.retrain is off")
    with pytest.raises(AirflowSkipException, match=r"monitoring\.retrain is off"):
        tasks.request_training(off)
    found = alarm("test/shifted")
    assert (found["retrain"], found["action"]) == (True, "train_churn-test starts")
    extra = tasks.request_training(found)
    assert (extra["window_end"], extra["version"]) == (shifted["window_end"], champion.version)
    assert {b["what"] for b in extra["breaches"]} == {*SHIFTED, "prediction"}
    assert "retrain" not in extra
    assert alarm("test/shifted")["retrain"]  # the alarm's retry is not its own cool-down
    storm = _monitor(step_env, tmp_path / "shifted", "test/shifted-later")
    assert json.loads(storm.stdout)["breaches"]
    later = alarm("test/shifted-later")
    assert not later["retrain"]
    assert "within the 6:00:00 cool-down" in later["action"]
    assert alarm("test/shifted-later", hours=0)["retrain"]

    # The training run the event starts trains on the days up to the window's, included.
    window_day = dt.datetime.fromisoformat(extra["window_end"]) - dt.timedelta(microseconds=1)
    event = SimpleNamespace(extra=extra)
    expected = (window_day.date() + dt.timedelta(days=1)).isoformat()
    assert tasks.drift_data_end({"helmsman://churn-test/drift": [event]}) == expected
    assert tasks.drift_data_end({}) is None  # the cron's run: its own interval


def test_labels_of_served_requests_judge_live_performance_and_a_drop_alone_retrains(
    traffic: pd.DataFrame,
    champion: Trained,
    step_env: dict[str, str],
    info: ModelInfo,
    pushgateway: str,
    tmp_path: Path,
) -> None:
    """Outcomes of served requests arrive as labels (request id, row, label): the monitor scores
    the champion's logged predictions with evaluation's metric. True outcomes keep it near the
    version's evaluation figure; outcomes that no longer follow the features (the relation
    changed, the inputs did not) breach on performance alone, and that breach is the
    performance asset's event, not the drift asset's."""
    import pyarrow as pa

    per_request, rows = 20, traffic.iloc[:3000]
    logged = ("--log-sample", "1", "--dataset-uri", str(tmp_path / "served"))
    server = model_server(f"models:/{champion.model_name}@champion", step_env, tmp_path, *logged)
    url: str = server.url  # type: ignore[attr-defined]
    try:
        _post_rows(url, rows[list(info.raw_columns)], per_request, ids="req-")
    finally:
        server.stop()
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    truth = rows[info.label].to_numpy()
    keys = {inference_log.REQUEST_ID: [f"req-{i // per_request}" for i in range(len(rows))],
            inference_log.ROW: [i % per_request for i in range(len(rows))]}  # fmt: skip
    run_id = registry.resolve(f"models:/{champion.model_name}/{champion.version}").run_id
    evaluated = registry.client().get_run(run_id).data.metrics["eval_roc_auc"]

    def judged(scenario: str, labels: Any) -> dict[str, Any]:
        root = tmp_path / scenario
        shutil.copytree(tmp_path / "served", root)
        if labels is not None:
            table = pa.table({**keys, monitor.LABEL: labels})
            # The model's folder, where its server writes the inference log.
            DatasetStore(str(root / "churn-test")).write_labels(
                f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H}", table
            )
        done = _monitor(step_env, root, f"test/labels-{scenario}", "--pushgateway", pushgateway,
                        end=end)  # fmt: skip
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        assert report["rows"] == len(rows)
        assert [b for b in report["breaches"] if b["kind"] == "drift"] == []  # same inputs
        return report

    assert judged("unlabelled", None)["performance"] is None

    true = judged("true", truth)["performance"]
    assert (true["metric"], true["labelled_rows"], true["evaluated"]) == (
        "roc_auc",
        len(rows),
        evaluated,
    )
    assert abs(true["live"] - evaluated) < 0.04, true  # 3,000 rows: a few hundredths at most
    gauges, _ = pushed(pushgateway, "churn-test")
    assert gauges[("performance", "")] == pytest.approx(true["live"])

    # Labels written as text (from a CSV) are the same classes; values that are none of them
    # are said, not scored as the negative class.
    assert judged("text", truth.astype(str))["performance"]["live"] == pytest.approx(true["live"])
    foreign = judged("foreign", np.where(truth == 1, "yes", "no"))["performance"]
    assert foreign["live"] is None
    assert "labels ['no', 'yes'] are not among the classes [0, 1]" in foreign["reason"]

    # The same served rows, their outcomes now the opposite of what the features said.
    flipped = judged("flipped", 1 - truth)
    scored = flipped["performance"]
    assert scored["live"] == pytest.approx(1 - true["live"])
    (breach,) = flipped["breaches"]
    assert (breach["kind"], breach["what"]) == ("performance", "roc_auc")
    assert breach["value"] == pytest.approx((evaluated - scored["live"]) / evaluated)
    assert breach["value"] > monitor.Thresholds().performance_drop
    print(f"\nlive roc_auc on {len(rows)} labelled rows: {true['live']:.4f} (evaluated "
          f"{evaluated:.4f}); with the outcomes reversed {scored['live']:.4f}, a relative drop "
          f"of {breach['value']:.2f}")  # fmt: skip
    assert "BREACH performance roc_auc relative drop" in flipped["summary"]
    found = tasks.alarm(model_name="churn-test", monitor_run_key="test/labels-flipped",
                        retrain=True, cooldown=dt.timedelta(0))  # fmt: skip
    assert tasks.event_kind(found["breaches"]) == "performance"
    # With drift as well, the drift event carries both (one breach, one event).
    assert tasks.event_kind([*found["breaches"], {"kind": "drift"}]) == "drift"
    with pytest.raises(AirflowSkipException, match="performance asset's event carries"):
        tasks.request_training(found, "drift")
    assert tasks.request_training(found, "performance")["breaches"] == flipped["breaches"]

    # Too few labels, or a labels file that cannot be read: no performance verdict, said why;
    # the drift verdict stands.
    few = judged("few", None)
    assert few["performance"] is None
    store = DatasetStore(str(tmp_path / "few" / "churn-test"))
    first = {k: v[:50] for k, v in {**keys, monitor.LABEL: truth}.items()}
    store.write_labels(f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H}", pa.table(first))
    again = json.loads(_monitor(step_env, tmp_path / "few", "test/labels-few2", end=end).stdout)
    assert again["performance"]["live"] is None
    assert "50 served rows have labels, fewer than min_rows 200" in again["performance"]["reason"]
    broken = Path(store.label_files(end - dt.timedelta(hours=1), end)[0])
    broken.write_bytes(broken.read_bytes()[:100])
    done = _monitor(step_env, tmp_path / "few", "test/labels-few3", end=end)
    assert done.returncode == 0, done.stderr
    reason = json.loads(done.stdout)["performance"]["reason"]
    assert f"the labels file {broken} cannot be read" in reason


def _skipped(done: Any) -> str:
    assert done.returncode == 3, (done.returncode, done.stderr)
    assert done.stdout == ""  # no verdict, so nothing an alarm could read
    return str(done.stderr)


def test_nothing_to_judge_is_a_skipped_run_with_the_reason(
    champion: Trained, step_env: dict[str, str], traffic: pd.DataFrame, tmp_path: Path
) -> None:
    said = _skipped(_monitor(step_env, tmp_path / "empty", "test/empty"))
    assert "no inference log" in said
    assert "--log-sample" in said

    store = DatasetStore(str(tmp_path / "corrupt" / "churn-test"))
    hour = dt.datetime.now(dt.UTC)
    folder = Path(store.root) / "inference" / f"hour={hour:%Y-%m-%dT%H}"
    folder.mkdir(parents=True)
    (folder / "part-1-torn.parquet").write_bytes(b"PAR1 cut short by a crash")
    said = _skipped(_monitor(step_env, tmp_path / "corrupt", "test/corrupt"))
    assert "part-1-torn.parquet cannot be read" in said

    few = inference_log.InferenceLog(DatasetStore(str(tmp_path / "few" / "churn-test")),
                                     {c: "float" for c in ["age"]}, sample=1.0)  # fmt: skip
    few.record({"age": [40.0] * 10}, np.full(10, 0.5, np.float32), champion.version, "r1")
    few.close()
    said = _skipped(_monitor(step_env, tmp_path / "few", "test/few"))
    assert "10 rows served by version" in said
    assert "fewer than min_rows 200" in said


def test_a_champion_without_a_profile_is_skipped_not_judged(
    mlflow_server: str, step_env: dict[str, str], tmp_path: Path
) -> None:
    """A version trained before monitoring existed: registered from a run with no profile."""
    client = registry.client()
    experiment = client.create_experiment("monitor-test-legacy")
    run = client.create_run(experiment)
    client.create_registered_model("legacy-model")
    version = client.create_model_version("legacy-model", f"runs:/{run.info.run_id}/model",
                                          run.info.run_id)  # fmt: skip
    client.set_registered_model_alias("legacy-model", "champion", version.version)
    done = run_step(
        step_env, "monitor", "--model-name", "legacy-model", "--dataset-uri", str(tmp_path),
        "--window-hours", "1", "--run-key", "test/legacy",
    )  # fmt: skip
    said = _skipped(done)
    assert "has no reference profile" in said
    assert "trained before monitoring" in said

    done = run_step(step_env, "monitor", "--model-name", "never-registered", "--dataset-uri",
                    str(tmp_path), "--run-key", "test/none")  # fmt: skip
    assert "has no @champion" in _skipped(done)
