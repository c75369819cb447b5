"""The model server as a real process against a real MLflow server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest

from helmsman_steps import contract, registry
from tests.cluster_fixtures import wait_for
from tests.mlflow_fixtures import Trained, model_server, serve_cmd
from tools.procs import Server, alive, free_port, listeners

ROW = {"age": 30, "tenure_months": 3, "monthly_charges": 95.5, "total_charges": 300,
       "support_calls": 4, "plan": "basic", "region": "south"}  # fmt: skip


@pytest.fixture
def http(champion_server: Server) -> Iterator[httpx.Client]:
    url = champion_server.url  # type: ignore[attr-defined]
    with httpx.Client(base_url=url, timeout=10) as client:
        yield client


def test_probes_and_metadata(http: httpx.Client, champion: Trained) -> None:
    assert http.get("/healthz").json() == {"status": "alive"}
    assert http.get("/readyz").status_code == 200
    meta = http.get("/metadata").json()
    assert meta["model_name"] == champion.model_name
    assert meta["model_version"] == champion.version
    assert (
        meta["run_id"]
        == registry.resolve(f"models:/{champion.model_name}/{champion.version}").run_id
    )


def test_served_predictions_match_the_offline_golden_set(
    http: httpx.Client, champion: Trained
) -> None:
    run_id = registry.resolve(f"models:/{champion.model_name}/{champion.version}").run_id
    golden = mlflow.artifacts.load_dict(f"runs:/{run_id}/{contract.GOLDEN_ARTIFACT}")
    response = http.post("/predict", json={"instances": golden["inputs"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == champion.version
    np.testing.assert_allclose(body["predictions"], golden["predictions"], rtol=1e-5, atol=1e-6)


def test_mlflow_dataframe_records_are_accepted(http: httpx.Client) -> None:
    a = http.post("/predict", json={"instances": [ROW]}).json()["predictions"]
    b = http.post("/predict", json={"dataframe_records": [ROW]}).json()["predictions"]
    assert a == b
    assert 0 < a[0] < 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"instances": [{**ROW, "age": "thirty"}]},
            "Expected `float`, got `str` - at `$.instances[0].age`",
        ),
        (
            {"instances": [{**ROW, "age": 250}]},
            "Expected `float` <= 100.0 - at `$.instances[0].age`",
        ),
        (
            {"instances": [{**ROW, "plan": "gold"}]},
            "Invalid enum value 'gold' - at `$.instances[0].plan`",
        ),
        (
            {"instances": [{k: v for k, v in ROW.items() if k != "region"}]},
            "missing required field `region`",
        ),
        ({"instances": [{**ROW, "colour": "red"}]}, "unknown field `colour`"),
        ({"instances": []}, "with at least one row"),
        ({"rows": [ROW]}, "unknown field `rows`"),
        ({"instances": [ROW] * 10_001}, "over the 10000-row limit"),
        ("{not json", "not valid JSON"),
        ('{"instances": [{"age": NaN}]}', "not valid JSON"),
        ('{"instances": [{"age": Infinity}]}', "not valid JSON"),
        ("", "not valid JSON"),
        ({"instances": {"age": 30}}, "Expected `array | null`, got `object` - at `$.instances`"),
    ],
)
def test_bad_requests_get_a_400_that_says_what_is_wrong(
    http: httpx.Client, body: Any, message: str
) -> None:
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, str) else {"json": body}
    response = http.post("/predict", **kwargs)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert http.get("/readyz").status_code == 200  # and it goes on serving


def test_a_body_over_the_limit_gets_a_413_and_the_server_goes_on(http: httpx.Client) -> None:
    huge = b'{"instances": [' + b" " * (9 * 1024 * 1024) + b"]}"
    response = http.post("/predict", content=huge)
    assert response.status_code == 413
    assert "over 8388608 bytes" in response.json()["error"]
    assert http.post("/predict", json={"instances": [ROW]}).status_code == 200


def test_wrong_method_and_path(http: httpx.Client) -> None:
    assert http.get("/predict").status_code == 405
    assert http.get("/nope").status_code == 404


def test_metrics_count_requests_errors_and_name_the_version(
    http: httpx.Client, champion: Trained
) -> None:
    """Each answer counts once under its endpoint and code, in the latency histogram (its
    buckets cumulative, ``+Inf`` the count), and a scored request's rows and model call."""
    ok = 'helmsman_requests_total{code="200",endpoint="/predict"}'
    bad = 'helmsman_requests_total{code="400",endpoint="/predict"}'
    names = [ok, bad, 'helmsman_request_seconds_count{endpoint="/predict"}',
             'helmsman_request_seconds_bucket{endpoint="/predict",le="+Inf"}',
             "helmsman_predicted_rows_total", "helmsman_model_calls_total"]  # fmt: skip

    def counts() -> list[float]:
        text = http.get("/metrics").text
        return [_sample(text, n) if n + " " in text else 0.0 for n in names]

    before = counts()
    http.post("/predict", json={"instances": [ROW, ROW, ROW]})
    http.post("/predict", json={"instances": []})
    after = counts()
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 2, 2, 3, 1]
    text = http.get("/metrics").text
    buckets = [_sample(text, f'helmsman_request_seconds_bucket{{endpoint="/predict",le="{le}"}}')
               for le in ("0.0005", "0.001", "0.005", "0.1", "1.0", "+Inf")]  # fmt: skip
    assert buckets == sorted(buckets)
    assert buckets[-1] == after[2]
    assert 0 < _sample(text, 'helmsman_request_seconds_sum{endpoint="/predict"}') < after[2]
    assert f'version="{champion.version}"' in text
    assert "helmsman_model_info{" in text


