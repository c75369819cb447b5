"""`make drift`: the monitoring loop on the running demo, from shifted traffic to a new champion.

1. the churn feed shifts from today on (``shift_from`` in the settings ConfigMap: a price rise
   and a wave of support calls, ``helmsman_steps.sources.SHIFT``);
2. shifted requests go to the live model through the Gateway, and the serving pods log a
   sample of them (the inference log) until the monitor has enough rows to judge;
3. ``monitor_churn`` is triggered (it runs hourly on its own): it flags the shifted features
   with their figures, and its breach is an event of the ``helmsman://churn/drift`` asset;
4. ``train_churn`` starts from that event (not from its cron, not from a person), trains on
   the days up to today's, shifted ones included, and goes through evaluation and the gated
   rollout like any other run.

The end-to-end tests drive the same functions against their own stack.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from helmsman_steps import sources, spec
from helmsman_steps.contract import BREACH_KINDS
from helmsman_steps.exitcodes import Skipped
from helmsman_steps.monitor import read_window
from helmsman_steps.store import DatasetStore
from tools.airflow_api import AirflowApi
from tools.stack import REPO, Stack, StackError

MODEL = "churn"
MONITOR_DAG = f"monitor_{MODEL}"
TRAIN_DAG = f"train_{MODEL}"
ROWS_PER_REQUEST = 20
# Other customers than the training feed's (its seed is the stack's, 7 by default).
TRAFFIC_SEED = 1001


def shifted_batches(
    day: dt.date, rows: int, seed: int = TRAFFIC_SEED
) -> list[list[dict[str, Any]]]:
    """``rows`` clean records of ``day`` as the shifted feed has them, in request-sized
    batches of the model's declared columns (no id, date or label)."""
    columns = list(spec.load(REPO / "models" / MODEL).raw_schema.columns)
    feed = sources.SyntheticChurn(rows_per_day=rows, seed=seed, dirty_share=0.0, shift_from=day)
    records = feed.read(day)[columns].to_dict("records")
    return [records[i : i + ROWS_PER_REQUEST] for i in range(0, len(records), ROWS_PER_REQUEST)]


def send(url: str, batches: list[list[dict[str, Any]]]) -> int:
    """POST each batch to the model's /predict; the number answered 200 (others are errors)."""
    answered = 0
    with httpx.Client(timeout=10) as client:
        for batch in batches:
            response = client.post(f"{url}/predict", json={"instances": batch})
            response.raise_for_status()
            answered += 1
    return answered


def logged_rows(stack: Stack, version: str, since: dt.datetime) -> int:
    """Rows the serving pods have written to the inference log for ``version`` since then."""
    store = DatasetStore(str(stack.root / "datasets" / MODEL))
    try:
        return len(read_window(store, since, dt.datetime.now(dt.UTC), version))
    except Skipped:  # nothing written yet (the monitor's own "no traffic" skip)
        return 0


def wait_logged(stack: Stack, version: str, since: dt.datetime, rows: int, timeout: float) -> int:
    """Until the log holds ``rows`` rows (the writer flushes every 30 s); how many it holds."""
    deadline, seen = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        seen = logged_rows(stack, version, since)
        if seen >= rows:
            return seen
        time.sleep(2)
    raise StackError(f"the inference log holds {seen} of {rows} rows after {timeout:.0f} s")


@dataclass
class Detection:
    monitor_run: str
    state: str
    alarm: dict[str, Any] | None  # the alarm task's answer: each breach with its figures
    retraining: dict[str, Any] | None  # train_churn's asset-triggered run, once it finished


def asset_runs(api: AirflowApi) -> list[dict[str, Any]]:
    return [r for r in api.runs(TRAIN_DAG) if r["run_type"] == "asset_triggered"]


