"""Runs keyed by pipeline run, against a real MLflow server."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.tracking._tracking_service.client import TrackingServiceClient

from helmsman_steps import registry


def test_a_run_whose_experiment_another_process_creates_meanwhile_lands_in_that_experiment(
    mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two backfill runs train at once on a new server: both find no experiment, one creates
    it, the other's create is refused as a duplicate. The loser's run must still land in the
    named experiment, where evaluate looks it up by its run key (it once landed in Default)."""
    name = f"race-{uuid.uuid4().hex[:8]}"
    other = MlflowClient(tracking_uri=mlflow_server)  # the other trainer
    real = TrackingServiceClient.get_experiment_by_name
    raced: list[str] = []

    def lookup(self: TrackingServiceClient, experiment_name: str) -> Any:
        if experiment_name == name and not raced:
            raced.append(other.create_experiment(name))  # it wins, just after this lookup
            return None  # what this lookup saw
        return real(self, experiment_name)

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", lookup)
    with registry.get_or_start_run(name, "race/train", "train", {}) as run:
        experiment_id = run.info.experiment_id
    monkeypatch.undo()
    # MLflow keeps the active experiment in a global and the environment: give the tests after
    # this one back what they had, not this throwaway experiment.
    monkeypatch.setattr("mlflow.tracking.fluent._active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)

    assert raced, "the lookup the race needs was never made"
    assert experiment_id == raced[0]
    found = registry.find_run(name, "race/train")
    assert found is not None
    assert found.info.run_id == run.info.run_id