def _bucket_counts(metrics: str) -> dict[str, float]:
    prefix = "helmsman_prediction_bucket{"
    return {
        line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(prefix)
    }


def test_the_prediction_histogram_counts_every_scored_row_in_its_bucket(
    http: httpx.Client,
) -> None:
    before = _bucket_counts(http.get("/metrics").text)
    rows = [ROW, {**ROW, "support_calls": 0, "tenure_months": 60}, ROW]
    scores = http.post("/predict", json={"instances": rows}).json()["predictions"]
    after = _bucket_counts(http.get("/metrics").text)
    assert after["+Inf"] - before["+Inf"] == 3
    for bound in ("0.05", "0.5", "0.95"):
        expected = sum(1 for score in scores if score <= float(bound))
        assert after[bound] - before[bound] == expected, bound


def test_a_compared_request_logs_its_id_and_predictions(
    http: httpx.Client, champion_server: Server, champion: Trained
) -> None:
    headers = {"x-helmsman-compare": "1", "x-request-id": "req-42"}
    scores = http.post("/predict", json={"instances": [ROW]}, headers=headers).json()
    http.post("/predict", json={"instances": [ROW]}, headers={"x-request-id": "req-43"})
    lines = [line for line in champion_server.log().splitlines() if '"prediction"' in line]
    logged = [json.loads(line) for line in lines]
    assert [entry["request_id"] for entry in logged] == ["req-42"]  # only the compared one
    assert logged[0]["predictions"] == scores["predictions"]
    assert logged[0]["version"] == champion.version


