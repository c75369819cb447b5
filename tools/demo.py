"""`make demo`, `make down` and `make backfill`: the whole pipeline on this machine.

``up`` starts (or finds running) the local stack in ``.demo/`` -- localcluster, MLflow and
Airflow 3, each in its own process group -- then triggers ``train_churn`` through Airflow's
REST API with Params (and, the first time, ``train_diabetes``: a regression of another kind,
side by side), follows the runs task by task, and prints where everything is: the MLflow run
and model version, the evaluation decision, the rollout's preview and every step's figures,
the Gateway address each model answers on with a prediction made through it, and the UI
addresses with the login. Each later ``up`` trains churn on the next day of data: a
challenger, rolled out in steps while simulated users send requests through the Gateway (what
they saw is reported).
``down`` stops every process ``up`` started (by PID). ``backfill`` runs a backfill against the
running stack and shows that nothing was deployed by it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from tools.airflow_api import AirflowApi
from tools.procs import port_taken
from tools.stack import REPO, Ports, Settings, Stack, StackError, backfill_runs_at_once
from tools.users import Users

DAG = "train_churn"
MODEL = "churn"
ROLLBACK_DAG = "rollback_churn"
NAMESPACE = "ml"
ROOT = REPO / ".demo"
# The demo's Params: a small window and a short training, so a run takes about a minute; a
# canary of two short steps after the shadow step, so the rollout is seen in half a minute.
DEMO_CONF = {"window_days": 3, "epochs": 6, "hidden": "32,16", "gpus": 1,
             "canary_steps": "10,50", "analysis_interval": 8}  # fmt: skip
SAMPLE = {"age": 34, "tenure_months": 7, "monthly_charges": 89.5, "total_charges": 626.5,
          "support_calls": 4, "plan": "premium", "region": "west"}  # fmt: skip
FIRST_DAY = dt.date(2026, 3, 8)


@dataclass(frozen=True)
class DemoModel:
    """A model the demo trains and serves: its Params, a request row, what a score means."""

    name: str
    conf: dict[str, Any]
    sample: dict[str, Any]
    meaning: str
    every_time: bool  # train on every demo (the next day of data), or only the first

    @property
    def dag(self) -> str:
        return f"train_{self.name}"

    @property
    def rollback_dag(self) -> str:
        return f"rollback_{self.name}"


CHURN = DemoModel(MODEL, DEMO_CONF, SAMPLE, "churn probability", every_time=True)
# The second model: the diabetes study as two weeks of daily files (the stack writes them), all
# of them in one window; trained once, then served beside churn.
DIABETES = DemoModel(
    "diabetes",
    {"data_end": "2026-02-15", "window_days": 14, "canary_steps": "50", "analysis_interval": 8},
    {"age": 59, "sex": 2, "bmi": 32.1, "bp": 101, "tc": 157, "ldl": 93.2, "hdl": 38, "tch": 4,
     "ltg": 4.86, "glu": 87},
    "disease progression in a year (25 to 346 in the study)",
    every_time=False,
)  # fmt: skip
MODELS = (CHURN, DIABETES)
STATE_STYLE = {
    "success": "green",
    "running": "yellow",
    "deferred": "magenta",
    "queued": "cyan",
    "scheduled": "cyan",
    "failed": "bold red",
    "upstream_failed": "red",
    "skipped": "dim",
    "up_for_retry": "yellow",
}
ORDER = ["plan", "etl", "train", "evaluate", "decide", "rollout", "promote"]

console = Console(highlight=False, soft_wrap=True)


@dataclass
class Outcome:
    run_id: str
    state: str
    seconds: float
    summary: dict[str, Any]
    # The other models' runs of this demo (diabetes, the first time), and where every model
    # answers: model -> serving(stack, model).
    others: dict[str, Outcome] = field(default_factory=dict)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)


def stack_for(root: Path, ports: Ports | None = None, settings: Settings | None = None) -> Stack:
    existing = Stack.load(root)
    if existing is not None and existing.running():
        if settings is not None:
            existing.settings = settings
        return existing
    # The demo's data: 50k rows a day, so training has real work (a few seconds an epoch).
    return Stack(root, ports or Ports(), settings or Settings(rows_per_day=50_000))


def api_for(stack: Stack) -> AirflowApi:
    return AirflowApi(stack.airflow_url, "admin", stack.password)


def next_day(stack: Stack) -> str:
    """The day after the champion's data: each demo run trains on one more day."""
    from mlflow.exceptions import MlflowException

    client = stack.mlflow_client()
    try:
        champion = client.get_model_version_by_alias(MODEL, "champion")
    except MlflowException:
        return str(FIRST_DAY)
    end = champion.tags.get("helmsman.interval_end", str(FIRST_DAY - dt.timedelta(days=1)))
    return str(dt.date.fromisoformat(end[:10]) + dt.timedelta(days=1))


