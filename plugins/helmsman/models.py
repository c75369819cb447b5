"""The model registry seen from Airflow: what a run trained, what evaluation decided, which
version is champion, and moving ``@champion`` once a rollout passed its health gate.

The pods write to MLflow (``helmsman_steps``); the Airflow tasks read what they wrote and make
the two decisions that belong to the orchestrator: the fence (may this run deploy?) and the
promotion (the alias moves only after the gate). Both are written back as model version tags
so that MLflow alone tells the whole story of a version. mlflow is imported inside functions:
DAG files import this module at parse time.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

from helmsman_steps import contract
from helmsman_steps.contract import CHAMPION, TRAINING_EXPERIMENT
from helmsman_steps.contract import PREVIOUS_CHAMPION as PREVIOUS

MLFLOW_CONN_ID = "mlflow_default"


def http_url(conn_id: str) -> str:
    """``scheme://host:port`` of an HTTP-like Airflow connection (no credentials)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    scheme = next((s for s in (conn.schema, conn.conn_type) if s in ("http", "https")), "http")
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{conn.host}{port}"


def configure(conn_id: str = MLFLOW_CONN_ID) -> None:
    """Point mlflow at the tracking server of Airflow connection ``conn_id``.

    ``MLFLOW_TRACKING_URI`` in the environment wins; otherwise the connection gives the URL
    and, if it has them, the credentials (which mlflow reads from its own environment
    variables, so they never reach a log line or XCom).
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    os.environ["MLFLOW_TRACKING_URI"] = http_url(conn_id)
    if conn.login:
        os.environ["MLFLOW_TRACKING_USERNAME"] = conn.login
        os.environ["MLFLOW_TRACKING_PASSWORD"] = conn.password or ""


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


@dataclass(frozen=True)
class Version:
    """One registered model version and the tags the pipeline reads from it."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str]

    @property
    def interval_end(self) -> dt.datetime | None:
        return _parse_day(self.tags.get(contract.INTERVAL_END_TAG, ""))

    @property
    def decision(self) -> str:
        return self.tags.get(contract.DECISION_TAG, "")


def _parse_day(value: str) -> dt.datetime | None:
    if not value:
        return None
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def get(model_name: str, version: str) -> Version:
    """One version; a version (or model) the registry does not have fails the task for good
    (AirflowFailException: no retry makes it appear), naming both."""
    from airflow.sdk.exceptions import AirflowFailException
    from mlflow.exceptions import MlflowException

    try:
        mv = _client().get_model_version(model_name, version)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise  # the registry failing: worth a retry
        raise AirflowFailException(
            f"model {model_name!r} has no version {version!r} in the registry: give one that "
            "exists (the model's versions are listed in MLflow)"
        ) from None
    return Version(mv.name, str(mv.version), mv.run_id, dict(mv.tags or {}))


def by_alias(model_name: str, alias: str) -> Version | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = _client().get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower():
            return None
        raise
    return Version(mv.name, str(mv.version), mv.run_id, dict(mv.tags or {}))


def trained_by(model_name: str, run_key: str) -> Version:
    """The version registered by the training run with ``run_key`` (the DAG run's train task)."""
    from helmsman_steps import registry

    run = registry.find_run(TRAINING_EXPERIMENT, run_key)
    version = run.data.tags.get(contract.MODEL_VERSION_TAG, "") if run else ""
    if not version:
        raise LookupError(f"no model version was registered by training run {run_key!r}")
    return get(model_name, version)


def golden(version: Version) -> dict[str, Any]:
    """The golden set evaluation saved: inputs and the challenger's offline predictions."""
    import mlflow

    path = f"runs:/{version.run_id}/{contract.GOLDEN_ARTIFACT}"
    data: dict[str, Any] = mlflow.artifacts.load_dict(path)
    return data


def tag(version: Version, tags: dict[str, str]) -> None:
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, value[:5000])


def log_rollout(version: Version, name: str, report: dict[str, Any]) -> None:
    """Keep a rollout's figures (preview, every step) with the version's training run."""
    _client().log_dict(version.run_id, report, f"rollout/{name}.json")


def promote(version: Version, promoted_by: str) -> Version | None:
    """Move ``@champion`` to ``version``; the one it named before keeps ``@previous-champion``.

    Idempotent: promoting the current champion again changes nothing.
    """
    client = _client()
    before = by_alias(version.name, CHAMPION)
    if before is not None and before.version == version.version:
        return by_alias(version.name, PREVIOUS)
    if before is not None:
        client.set_registered_model_alias(version.name, PREVIOUS, before.version)
    client.set_registered_model_alias(version.name, CHAMPION, version.version)
    tag(version, {contract.PROMOTED_BY_TAG: promoted_by})
    return before