def test_sigterm_shuts_down_cleanly(
    champion: Trained, step_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    srv = Server(
        "model server",
        serve_cmd(f"models:/{champion.model_name}/{champion.version}", port),
        f"http://127.0.0.1:{port}/readyz",
        tmp_path / "serve.log",
        env=step_env,
    ).start()
    assert srv.stop(grace=15) == 0, srv.log()


def test_on_sigterm_it_drains_first_then_stops(
    champion: Trained, step_env: dict[str, str], tmp_path: Path
) -> None:
    """Draining: still answering, but not ready and closing every connection, so proxies
    move to other pods before this one stops; then a clean exit."""
    srv = model_server(f"models:/{champion.model_name}/{champion.version}", step_env, tmp_path,
                       "--drain-seconds", "3")  # fmt: skip
    assert srv.proc is not None
    with httpx.Client(base_url=srv.url, timeout=5) as http:  # type: ignore[attr-defined]
        assert http.get("/readyz").headers.get("connection") != "close"
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert http.get("/readyz").status_code == 503
        answer = http.post("/predict", json={"instances": [ROW]})
        assert answer.status_code == 200
        assert answer.headers["connection"] == "close"
        assert srv.proc.poll() is None  # still draining
    assert srv.proc.wait(timeout=15) == 0, srv.log()


def test_a_missing_model_exits_with_bad_input(step_env: dict[str, str]) -> None:
    proc = subprocess.run(
        serve_cmd("models:/no-such-model/1", free_port()),
        env=step_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "models:/no-such-model/1 does not exist" in proc.stderr


def test_scores_are_binned_together_when_enough_wait_when_their_time_is_up_or_when_scraped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call's scores wait and are binned with the others: at a scrape, ``FOLD_SECONDS``
    after the first waited (so another worker's scrape sees them), or once ``FOLD_ROWS``
    wait; whichever way, the buckets are those of all the scores at once (a score on a bound
    belongs to the bucket it bounds, as Prometheus' ``le`` says)."""
    import asyncio

    from helmsman_steps.modelinfo import PROBABILITY_BUCKETS, score_counts
    from helmsman_steps.serve import PredictionHistogram

    scores = np.array([0.0, 0.05, 0.050001, 0.5, 0.95, 0.97, 1.0, 0.3333], dtype=np.float32)
    expected = score_counts(scores, PROBABILITY_BUCKETS).tolist()
    monkeypatch.setattr(PredictionHistogram, "FOLD_SECONDS", 0.05)

    async def one_request_at_a_time(histogram: PredictionHistogram) -> list[float]:
        for i in range(len(scores)):
            histogram.observe(scores[i : i + 1])
        waited = histogram.counts.tolist()
        await asyncio.sleep(0.2)  # the timer
        return waited

    timed = PredictionHistogram()
    assert asyncio.run(one_request_at_a_time(timed)) == [0.0] * len(timed.counts)
    assert timed.counts[:-1].tolist() == expected
    assert timed.counts[-1] == pytest.approx(float(scores.sum()))

    scraped = PredictionHistogram()
    monkeypatch.setattr(PredictionHistogram, "FOLD_SECONDS", 60)

    async def then_scraped() -> list[float]:
        for i in range(len(scores)):
            scraped.observe(scores[i : i + 1])
        (family,) = scraped.collect()
        return [s.value for s in family.samples if s.name == "helmsman_prediction_bucket"]

    cumulative = asyncio.run(then_scraped())
    assert cumulative == np.cumsum(expected).tolist()

    monkeypatch.setattr(PredictionHistogram, "FOLD_ROWS", 4)
    full = PredictionHistogram()

    async def until_full() -> list[float]:
        for i in range(5):
            full.observe(scores[i : i + 1])
        return full.counts[:-1].tolist()

    assert asyncio.run(until_full()) == score_counts(scores[:4], PROBABILITY_BUCKETS).tolist()
    # outside an event loop (nothing to wait on) they are counted at once
    alone = PredictionHistogram()
    alone.observe(scores)
    assert alone.counts[:-1].tolist() == expected


def _x(rows: list[Any]) -> dict[str, list[float]]:
    """The batcher's rows -> columns, for rows that are each a number: column ``x``."""
    return {"x": [float(r) for r in rows]}


class _Doubler:
    """Stands in for a Predictor inside the batcher (this test is about batching, not the
    model): a row's score is its ``x`` doubled; each call's row count is kept."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, columns: dict[str, list[float]]) -> np.ndarray:
        self.calls.append(len(columns["x"]))
        return np.asarray(columns["x"], dtype=np.float32) * 2


@pytest.mark.parametrize(("max_rows", "calls"), [(64, [9]), (4, [4, 5]), (1, [1, 2] * 3)])
def test_requests_waiting_together_share_a_call_without_a_window(
    max_rows: int, calls: list[int]
) -> None:
    """The default window is 0: requests that wait on the same turn of the event loop share a
    model call until it reaches ``max_rows`` rows (a request is never split; 1: every request
    alone); a request alone waits on no clock and gets its own call."""
    import asyncio

    from helmsman_steps.serve import MicroBatcher

    model = _Doubler()
    scored: list[list[float]] = []  # what each call's scores the metrics are handed
    batcher = MicroBatcher(model, 0, max_rows, _x, lambda s: scored.append(s.tolist()))  # type: ignore[arg-type]
    requests = [[float(i), i + 0.5][: 1 + i % 2] for i in range(6)]  # 1 or 2 rows, 9 in all

    async def together() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.predict(r) for r in requests))

    async def one_after_another() -> list[np.ndarray]:
        return [await batcher.predict(r) for r in requests[:2]]

    answers = asyncio.run(together())
    assert [a.tolist() for a in answers] == [[2 * x for x in r] for r in requests]
    assert model.calls == calls
    assert [len(s) for s in scored] == calls  # each call counted once, with all its scores
    assert sorted(x for s in scored for x in s) == sorted(2 * x for r in requests for x in r)
    model.calls.clear()
    assert [a.tolist() for a in asyncio.run(one_after_another())] == [[0.0], [2.0, 3.0]]
    assert model.calls == [1, 2]


def test_the_cli_defaults_to_the_servers_own_bound_on_a_call() -> None:
    """``serve --batch-max-rows`` defaults to the server's bound (the CLI imports a stage only
    when it runs, so it repeats the number; this keeps the two from parting)."""
    import inspect

    from helmsman_steps import cli, serve

    cli_default = inspect.signature(cli.serve).parameters["batch_max_rows"].default
    assert cli_default == serve.BATCH_MAX_ROWS == 256
    assert serve.Settings("models:/m/1", "127.0.0.1", 1).batch_max_rows == serve.BATCH_MAX_ROWS


class _Broken(_Doubler):
    """A model call that fails (``raises``) or answers one score short."""

    def __init__(self, raises: bool) -> None:
        super().__init__()
        self.raises = raises

    def predict(self, columns: dict[str, list[float]]) -> np.ndarray:
        if self.raises:
            raise ValueError("the model failed")
        return super().predict(columns)[:-1]


def test_a_batch_waits_while_turns_of_the_loop_bring_more_requests_but_not_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Requests that arrive a turn of the event loop apart (as clients' requests do, each
    read by its own poll) share a call: the batch waits while each turn brings another, up to
    ``MAX_TURNS`` turns; a steady trickle of one a turn is still scored in bounded calls."""
    import asyncio

    from helmsman_steps.serve import MicroBatcher

    def arriving(requests: int) -> list[int]:
        model = _Doubler()
        batcher = MicroBatcher(model, 0, 64, _x, lambda scores: None)  # type: ignore[arg-type]

        async def one_a_turn() -> None:
            sent = []
            for i in range(requests):
                sent.append(asyncio.ensure_future(batcher.predict([float(i)])))
                await asyncio.sleep(0)  # a turn of the loop
            answers = await asyncio.wait_for(asyncio.gather(*sent), 5)
            assert [a.tolist() for a in answers] == [[2.0 * i] for i in range(requests)]

        asyncio.run(one_a_turn())
        return model.calls

    assert arriving(3) == [3]  # two more turns, each with a new request
    assert arriving(12) == [4, 4, 4]  # one a turn: bounded at MAX_TURNS turns a call
    monkeypatch.setattr(MicroBatcher, "MAX_TURNS", 0)  # scored on the next turn, as before
    assert len(arriving(3)) > 1  # the same requests no longer share one call


def test_a_full_batch_is_scored_on_the_next_turn_and_a_failed_call_fails_each_request() -> None:
    """The request that fills a batch does not score it itself: the call runs on the event
    loop's next turn (so one request cannot hold the loop). A call that fails, or answers a
    different number of scores than rows, fails every request of its batch with that error,
    and a request whose client went away (cancelled) does not stop the others' answers."""
    import asyncio

    from helmsman_steps.serve import MicroBatcher

    def batcher(model: _Doubler) -> MicroBatcher:
        return MicroBatcher(model, 0, 2, _x, lambda scores: None)  # type: ignore[arg-type]

    async def full_batch() -> tuple[list[int], list[float]]:
        model = _Doubler()
        scoring = asyncio.ensure_future(batcher(model).predict([1.0, 2.0]))
        await asyncio.sleep(0)  # the request ran: it filled the batch and is waiting
        seen = list(model.calls)
        return seen, (await asyncio.wait_for(scoring, 5)).tolist()

    assert asyncio.run(full_batch()) == ([], [2.0, 4.0])

    async def failing(model: _Doubler, second: Any) -> list[Any]:
        shared = batcher(model)
        sent = [shared.predict([1.0]), shared.predict([second])]
        # a bounded wait: an error lost in a loop callback would leave them waiting forever
        return await asyncio.wait_for(asyncio.gather(*sent, return_exceptions=True), 5)

    for model, second, error, message in [
        (_Broken(raises=True), 2.0, ValueError, "the model failed"),
        (_Broken(raises=False), 2.0, RuntimeError, "1 scores for 2 rows"),
        (_Doubler(), "y", ValueError, "'y'"),  # the batch's rows cannot be made columns
    ]:
        errors = asyncio.run(failing(model, second))
        assert [type(e) for e in errors] == [error] * 2
        assert all(message in str(e) for e in errors)

    async def one_goes_away() -> list[float]:
        model = _Doubler()
        shared = batcher(model)
        gone = asyncio.ensure_future(shared.predict([1.0]))
        stays = asyncio.ensure_future(shared.predict([2.0]))
        await asyncio.sleep(0)  # both wait on the same batch
        gone.cancel()
        answer = (await asyncio.wait_for(stays, 5)).tolist()
        assert model.calls == [2]
        return answer

    assert asyncio.run(one_goes_away()) == [4.0]


def test_micro_batching_scores_concurrent_requests_together_each_getting_its_own_rows(
    champion: Trained, step_env: dict[str, str], tmp_path: Path
) -> None:
    """With a batching window, requests that arrive together share model calls; each answer is
    what the request alone gets from a server without batching."""
    import asyncio

    run_id = registry.resolve(f"models:/{champion.model_name}/{champion.version}").run_id
    golden = mlflow.artifacts.load_dict(f"runs:/{run_id}/{contract.GOLDEN_ARTIFACT}")
    requests = [golden["inputs"][i : i + 1 + i % 3] for i in range(0, 48, 3)]  # 1 to 3 rows
    expected = [golden["predictions"][i : i + 1 + i % 3] for i in range(0, 48, 3)]
    server = model_server(f"models:/{champion.model_name}@champion", step_env, tmp_path,
                          "--batch-window-ms", "20", "--batch-max-rows", "1000")  # fmt: skip
    url = server.url  # type: ignore[attr-defined]
    try:

        async def send_all() -> list[Any]:
            async with httpx.AsyncClient(base_url=url) as client:
                sent = [client.post("/predict", json={"instances": r}) for r in requests]
                return [r.json() for r in await asyncio.gather(*sent)]

        answers = asyncio.run(send_all())
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        server.stop()
    for answer, wanted in zip(answers, expected, strict=True):
        np.testing.assert_allclose(answer["predictions"], wanted, rtol=1e-5, atol=1e-6)
    (calls,) = (float(line.split()[1]) for line in metrics.splitlines()
                if line.startswith("helmsman_model_calls_total "))  # fmt: skip
    assert 1 <= calls < len(requests) / 2  # 16 requests within the window: a few model calls


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _sample(metrics: str, name: str) -> float:
    (value,) = (float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith(name + " "))  # fmt: skip
    return value


def test_workers_share_the_port_their_metrics_add_up_and_a_lost_one_is_replaced(
    champion: Trained, step_env: dict[str, str], tmp_path: Path
) -> None:
    """Two workers: both take connections, any one's /metrics counts every worker's requests
    and scored rows, a killed worker is replaced, and SIGTERM stops them all and leaves no
    files behind."""
    from helmsman_steps.serve import ENDPOINTS

    srv = model_server(f"models:/{champion.model_name}/{champion.version}", step_env, tmp_path,
                       "--workers", "2", "--drain-seconds", "1")  # fmt: skip
    url: str = srv.url  # type: ignore[attr-defined]
    port = int(url.rsplit(":", 1)[1])
    ok = 'helmsman_requests_total{code="200",endpoint="/predict"}'

    def scraped(name: str) -> float:  # over a new connection: any worker may answer
        return _sample(httpx.get(f"{url}/metrics", headers={"connection": "close"}).text, name)

    try:
        assert srv.proc is not None
        wait_for("the second worker to listen", lambda: listeners(port) == 2, timeout=60)
        (worker,) = _children(srv.proc.pid)
        # the folder the first worker made for the metrics; the others inherit it
        environ = Path(f"/proc/{worker}/environ").read_bytes().decode().split("\0")
        (folder,) = [Path(v.split("=", 1)[1]) for v in environ
                     if v.startswith("PROMETHEUS_MULTIPROC_DIR=")]  # fmt: skip
        sent = 60
        for _ in range(sent):  # a connection each: the kernel spreads them over the listeners
            answer = httpx.post(f"{url}/predict", json={"instances": [ROW]},
                                headers={"connection": "close"})  # fmt: skip
            assert answer.status_code == 200
        answered = {}  # pid -> the /predict answers its own file counts
        for pid in (srv.proc.pid, worker):
            (path,) = folder.glob(f"tally_requests_*_{pid}.npy")
            counts = np.load(path).reshape(len(ENDPOINTS), -1)  # a row an endpoint
            answered[pid] = counts[ENDPOINTS.index("/predict")].sum()
        assert all(answered.values()), f"both workers answer requests: {answered}"
        for _ in range(6):  # whichever worker answers the scrape counts them all
            # a request is counted just after its answer is sent: wait for the last one
            wait_for(f"{sent} requests counted", lambda: scraped(ok) == sent, timeout=60)
            assert scraped("helmsman_predicted_rows_total") == sent
        # a worker bins its scores within FOLD_SECONDS (1 s): then every scrape counts them
        wait_for("the scores binned", lambda: scraped("helmsman_prediction_count") == sent,
                 timeout=10)  # fmt: skip
        for _ in range(6):
            assert scraped("helmsman_prediction_count") == sent

        os.kill(worker, signal.SIGKILL)
        wait_for("the killed worker's socket to close", lambda: listeners(port) == 1, timeout=60)
        wait_for("a new worker", lambda: listeners(port) == 2, timeout=60)
        (replacement,) = _children(srv.proc.pid)
        assert replacement != worker
        for _ in range(6):  # the lost worker's counts stay: a counter never goes down
            assert scraped("helmsman_predicted_rows_total") == sent
        assert httpx.post(f"{url}/predict", json={"instances": [ROW]}).status_code == 200

        srv.proc.send_signal(signal.SIGTERM)  # the first worker alone, as the kubelet sends it
        assert srv.proc.wait(timeout=30) == 0, srv.log()
        assert not alive(replacement), "the first worker stopped the others before it ended"
        assert not folder.exists()
    finally:
        srv.stop(grace=20)
