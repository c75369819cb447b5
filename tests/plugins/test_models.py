"""The registry as the deploy tasks read it: a version that cannot be used fails the task for
good (AirflowFailException, no retries), naming the model and the version; a real MLflow
server."""

from __future__ import annotations

import pytest

from helmsman import deploy, models


@pytest.mark.usefixtures("mlflow_server")
def test_a_missing_version_or_model_fails_for_good_naming_it() -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from mlflow import MlflowClient

    MlflowClient().create_registered_model("registry-probe")
    for name, version in (("registry-probe", "7"), ("no-such-model", "1")):
        with pytest.raises(AirflowFailException) as failed:
            models.get(name, version)
        assert f"model {name!r} has no version {version!r} in the registry" in str(failed.value)


@pytest.mark.usefixtures("mlflow_server")
def test_a_rollback_to_a_version_no_pipeline_evaluated_fails_for_good() -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model("unvetted")
    run = client.create_run(experiment_id="0")  # registered by hand, never evaluated
    source = f"runs:/{run.info.run_id}/model"
    version = client.create_model_version("unvetted", source, run_id=run.info.run_id).version
    with pytest.raises(AirflowFailException, match=f"version {version} of unvetted was never"):
        deploy.choose_version("unvetted", str(version))