def progress_table(runs: dict[str, dict[str, dict[str, Any]]], started: float) -> Table:
    """One row per task, one column per DAG run (state and duration)."""
    table = Table(title=f"{'  +  '.join(runs)}  ·  {time.monotonic() - started:5.0f} s",
                  title_justify="left")  # fmt: skip
    table.add_column("task")
    for dag in runs:
        table.add_column(dag)
    for task in ORDER:
        cells = []
        for tis in runs.values():
            ti = tis.get(task, {})
            state = ti.get("state") or "waiting"
            took = ti.get("duration")
            style = STATE_STYLE.get(state, "dim")
            cells.append(f"[{style}]{state}[/]" + (f" {took:.1f} s" if took else ""))
        table.add_row(task, *cells)
    return table


def run_pipeline(stack: Stack, conf: dict[str, Any], show: bool = True) -> Outcome:
    """Train churn once with ``conf`` (the demo's main run)."""
    return run_pipelines(stack, [(CHURN, conf)], show)[0]


def run_pipelines(
    stack: Stack, runs: list[tuple[DemoModel, dict[str, Any]]], show: bool = True
) -> list[Outcome]:
    """Trigger every model's training run at once and follow them side by side; simulated users
    send requests to each model that already serves while its run rolls out."""
    api = api_for(stack)
    for model, _ in runs:
        api.wait_for_dag(model.dag)
        api.unpause(model.dag)
    started = time.monotonic()
    users: dict[str, Users] = {}
    for model, _ in runs:
        if "served_version" in serving(stack, model):  # it serves: users are on its route
            rows = champion_rows(stack, model.name) or [model.sample]
            users[model.name] = Users(str(stack.model_url(model.name)), rows, every=0.05)
            users[model.name].start()
    ids = {model.dag: api.trigger(model.dag, conf, note="make demo") for model, conf in runs}
    states: dict[str, dict[str, Any]] = {}
    try:
        live = Live(progress_table({d: {} for d in ids}, started), console=console,
                    refresh_per_second=4) if show else None  # fmt: skip
        with live or contextlib.nullcontext():
            deadline = time.monotonic() + 1800
            while len(states) < len(ids):
                if time.monotonic() > deadline:
                    raise StackError(f"the demo's runs did not finish in 30 minutes: {ids}")
                for dag, run_id in ids.items():
                    if dag not in states:
                        run = api.run(dag, run_id)
                        if run["state"] in ("success", "failed"):
                            states[dag] = run
                if live is not None:
                    tis = {dag: api.task_instances(dag, run_id) for dag, run_id in ids.items()}
                    live.update(progress_table(tis, started))
                time.sleep(1)
    finally:
        for client in users.values():
            client.__exit__()
    seconds = time.monotonic() - started
    outcomes = []
    for model, _ in runs:
        run_id = ids[model.dag]
        summary = summarize(stack, api, run_id, model)
        if model.name in users:
            summary["users"] = users[model.name].summary()
        outcomes.append(Outcome(run_id, states[model.dag]["state"], seconds, summary))
    return outcomes


def champion_version(stack: Stack, model: str = MODEL) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(stack.mlflow_client().get_model_version_by_alias(model, "champion").version)
    except MlflowException:
        return None


