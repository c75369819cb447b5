"""One-shot setup of the compose stack's localcluster: what a platform team applies once on a
real cluster -- the ml namespace, its RBAC (deploy/), the MLflow Secret and the settings --
and Airflow's kubeconfig: a token of the chart's ``airflow/airflow-worker`` service account,
which deploy/rbac.yaml's Role binds, readable by Airflow's user only.
Run by the `cluster-init` service of docker-compose.yml."""

from __future__ import annotations

import os
import time
from typing import Any

import yaml
from kubernetes import client, config, utils

AIRFLOW_UID = 50000  # the Airflow image's user
TOKEN_SECONDS = 30 * 24 * 3600  # dies with the cluster process anyway (its signing key)


def _create(call: Any, *args: Any) -> None:
    """Create, or leave what exists (cluster-init runs again on every `compose up`)."""
    try:
        call(*args)
    except client.ApiException as exc:
        if exc.status != 409:
            raise


def airflow_identity(core: client.CoreV1Api) -> None:
    """The chart's namespace and service accounts, then Airflow's kubeconfig."""
    _create(core.create_namespace, client.V1Namespace(metadata=client.V1ObjectMeta(name="airflow")))
    for name in ("airflow-worker", "airflow-triggerer"):
        account = client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        _create(core.create_namespaced_service_account, "airflow", account)
    request = {"spec": {"expirationSeconds": TOKEN_SECONDS}}
    token = core.create_namespaced_service_account_token("airflow-worker", "airflow", request)
    with open("/kube/config") as handle:
        kubeconfig = yaml.safe_load(handle)
    kubeconfig["users"] = [{"name": "airflow-worker", "user": {"token": token.status.token}}]
    for context in kubeconfig["contexts"]:
        context["context"]["user"] = "airflow-worker"
    fd = os.open("/kube/airflow.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(kubeconfig, handle, sort_keys=False)
    os.chown("/kube/airflow.tmp", AIRFLOW_UID, 0)
    os.replace("/kube/airflow.tmp", "/kube/airflow")


def main() -> None:
    for _ in range(60):
        if os.path.exists("/kube/config"):
            break
        time.sleep(1)
    api = config.new_client_from_config(config_file="/kube/config")
    core = client.CoreV1Api(api)
    for manifest in ("namespace.yaml", "rbac.yaml"):
        try:
            utils.create_from_yaml(api, f"/deploy/{manifest}")
        except utils.FailToCreateError as exc:
            if any(e.status != 409 for e in exc.api_exceptions):
                raise
    objects = [
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="helmsman-mlflow"),
            string_data={"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
        ),
        # The serving pods' Secret (an MLflow without auth here: the address alone).
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="helmsman-mlflow-serving"),
            string_data={"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
        ),
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="helmsman-settings"),
            data={"HELMSMAN_DATASET_URI": "/state/datasets",
                  "HELMSMAN_SOURCE_URI_CHURN": "synthetic://churn?rows_per_day=50000&seed=7"},
        ),
    ]  # fmt: skip
    for obj in objects:
        create = (
            core.create_namespaced_secret
            if isinstance(obj, client.V1Secret)
            else core.create_namespaced_config_map
        )
        try:
            create("ml", obj)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    airflow_identity(core)
    print(
        "cluster-init: namespace ml, RBAC, Secret, settings and Airflow's kubeconfig are in place"
    )


if __name__ == "__main__":
    main()