def detect_and_retrain(
    api: AirflowApi, say: Callable[[str], None] = print, timeout: float = 900
) -> Detection:
    """Trigger the monitor now, then follow the training run its breach starts (if any)."""
    for dag in (MONITOR_DAG, TRAIN_DAG):
        api.unpause(dag)
    before = {r["dag_run_id"] for r in asset_runs(api)}
    run_id = api.trigger(MONITOR_DAG, {})
    state = api.wait(MONITOR_DAG, run_id, timeout=300)["state"]
    tis = api.task_instances(MONITOR_DAG, run_id)
    if tis["alarm"]["state"] != "success":
        say(f"{MONITOR_DAG}: {state}; monitor {tis['monitor']['state']}, alarm "
            f"{tis['alarm']['state']}: no breach to act on")  # fmt: skip
        return Detection(run_id, state, None, None)
    alarm: dict[str, Any] = api.xcom(MONITOR_DAG, run_id, "alarm")
    said = "; ".join(f"{b['what']} {b['measure']} {b['value']:.3g} (threshold "
                     f"{b['threshold']:.3g})" for b in alarm["breaches"])  # fmt: skip
    say(f"{MONITOR_DAG}: breach in {alarm['window_start']}..{alarm['window_end']}: {said}")
    say(f"  {alarm['action']}")
    if not any(tis[f"retrain_on_{kind}"]["state"] == "success" for kind in BREACH_KINDS):
        return Detection(run_id, state, alarm, None)
    deadline = time.monotonic() + 120
    new: list[dict[str, Any]] = []
    while not new and time.monotonic() < deadline:
        new = [r for r in asset_runs(api) if r["dag_run_id"] not in before]
        time.sleep(2)
    if not new:
        raise StackError(f"no {TRAIN_DAG} run started from the breach's asset event in 120 s")
    retrain_id = new[0]["dag_run_id"]
    say(f"{TRAIN_DAG}: {retrain_id} started from the breach's asset event; following it")
    done = api.wait(TRAIN_DAG, retrain_id, timeout=timeout)
    return Detection(run_id, state, alarm, done)


def main(argv: list[str] | None = None) -> int:
    from tools.demo import ROOT, api_for, serving

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="shifted rows to send")
    args = parser.parse_args(argv)
    stack = Stack.load(ROOT)
    if stack is None or not stack.running():
        print("drift: no demo stack is running: run `make demo` first", file=sys.stderr)
        return 1
    api = api_for(stack)
    today = dt.datetime.now(dt.UTC).date()
    print(f"· the churn feed shifts from {today}: {stack.inject_shift(today)}")
    version = str(serving(stack)["served_version"])
    url = stack.model_url(MODEL)
    if url is None:
        print("drift: the Gateway has no address yet", file=sys.stderr)
        return 1
    since, started = dt.datetime.now(dt.UTC), time.monotonic()
    batches = shifted_batches(today, args.rows)
    print(f"· sending {args.rows} shifted rows to version {version} at {url}")
    send(url, batches)
    # A tenth of the requests is logged (serving.yaml's --log-sample).
    rows = wait_logged(stack, version, since, args.rows // 20, timeout=90)
    print(f"· the inference log holds {rows} of those rows; triggering {MONITOR_DAG}")
    found = detect_and_retrain(api, say=lambda line: print(f"· {line}"))
    if found.alarm is not None:
        query = f'helmsman_monitor_feature_psi{{model="{MODEL}"}}'
        print(f"· Prometheus holds the verdict per feature: {stack.prometheus_url}/graph?"
              f"{urllib.parse.urlencode({'g0.expr': query, 'g0.tab': '1'})}")  # fmt: skip
    if found.retraining is None:
        return 1
    retrain_id = found.retraining["dag_run_id"]
    plan = api.xcom(TRAIN_DAG, retrain_id, "plan")
    decision = (
        api.xcom(TRAIN_DAG, retrain_id, "decide") if found.retraining["state"] == "success" else {}
    )
    after = serving(stack).get("served_version")
    print(f"· {TRAIN_DAG}: {found.retraining['state']}, trained on {plan['window_start']} up to "
          f"{plan['end']} (today's shifted records included); version "
          f"{decision.get('version', '?')}: {decision.get('reason', 'no decision')}")  # fmt: skip
    print(f"· serving version {after} (was {version}), {time.monotonic() - started:.0f} s after "
          "the first shifted request")  # fmt: skip
    return 0 if found.retraining["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