def restore_champion(stack: Stack, model: DemoModel = CHURN) -> str | None:
    """Serve @champion again when MLflow has one and the cluster serves nothing.

    MLflow's database and artifacts live on in the demo folder after `make down`, but
    localcluster starts empty: without this, a new challenger is judged against a champion no
    user can reach, and a rejected one leaves nothing serving. The champion goes back through
    ``rollback_<model>``: the same preview checks a training run's rollout makes. Returns the
    version restored, None when nothing needed restoring.
    """
    version = champion_version(stack, model.name)
    if version is None:
        return None  # the first demo: training deploys the first version
    if "served_version" in serving(stack, model):
        return None
    dag = model.rollback_dag
    console.print(f"· the cluster starts empty after `make down`; serving {model.name} "
                  f"@champion (version {version}) again first, through {dag}")  # fmt: skip
    api = api_for(stack)
    api.wait_for_dag(dag)
    api.unpause(dag)
    conf = {"model_version": version, "shadow": False, "analysis_interval": 5}
    run = api.wait(dag, api.trigger(dag, conf, note="make demo"))
    served = serving(stack, model).get("served_version")
    if run["state"] != "success" or served != version:
        raise StackError(
            f"{dag} could not serve version {version} again ({run['state']}, serving "
            f"{served}); read its task logs at {stack.airflow_url}/dags/{dag}"
        )
    return version


def champion_rows(stack: Stack, model: str = MODEL) -> list[dict[str, Any]]:
    """The rows of @champion's golden set (real rows of the data it was evaluated on)."""
    import tempfile

    from mlflow.exceptions import MlflowException

    client = stack.mlflow_client()
    try:
        run_id = client.get_model_version_by_alias(model, "champion").run_id
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(str(run_id), "evaluation/golden.json", tmp)
            rows: list[dict[str, Any]] = json.loads(Path(path).read_text())["inputs"]
    except (MlflowException, OSError, KeyError, ValueError):
        return []
    return rows


def summarize(
    stack: Stack, api: AirflowApi, run_id: str, model: DemoModel = CHURN
) -> dict[str, Any]:

    dag = model.dag
    tis = api.task_instances(dag, run_id)
    summary: dict[str, Any] = {"model": model.name,
                               "tasks": {t: ti["state"] for t, ti in tis.items()}}  # fmt: skip
    if tis.get("decide", {}).get("state") != "success":
        return summary
    decision = api.xcom(dag, run_id, "decide")
    client = stack.mlflow_client()
    version = client.get_model_version(model.name, decision["version"])
    experiment = client.get_run(str(version.run_id)).info.experiment_id
    summary |= {
        "model_version": decision["version"],
        "mlflow_run": f"{stack.mlflow_url}/#/experiments/{experiment}/runs/{version.run_id}",
        "evaluation": decision["evaluation"],
        "evaluation_reasons": version.tags.get("helmsman.decision_reasons", ""),
        "deploy": decision["deploy"],
        "deploy_reason": decision["reason"],
        "rollout": version.tags.get("helmsman.rollout", "not rolled out"),
        "rollout_reason": version.tags.get("helmsman.rollout_reason", ""),
    }
    if tis.get("rollout", {}).get("state") == "success":
        summary["rollout_outcome"] = api.xcom(dag, run_id, "rollout")
    summary |= serving(stack, model)
    return summary


def serving(stack: Stack, model: DemoModel = CHURN) -> dict[str, Any]:
    """Where users reach a served model (its path on the Gateway), and one prediction made
    there."""
    url = stack.model_url(model.name)
    if url is None:
        return {}
    try:
        meta = _json(url + "/metadata")
        answer = _json(url + "/predict", {"instances": [model.sample]})
    except OSError as exc:  # nothing serves yet: the route does not exist
        return {"service": url, "service_error": str(exc)}
    return {"service": url, "served_version": meta["model_version"], "sample": model.sample,
            "prediction": answer["predictions"][0], "meaning": model.meaning}  # fmt: skip


def _json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - the demo's own Service address
        url, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return json.load(response)


