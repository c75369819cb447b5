"""Alerts: a failed training task, a rejected rollout and a monitoring breach, as Airflow
notifiers (the Apprise provider) on one Airflow connection, ``helmsman_alerts``.

The connection's ``config`` names where alerts go, one Apprise URL or a list of them: a webhook
(``json://hooks.example.com/helmsman``, a JSON POST), Slack (``slack://TOKEN_A/TOKEN_B/
TOKEN_C/#ml-alerts``), e-mail (``mailtos://user:password@smtp.example.com``). Without the
connection, alerts are off and each one says so in the log once; a notifier that cannot reach
its service fails the callback, never the task.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.providers.apprise.notifications.apprise import AppriseNotifier
from apprise import NotifyType

log = logging.getLogger(__name__)

CONN_ID = "helmsman_alerts"


class Alert(AppriseNotifier):
    """An AppriseNotifier that is quiet when the alerts connection is not defined."""

    def notify(self, context: Any) -> None:
        from airflow.sdk import BaseHook

        try:
            BaseHook.get_connection(self.apprise_conn_id)
        except Exception:  # the connection is not defined: alerts are off (Airflow's error varies)
            log.info("alerts are off (no %r connection): %s", self.apprise_conn_id, self.title)
            return
        super().notify(context)  # type: ignore[no-untyped-call]


def task_failed(model_name: str) -> Alert:
    """A training DAG's task failed for good (its retries spent); the rollout failing means a
    check rejected the new version, which is out of traffic."""
    return Alert(
        title=f"Helmsman {model_name}: {{{{ ti.task_id }}}} failed in {{{{ ti.dag_id }}}}",
        body=(
            "{% if ti.task_id == 'rollout' %}The new version failed a rollout check and was "
            "taken out of traffic; the champion is serving. {% endif %}"
            "Run {{ run_id }}, task {{ ti.task_id }}, try {{ ti.try_number }}. "
            "Log: {{ ti.log_url }}"
        ),
        notify_type=NotifyType.FAILURE,
        apprise_conn_id=CONN_ID,
    )


def breach(model_name: str) -> Alert:
    """A monitoring window breached (the alarm task's result names each breach)."""
    return Alert(
        title=f"Helmsman {model_name}: monitoring breach",
        body=(
            "{% set a = ti.xcom_pull(task_ids='alarm') %}"
            "Version {{ a.version }}, window {{ a.window_start }}..{{ a.window_end }}: "
            "{% for b in a.breaches %}{{ b.what }} {{ b.measure }} {{ '%.3g' % b.value }} "
            "(threshold {{ '%.3g' % b.threshold }}){% if not loop.last %}; {% endif %}"
            "{% endfor %}. {{ a.action }}. MLflow run {{ a.mlflow_run_id }}."
        ),
        notify_type=NotifyType.WARNING,
        apprise_conn_id=CONN_ID,
    )
