"""What a run's ``conf`` may hold, checked before a run exists and again by its first task.

Airflow validates each declared Param against its JSON Schema when a run is triggered, but it
takes any other key silently (a typo such as ``epoch`` trains with the default and says
nothing), and a schema cannot say "not in the future". So:

- ``ConfCheckMiddleware`` (installed by the plugin into Airflow's API server) answers a trigger
  of a Helmsman DAG whose conf fails ``problems`` with **400** and the list of what to fix,
  before any run is created. It judges only callers Airflow would let trigger the DAG; anyone
  else gets Airflow's own 401/403.
- The training DAG's ``plan`` task runs the same check (``problems``) for runs started another way
  (``airflow dags trigger``, ``dag.test``) and fails at once, without retries.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Collection, Mapping
from typing import Any

# Params whose value is a date a run reads data up to: a day that has not ended has no data.
DATE_PARAMS = ("data_end",)
TAG = "helmsman"  # the tag every Helmsman DAG carries; the middleware judges only those
_TRIGGER_PATH = re.compile(r"^/api/v2/dags/(?P<dag_id>[^/]+)/dagRuns/?$")
log = logging.getLogger(__name__)


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


def today_utc() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


class ConfCheckMiddleware:
    """ASGI middleware: a trigger (``POST /api/v2/dags/{dag_id}/dagRuns``) of a Helmsman DAG
    whose conf fails ``problems`` gets 400 before Airflow creates a run.

    The body is read here and handed on unchanged. Callers Airflow would refuse (no or a bad
    token, no permission to trigger this DAG, another team's DAG) are passed through untouched,
    so Airflow answers them itself and nothing about the DAG's Params reaches them. If the
    check itself fails (the database, the auth manager), the request goes on unchecked: the
    run's ``plan`` task applies the same rules."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        match = _trigger_of(scope)
        if match is None:
            await self.app(scope, receive, send)
            return
        body, messages = await _read_body(receive)
        replay = iter(messages)

        async def replayed() -> Any:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        try:
            found = await self._problems(scope, match, body)
        except Exception:  # never turn a trigger Airflow would take into a 500
            log.warning("could not check the conf of a trigger of %s", match, exc_info=True)
            found = []
        if not found:
            await self.app(scope, replayed, send)
            return
        from starlette.responses import JSONResponse

        detail = f"conf of {match}: " + "; ".join(found)
        await JSONResponse({"detail": detail}, status_code=400)(scope, replayed, send)

    async def _problems(self, scope: dict[str, Any], dag_id: str, body: bytes) -> list[str]:
        try:
            conf = json.loads(body or b"{}").get("conf") or {}
        except (ValueError, AttributeError):
            return []  # not a JSON object: Airflow's own validation answers it
        if not isinstance(conf, dict) or not conf:
            return []
        from anyio import to_thread

        declared = await to_thread.run_sync(_declared_params, dag_id)
        if declared is None or not await _may_trigger(scope, dag_id):
            return []
        return problems(conf, declared, today_utc())


def _trigger_of(scope: dict[str, Any]) -> str | None:
    """The DAG id of a trigger request (under any ``root_path`` Airflow is served at)."""
    if scope["type"] != "http" or scope.get("method") != "POST":
        return None
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    match = _TRIGGER_PATH.match(path)
    return None if match is None else match["dag_id"]


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
    """Whether Airflow would let this caller trigger ``dag_id``: its token resolved and its
    auth manager asked, with the DAG's team, as the trigger route itself does."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )
    from airflow.api_fastapi.core_api.security import resolve_user_from_token
    from airflow.models.dag import DagModel  # noqa: TID251 - API-server side: its ORM, no SDK twin
    from anyio import to_thread
    from fastapi import HTTPException
    from starlette.requests import Request

    request = Request(scope)
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    token = (
        credentials if scheme.lower() == "bearer" else request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    )
    try:
        user = await resolve_user_from_token(token)
    except HTTPException:
        return False
    team = await to_thread.run_sync(DagModel.get_team_name, dag_id)
    details = DagDetails(id=dag_id, team_name=team)

    def authorized() -> bool:
        return bool(
            get_auth_manager().is_authorized_dag(
                method="POST", access_entity=DagAccessEntity.RUN, details=details, user=user
            )
        )

    return await to_thread.run_sync(authorized)


def _declared_params(dag_id: str) -> list[str] | None:
    """The Params of a Helmsman DAG's latest version; None for any other DAG (or none). The
    tag is looked up first, so other DAGs' triggers cost one small query."""
    from airflow.models.dag import DagTag  # noqa: TID251 - API-server side: its ORM, no SDK twin
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tagged = session.scalar(
            select(DagTag.dag_id).where(DagTag.dag_id == dag_id, DagTag.name == TAG).limit(1)
        )
    if tagged is None:
        return None
    dag = SerializedDagModel.get_dag(dag_id)
    return None if dag is None else list(dag.params)
