"""The Python tasks of the training DAG, as plain functions of what Airflow hands them.

The DAG file wraps each in ``@task``; keeping the logic here keeps the DAG file thin and the
functions testable without a scheduler.
"""

from __future__ import annotations

import datetime as dt
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
