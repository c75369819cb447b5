"""Alerts reach a real webhook (an HTTP server in the test) through the Apprise notifier and
the ``helmsman_alerts`` Airflow connection; without the connection they stay quiet."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from helmsman import alerts
from tools.procs import free_port

FOUND = {
    "model": "churn", "version": "7", "window_start": "2026-03-09T13:00Z",
    "window_end": "2026-03-09T14:00Z", "mlflow_run_id": "abc123", "retrain": True,
    "action": "train_churn starts",
    "breaches": [
        {"kind": "drift", "what": "monthly_charges", "measure": "psi", "value": 0.3841,
         "threshold": 0.2},
        {"kind": "drift", "what": "plan", "measure": "unseen share", "value": 0.0712,
         "threshold": 0.05},
    ],
}  # fmt: skip


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any]]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append((self.path, json.loads(self.rfile.read(length))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[int, list[tuple[str, dict[str, Any]]]]]:
    received: list[tuple[str, dict[str, Any]]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], received
    server.shutdown()
    server.server_close()


def _ti(task_id: str, found: dict[str, Any] | None = None) -> SimpleNamespace:
    return SimpleNamespace(task_id=task_id, dag_id=f"{'monitor' if found else 'train'}_churn",
                           try_number=3, log_url="http://airflow.example/log",
                           xcom_pull=lambda task_ids: found)  # fmt: skip


def _connect(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    conn = {"conn_type": "apprise",
            "extra": {"config": {"path": f"json://127.0.0.1:{port}/helmsman"}}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_HELMSMAN_ALERTS", json.dumps(conn))


def test_a_breach_alert_names_each_breach_with_its_figures(
    webhook: tuple[int, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, received = webhook
    _connect(monkeypatch, port)
    alerts.breach("churn")({"ti": _ti("alarm", FOUND), "run_id": "scheduled__2026-03-09T14"})
    ((path, sent),) = received
    assert path == "/helmsman"
    assert sent["title"] == "Helmsman churn: monitoring breach"
    assert sent["type"] == "warning"
    assert sent["message"] == (
        "Version 7, window 2026-03-09T13:00Z..2026-03-09T14:00Z: monthly_charges psi 0.384 "
        "(threshold 0.2); plan unseen share 0.0712 (threshold 0.05). train_churn starts. "
        "MLflow run abc123."
    )


def test_a_failed_rollout_says_the_version_is_out_of_traffic(
    webhook: tuple[int, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, received = webhook
    _connect(monkeypatch, port)
    for task_id in ("rollout", "train"):
        alerts.task_failed("churn")({"ti": _ti(task_id), "run_id": "manual__1"})
    (_, rollout), (_, train) = received
    assert rollout["title"] == "Helmsman churn: rollout failed in train_churn"
    assert rollout["type"] == "failure"
    assert rollout["message"].startswith("The new version failed a rollout check and was taken")
    assert "Log: http://airflow.example/log" in rollout["message"]
    assert train["message"] == ("Run manual__1, task train, try 3. Log: http://airflow.example/log")


def test_without_the_connection_alerts_are_off_and_say_so(
    webhook: tuple[int, list[Any]], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    _, received = webhook
    monkeypatch.delenv("AIRFLOW_CONN_HELMSMAN_ALERTS", raising=False)
    with caplog.at_level(logging.INFO, logger="helmsman.alerts"):
        alerts.breach("churn")({"ti": _ti("alarm", FOUND), "run_id": "r"})
    assert received == []
    assert "alerts are off (no 'helmsman_alerts' connection)" in caplog.text