def report(stack: Stack, outcome: Outcome) -> None:
    for one in (outcome, *outcome.others.values()):
        report_run(stack, one)
    console.print("\n[bold]where the models answer[/] (the Gateway, a path per model)")
    for name, s in outcome.endpoints.items():
        if "prediction" in s:
            body = json.dumps({"instances": [s["sample"]]})
            console.print(f"  {name:<10} {s['service']}  (version {s['served_version']})")
            console.print(f"             curl -s {s['service']}/predict "
                          f"-H 'Content-Type: application/json' -d '{body}'")  # fmt: skip
            console.print(f"             -> {s['meaning']} {s['prediction']:.3f}")
        else:
            console.print(f"  {name:<10} nothing serves {name} yet at {s.get('service')}: "
                          f"{s.get('service_error', 'no answer')}")  # fmt: skip
    console.print(f"  Airflow    {stack.airflow_url}  (login admin / {stack.password})")
    mlflow_password = stack.mlflow_env()["MLFLOW_TRACKING_PASSWORD"]
    console.print(f"  MLflow     {stack.mlflow_url}  (login admin / {mlflow_password})")
    console.print(f"  Prometheus {stack.prometheus_url}")
    console.print(f"  kubectl    kubectl --kubeconfig {stack.kubeconfig} -n ml get "
                  "pods,svc,httproutes,gateways")  # fmt: skip
    console.print("  stop       make down   ·   again: make demo (trains a challenger)")


def report_run(stack: Stack, outcome: Outcome) -> None:
    """One model's run: its version, decision, rollout steps and what users saw."""
    s = outcome.summary
    model = s.get("model", MODEL)
    colour = "green" if outcome.state == "success" else "red"
    console.print(f"\n[bold {colour}]train_{model} {outcome.state}[/] in "
                  f"{outcome.seconds:.0f} s ({outcome.run_id})")  # fmt: skip
    if "model_version" in s:
        console.print(f"  model      {model} version {s['model_version']}  ·  {s['mlflow_run']}")
        console.print(f"  evaluation {s['evaluation']}: {s['evaluation_reasons']}")
        console.print(f"  deploy     {'yes' if s['deploy'] else 'no'}: {s['deploy_reason']}")
        if s["deploy"]:
            console.print(f"  rollout    {s['rollout']} {s['rollout_reason']}")
            rolled = s.get("rollout_outcome") or {}
            if rolled.get("preview"):
                p = rolled["preview"]
                console.print(f"    preview  identity, golden-set parity, probe load p99 "
                              f"{p['probe_p99_ms']} ms: passed")  # fmt: skip
            for step in rolled.get("steps", []):
                console.print(f"    step     {step_line(step)}")
        if "users" in s:
            u = s["users"]
            console.print(f"  users      {u['requests']} requests through the Gateway during "
                          f"the run, {u['failed']} failed; answered by versions "
                          f"{u['versions']}")  # fmt: skip
    if outcome.state != "success":
        failed = [t for t, st in s["tasks"].items() if st == "failed"]
        console.print(f"[red]failed task(s): {', '.join(failed)}[/]; read the log in the "
                      f"Airflow UI or {stack.root / 'airflow' / 'logs'}")  # fmt: skip


def step_line(step: dict[str, Any]) -> str:
    """One rollout step as the demo shows it."""
    new, stable = step["new"], step["stable"]

    def rate(side: dict[str, Any]) -> str:
        errors = side["errors"] / side["requests"] if side["requests"] else 0.0
        p99 = "-" if side["p99_ms"] is None else f"{side['p99_ms']:.0f} ms"
        return f"{side['requests']:.0f} req, {errors:.1%} errors, p99 {p99}"

    parts = [f"{step['step']:>6}", f"new {rate(new)}", f"stable {rate(stable)}"]
    if step.get("divergence") is not None:
        parts.append(f"divergence {step['divergence']:.3f}")
    if step.get("paired"):
        paired = step["paired"]
        parts.append(f"shadow pairs {paired['pairs']}, |diff| {paired['mean_abs_diff']:.3f}")
    verdict = " · passed" if step["passed"] else " · FAILED"
    notes = f" ({'; '.join(step['notes'])})" if step.get("notes") else ""
    return " · ".join(parts) + verdict + notes


def up(root: Path = ROOT, ports: Ports | None = None, settings: Settings | None = None,
       show: bool = True) -> tuple[Stack, Outcome]:  # fmt: skip
    stack = stack_for(root, ports, settings)
    reused = bool(stack.running())
    with console.status("starting the stack" if not reused else "checking the stack"):
        stack.up(say=lambda message: console.print(f"· {message}"))
    if reused:
        console.print(f"· the stack in {root} is running: reusing it")
    runs: list[tuple[DemoModel, dict[str, Any]]] = []
    for model in MODELS:
        restore_champion(stack, model)
        if model.every_time or champion_version(stack, model.name) is None:
            conf = {**model.conf, "data_end": next_day(stack)} if model is CHURN else model.conf
            console.print(f"· triggering {model.dag} with {json.dumps(conf)}")
            runs.append((model, conf))
    outcome, *others = run_pipelines(stack, runs, show=show)
    outcome.others = {o.summary["model"]: o for o in others}
    outcome.endpoints = {model.name: serving(stack, model) for model in MODELS}
    report(stack, outcome)
    return stack, outcome


