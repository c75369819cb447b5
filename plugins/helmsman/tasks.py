"""The Python tasks of the training DAG, as plain functions of what Airflow hands them.

The DAG file wraps each in ``@task``; keeping the logic here keeps the DAG file thin and the
functions testable without a scheduler.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from helmsman import fence, models
from helmsman_steps import contract

log = logging.getLogger(__name__)


def plan_interval(
    *,
    data_interval_start: dt.datetime | None,
    data_interval_end: dt.datetime | None,
    run_after: dt.datetime,
    data_end: str | None,
    window_days: int = 1,
) -> dict[str, str]:
    """The days this run works on, as ISO dates: it trains up to ``end`` (exclusive) and
    evaluates on ``[start, end)``; ETL builds ``[window_start, end)``, the training window.

    - ``data_end`` (the Param, YYYY-MM-DD) names the day after the last day to use;
    - else the run's data interval (cron runs and backfills: the interval's days);
    - else (a manual run, whose interval is empty in Airflow 3): the day before ``run_after``.
    """
    if data_end:
        end = dt.date.fromisoformat(data_end)
        start = end - dt.timedelta(days=1)
    elif data_interval_start and data_interval_end and data_interval_end > data_interval_start:
        start, end = data_interval_start.date(), data_interval_end.date()
    else:
        end = run_after.astimezone(dt.UTC).date()
        start = end - dt.timedelta(days=1)
    window_start = min(start, end - dt.timedelta(days=window_days))
    return {"start": str(start), "end": str(end), "window_start": str(window_start)}


def planned(key: str) -> str:
    """A template for one of ``plan_interval``'s dates, for the pods' arguments."""
    return "{{ ti.xcom_pull(task_ids='plan')['%s'] }}" % key  # noqa: UP031 - Jinja braces


def decide(
    *,
    model_name: str,
    train_run_key: str,
    run_type: str,
    interval_end: str,
    deploy: str,
    dry_run: bool,
) -> dict[str, Any]:
    """The fence, applied to what training and evaluation recorded; the answer is recorded on
    the model version and returned (XCom) for the rollout task."""
    models.configure()
    version = models.trained_by(model_name, train_run_key)
    champion = models.by_alias(model_name, contract.CHAMPION)
    if not version.decision:
        raise LookupError(
            f"version {version.version} has no evaluation decision; did the evaluate task run?"
        )
    end = dt.datetime.fromisoformat(interval_end)
    decision = fence.decide(
        run_type=run_type,
        interval_end=end if end.tzinfo else end.replace(tzinfo=dt.UTC),
        champion_interval_end=champion.interval_end if champion else None,
        evaluation=version.decision,
        deploy=deploy,
        dry_run=dry_run,
    )
    if champion is not None and champion.version == version.version:
        decision = fence.FenceDecision(False, f"version {version.version} is already @champion")
    models.tag(
        version,
        {
            contract.FENCE_TAG: "deploy" if decision.deploy else "hold",
            contract.FENCE_REASON_TAG: decision.reason,
        },
    )
    log.info(
        "version %s: evaluation %s; champion %s; %s: %s",
        version.version,
        version.decision,
        champion.version if champion else "none",
        "deploy" if decision.deploy else "no deploy",
        decision.reason,
    )
    return {
        "version": version.version,
        "deploy": decision.deploy,
        "reason": decision.reason,
        "evaluation": version.decision,
        "champion": champion.version if champion else None,
    }


def drift_data_end(triggering_asset_events: Any) -> str | None:
    """The data end of a training run a monitoring breach started: the day after the breached
    window's last day, so that training includes the traffic that drifted. None for a run the
    cron or a person started."""
    events = [e for found in (triggering_asset_events or {}).values() for e in found]
    ends = [e.extra["window_end"] for e in events if (e.extra or {}).get("window_end")]
    if not ends:
        return None
    last = max(dt.datetime.fromisoformat(end) for end in ends)
    day = (last - dt.timedelta(microseconds=1)).date() + dt.timedelta(days=1)
    log.info("started by a monitoring breach (window ending %s): training up to %s", last, day)
    return day.isoformat()


def alarm(
    *, model_name: str, monitor_run_key: str, retrain: bool, cooldown: dt.timedelta
) -> dict[str, Any]:
    """What the monitor pod recorded for this run, when it breached: the window, the version,
    each breach with its figures, and whether the breach starts training (``retrain``, and no
    breach started training less than ``cooldown`` ago: a storm of breaches starts one run).
    AirflowSkipException when there was no breach."""
    from airflow.sdk.exceptions import AirflowSkipException

    from helmsman_steps import registry

    models.configure()
    run = registry.find_run(contract.MONITORING_EXPERIMENT, monitor_run_key)
    if run is None:
        raise LookupError(f"no monitor run {monitor_run_key!r}; did the monitor task run?")
    tags = run.data.tags
    window = tags.get(contract.MONITOR_WINDOW_TAG, "")
    if tags.get(contract.MONITOR_VERDICT_TAG) != "breach":
        raise AirflowSkipException(f"{model_name}: no breach in {window}")
    start, _, end = window.partition("..")
    breaches = json.loads(tags.get(contract.MONITOR_BREACHES_TAG) or "[]")
    # The last breach that started training: looked up only when this one could start some.
    last = _last_retrain(model_name, exclude=run.info.run_id) if retrain else None
    if not retrain:
        action = "No training: monitoring.retrain is off"
    elif last is not None and dt.datetime.now(dt.UTC) - last < cooldown:
        action = (f"No training: a breach started training at {last:%Y-%m-%d %H:%M} UTC, "
                  f"within the {cooldown} cool-down")  # fmt: skip
    else:
        action = f"train_{model_name} starts"
    said = "; ".join(f"{b['what']} {b['measure']} {b['value']:.3g}" for b in breaches)
    log.warning("%s: breach in %s (%s). %s", model_name, window, said, action)
    return {
        "model": model_name,
        "version": tags.get(contract.MODEL_VERSION_TAG),
        "window_start": start,
        "window_end": end,
        "breaches": breaches,
        "mlflow_run_id": run.info.run_id,
        "retrain": action.startswith("train_"),
        "action": action,
    }


def event_kind(breaches: list[dict[str, Any]]) -> str:
    """The asset a monitor run's breaches update: ``drift`` when any input drifted (a drop in
    performance with it is the same cause), ``performance`` when only the live metric fell. One
    event per monitor run, so one breach starts at most one training run."""
    kinds = {b["kind"] for b in breaches}
    return "drift" if "drift" in kinds or not kinds else "performance"


def request_training(found: dict[str, Any], kind: str = "drift") -> dict[str, Any]:
    """The extra of the ``kind`` asset's event for a breach that starts training (``alarm``'s
    answer); AirflowSkipException, and no event, for one that does not or that the other kind's
    event carries. The monitor run is tagged, which is what the next breach's cool-down reads."""
    from airflow.sdk.exceptions import AirflowSkipException

    from helmsman_steps import registry

    if not found["retrain"]:
        raise AirflowSkipException(found["action"])
    carrier = event_kind(found["breaches"])
    if kind != carrier:
        raise AirflowSkipException(f"the {carrier} asset's event carries this breach")
    models.configure()
    registry.client().set_tag(found["mlflow_run_id"], contract.MONITOR_RETRAIN_TAG, "requested")
    return {k: v for k, v in found.items() if k not in ("retrain", "action")}


def _last_retrain(model_name: str, exclude: str) -> dt.datetime | None:
    """When a breach of ``model_name`` last started training (another monitor run than
    ``exclude``: a retry of this alarm is not its own cool-down)."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(contract.MONITORING_EXPERIMENT)
    if experiment is None:
        return None
    runs = mlflow.search_runs(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"tags.`{contract.MONITOR_RETRAIN_TAG}` = 'requested' and "
        f"tags.`{contract.MODEL_NAME_TAG}` = '{model_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=2,
        output_format="list",
    )
    for found in runs:
        if found.info.run_id != exclude:
            return dt.datetime.fromtimestamp(found.info.start_time / 1000, dt.UTC)
    return None
