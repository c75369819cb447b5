"""One-shot setup of the compose stack's localcluster: what a platform team applies once on a
real cluster -- the ml namespace, its RBAC (deploy/), the MLflow Secret and the settings.
Run by the `cluster-init` service of docker-compose.yml."""

from __future__ import annotations

import os
import time

from kubernetes import client, config, utils


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
    print("cluster-init: namespace ml, RBAC, Secret and settings are in place")


if __name__ == "__main__":
    main()
