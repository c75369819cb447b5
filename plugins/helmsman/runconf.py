"""What a run's ``conf`` may hold, checked before a run exists and again by its first task.

Airflow validates each declared Param against its JSON Schema when a run is triggered, but it
takes any other key silently (a typo such as ``epoch`` trains with the default and says
nothing), and a schema cannot say "not in the future". So:

- ``ConfCheckMiddleware`` (installed by the plugin into Airflow's API server) answers a trigger
  of a Helmsman DAG whose conf fails ``problems`` with **400** and the list of what to fix,
  before any run is created. It judges only callers Airflow would let trigger the DAG; anyone
  else gets Airflow's own 401/403.
- The training DAG's ``plan`` task runs the same check (``check``) for runs started another way
  (``airflow dags trigger``, ``dag.test``) and fails at once, without retries.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Collection, Mapping
from typing import Any

# Params whose value is a date a run reads data up to: a day that has not ended has no data.
DATE_PARAMS = ("data_end",)
TAG = "helmsman"  # the tag every Helmsman DAG carries; the middleware judges only those
_TRIGGER_PATH = re.compile(r"^/api/v2/dags/(?P<dag_id>[^/]+)/dagRuns/?$")


class ConfError(ValueError):
    """A run's conf that can never work; the message lists every problem."""


def problems(conf: Mapping[str, Any], declared: Collection[str], today: dt.date) -> list[str]:
    """Everything wrong with ``conf`` for a DAG with Params ``declared``; empty when fine."""
    found = []
    unknown = sorted(set(conf) - set(declared))
    if unknown:
        found.append(
            f"unknown conf keys {unknown}: this DAG takes {sorted(declared)} (check the spelling)"
        )
    for name in DATE_PARAMS:
        value = conf.get(name)
        if name not in declared or not isinstance(value, str) or not value:
            continue  # absent, or a type the Param's own schema rejects
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            found.append(f"{name}: {value!r} is not a date (YYYY-MM-DD)")
            continue
        if day > today:
            found.append(
                f"{name}: {value} is in the future (today is {today} UTC): no data exists after "
                f"today; give {today} or an earlier day"
            )
    return found


def check(conf: Mapping[str, Any] | None, declared: Collection[str], today: dt.date) -> None:
    found = problems(conf or {}, declared, today)
    if found:
        raise ConfError("; ".join(found))


def today_utc() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


class ConfCheckMiddleware:
    """ASGI middleware: a trigger (``POST /api/v2/dags/{dag_id}/dagRuns``) of a Helmsman DAG
    whose conf fails ``problems`` gets 400 before Airflow creates a run.

    The body is read here and handed on unchanged. Callers Airflow would refuse (no or a bad
    token, no permission to trigger this DAG) are passed through untouched, so Airflow answers
    them itself and nothing about the DAG's Params reaches them."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        match = _TRIGGER_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        body, messages = await _read_body(receive)
        replay = iter(messages)

        async def replayed() -> Any:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        found = await self._problems(scope, match["dag_id"], body)
        if not found:
            await self.app(scope, replayed, send)
            return
        from starlette.responses import JSONResponse

        detail = f"conf of {match['dag_id']}: " + "; ".join(found)
        await JSONResponse({"detail": detail}, status_code=400)(scope, replayed, send)

    async def _problems(self, scope: dict[str, Any], dag_id: str, body: bytes) -> list[str]:
        try:
            conf = json.loads(body or b"{}").get("conf") or {}
        except (ValueError, AttributeError):
            return []  # not a JSON object: Airflow's own validation answers it
        if not isinstance(conf, dict) or not conf:
            return []
        if not await _may_trigger(scope, dag_id):
            return []
        from anyio import to_thread

        declared = await to_thread.run_sync(_declared_params, dag_id)
        if declared is None:
            return []
        return problems(conf, declared, today_utc())


async def _read_body(receive: Any) -> tuple[bytes, list[dict[str, Any]]]:
    messages, chunks = [], []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks), messages


async def _may_trigger(scope: dict[str, Any], dag_id: str) -> bool:
    """Whether Airflow would let this caller trigger ``dag_id`` (its own auth manager says)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )
    from airflow.api_fastapi.core_api.security import resolve_user_from_token
    from fastapi import HTTPException
    from starlette.requests import Request

    request = Request(scope)
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else None
    if token is None:
        from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

        token = request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    try:
        user = await resolve_user_from_token(token)
    except HTTPException:
        return False
    return bool(
        get_auth_manager().is_authorized_dag(
            method="POST",
            access_entity=DagAccessEntity.RUN,
            details=DagDetails(id=dag_id),
            user=user,
        )
    )


def _declared_params(dag_id: str) -> list[str] | None:
    """The Params of a Helmsman DAG's latest version; None for any other DAG (or none)."""
    from airflow.models.serialized_dag import SerializedDagModel

    dag = SerializedDagModel.get_dag(dag_id)
    if dag is None or TAG not in (dag.tags or ()):
        return None
    return list(dag.params)