def down(root: Path = ROOT) -> list[str]:
    stack = Stack.load(root)
    if stack is None:
        console.print("nothing to stop: no demo stack here")
        return []
    stopped = stack.down()
    busy = [p for p in asdict(stack.ports).values() if port_taken(p)]
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    if busy:
        console.print(f"[red]ports still answering: {busy}[/] (another program?)")
    return stopped


def progress(line: str, shown: str) -> None:
    """A progress line: redrawn in place on a terminal; elsewhere (a file, a pipe, CI) printed
    once each time it changes, so a log reads one line per change."""
    if console.is_terminal:
        console.print(line, end="\r")
    elif line != shown:
        console.print(line)


def backfill(start: str, end: str, root: Path = ROOT) -> list[dict[str, Any]]:
    stack = Stack.load(root)
    if stack is None or not stack.running():
        raise StackError("no demo stack is running: run `make demo` first")
    api = api_for(stack)
    before = serving(stack).get("served_version")
    side_by_side = backfill_runs_at_once()
    api.backfill(DAG, f"{start}T00:00:00Z", f"{end}T23:59:59Z", max_active_runs=side_by_side)
    console.print(f"· backfill of {DAG} from {start} to {end} created ({side_by_side} runs at "
                  "once); following it")  # fmt: skip
    deadline, runs, shown = time.monotonic() + 3600, [], ""
    while time.monotonic() < deadline:
        runs = [r for r in api.runs(DAG) if r["run_type"] == "backfill"
                and start <= r["data_interval_start"][:10] <= end]  # fmt: skip
        line = (
            f"  {sum(r['state'] in ('success', 'failed') for r in runs)}/{len(runs)} runs finished"
        )
        progress(line, shown)
        shown = line
        if runs and all(r["state"] in ("success", "failed") for r in runs):
            break
        time.sleep(3)
    if console.is_terminal:
        console.print()
    for r in runs:
        decision = api.xcom(DAG, r["dag_run_id"], "decide") if r["state"] == "success" else {}
        deployed = "yes" if decision.get("deploy") else "no"
        console.print(f"  {r['data_interval_start'][:10]}  {r['state']:8}  version "
                      f"{decision.get('version', '?')}  deployed: {deployed} "
                      f"({decision.get('reason', '')})")  # fmt: skip
    after = serving(stack).get("served_version")
    console.print(f"serving before: version {before}; after: version {after} "
                  f"({'unchanged' if before == after else 'CHANGED'})")  # fmt: skip
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("up", help="start or reuse the stack and run the pipeline once")
    start.add_argument(
        "--triggerer",
        action="store_true",
        help="also run Airflow's triggerer (for a platform with deferrable on)",
    )
    sub.add_parser("down", help="stop every process the demo started")
    fill = sub.add_parser("backfill", help="backfill the training DAG over past days")
    fill.add_argument("--from", dest="start", required=True, help="first day, YYYY-MM-DD")
    fill.add_argument("--to", dest="end", required=True, help="last day, YYYY-MM-DD")
    args = parser.parse_args(argv)
    try:
        if args.action == "down":
            down()
            return 0
        if args.action == "backfill":
            for day in (args.start, args.end):
                dt.date.fromisoformat(day)
            runs = backfill(args.start, args.end)
            return 0 if runs and all(r["state"] == "success" for r in runs) else 1
        settings = Settings(rows_per_day=50_000, triggerer=args.triggerer)
        _, outcome = up(settings=settings)
        return 0 if outcome.state == "success" else 1
    except StackError as exc:
        console.print(f"[red]demo: {exc}[/]")
        return 1
    except ValueError as exc:
        console.print(f"[red]demo: {exc} (use YYYY-MM-DD)[/]")
        return 2


if __name__ == "__main__":
    sys.exit(main())
