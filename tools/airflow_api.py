"""A small client of Airflow 3's REST API: what the demo and the end-to-end tests do with it.

Triggering with Params, unpausing, following a run task by task, backfills. Uses only the
public ``/api/v2`` endpoints and a token from ``/auth/token`` (the simple auth manager's
login), exactly what a user's script would.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FINISHED = ("success", "failed")


class ApiError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


@dataclass
class AirflowApi:
    base_url: str
    username: str
    password: str
    _token: str = ""

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            if not self._token:
                self._token = self._request(
                    "POST",
                    "/auth/token",
                    {"username": self.username, "password": self.password},
                    auth=False,
                )["access_token"]
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(  # noqa: S310 - the configured api-server
            self.base_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = str(json.loads(detail).get("detail", detail))
            raise ApiError(exc.code, detail) from None
        return json.loads(raw) if raw else None

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Until the DAG processor has parsed ``dag_id`` (raises with the import errors)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._request("GET", f"/api/v2/dags/{dag_id}")
                return
            except ApiError as exc:
                if exc.status != 404:
                    raise
            time.sleep(1)
        errors = self._request("GET", "/api/v2/importErrors")["import_errors"]
        raise TimeoutError(f"DAG {dag_id} did not appear; import errors: {errors}")

    def trigger(self, dag_id: str, conf: dict[str, Any], note: str = "") -> str:
        body: dict[str, Any] = {"logical_date": None, "conf": conf}
        if note:
            body["note"] = note
        run: dict[str, Any] = self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)
        return str(run["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        quoted = urllib.parse.quote(run_id, safe="")
        result: dict[str, Any] = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")
        return result

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        data = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100&order_by=run_after")
        runs: list[dict[str, Any]] = data["dag_runs"]
        return runs

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        quoted = urllib.parse.quote(run_id, safe="")
        data = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances")
        return {ti["task_id"]: ti for ti in data["task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        quoted = urllib.parse.quote(run_id, safe="")
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}"
            "/xcomEntries/return_value?deserialize=true&stringify=false"
        )
        return self._request("GET", path)["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        quoted = urllib.parse.quote(run_id, safe="")
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/logs/{try_number}"
        data = self._request("GET", path + "?full_content=true")
        content = data.get("content", "")
        if isinstance(content, list):
            return "\n".join(
                str(c.get("event", c)) if isinstance(c, dict) else str(c) for c in content
            )
        return str(content)

    def backfill(
        self,
        dag_id: str,
        start: str,
        end: str,
        max_active_runs: int = 1,
        conf: dict[str, Any] | None = None,
    ) -> int:
        """Create a backfill; up to ``max_active_runs`` of its runs go at once."""
        body = {
            "dag_id": dag_id,
            "from_date": start,
            "to_date": end,
            "reprocess_behavior": "completed",
            "max_active_runs": max_active_runs,
            "run_backwards": False,
            "dag_run_conf": conf or {},
        }
        # On SQLite the api-server refuses (503) while the scheduler holds the database; it
        # says to try again, so do, for up to a minute.
        for attempt in range(30):
            try:
                backfill: dict[str, Any] = self._request("POST", "/api/v2/backfills", body)
                return int(backfill["id"])
            except ApiError as exc:
                if exc.status != 503 or attempt == 29:
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")

    def wait_for_backfill(self, backfill_id: int, timeout: float = 120) -> None:
        """Until the scheduler marks the backfill complete (it checks now and then after its
        last run ends); only then may the DAG get another backfill."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._request("GET", f"/api/v2/backfills/{backfill_id}").get("completed_at"):
                return
            time.sleep(1)
        raise TimeoutError(f"backfill {backfill_id} was not marked complete in {timeout:.0f} s")

    def wait(
        self,
        dag_id: str,
        run_id: str,
        timeout: float = 1800,
        on_change: Callable[[dict[str, dict[str, Any]]], None] | None = None,
    ) -> dict[str, Any]:
        """Follow the run until it finishes; call ``on_change`` when any task's state moves."""
        deadline = time.monotonic() + timeout
        seen: dict[str, str | None] = {}
        while time.monotonic() < deadline:
            tis = self.task_instances(dag_id, run_id)
            states = {t: ti["state"] for t, ti in tis.items()}
            if states != seen and on_change is not None:
                on_change(tis)
            seen = states
            run = self.run(dag_id, run_id)
            if run["state"] in FINISHED:
                return run
            time.sleep(2)
        raise TimeoutError(f"{dag_id} run {run_id} did not finish in {timeout:.0f}s: {seen}")
