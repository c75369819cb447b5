"""The pod factory's pods, tested as values: the built V1Pod, validated against the official
Kubernetes schema and Pod Security "restricted", with only the API server left out."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client import ApiClient

from helmsman import pods
from tests.k8s_policy import restricted_violations, schema_errors

TORCHRUN = ["python", "-m", "helmsman_steps.torchrun"]


def built(**kwargs: Any) -> dict[str, Any]:
    operator = pods.pod_task(
        "train_model", kwargs.pop("stage", "train"), ["--epochs", "3"], **kwargs
    )
    pod: dict[str, Any] = ApiClient().sanitize_for_serialization(operator.build_pod_request_obj())
    return pod


@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_pods_pass_the_schema_and_pss_restricted(gpus: int) -> None:
    pod = built(gpus=gpus)
    assert schema_errors(pod) is None
    assert restricted_violations(pod["spec"]) == []


def test_command_image_namespace_and_identity() -> None:
    pod = built()
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["helmsman-step"]
    assert container["args"] == ["train", "--epochs", "3"]
    assert container["image"] == f"{pods.REGISTRY}/helmsman-train:{pods.TAG}"
    assert ":latest" not in container["image"]
    assert pod["metadata"]["namespace"] == "ml"
    assert pod["metadata"]["name"].startswith("helmsman-train-model")
    assert pod["spec"]["serviceAccountName"] == "helmsman-pipeline"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "train"


def test_gpu_pods_ask_for_gpus_tolerate_and_select_gpu_nodes() -> None:
    pod = built(gpus=2)
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"][
        "tolerations"
    ]
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    operator = pods.pod_task("train_model", "train", [], gpus=2)
    assert (operator.pool, operator.pool_slots) == ("gpu", 2)


@pytest.mark.parametrize(("gpus", "command"), [
    (0, ["helmsman-step"]),
    (1, ["helmsman-step"]),
    (2, [*TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "helmsman_steps", "--"]),
    (4, [*TORCHRUN, "--standalone", "--nproc-per-node=4", "-m", "helmsman_steps", "--"]),
])  # fmt: skip
def test_a_pod_with_several_gpus_runs_one_training_process_per_gpu(
    gpus: int, command: list[str]
) -> None:
    container = built(gpus=gpus)["spec"]["containers"][0]
    assert (container["command"], container["args"]) == (command, ["train", "--epochs", "3"])


def test_cpu_pods_neither_ask_for_nor_tolerate_gpus() -> None:
    pod = built(stage="etl")
    assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"].get("limits", {})
    assert not pod["spec"].get("tolerations")
    assert pods.pod_task("etl", "etl", []).pool != "gpu"


def test_secrets_come_from_kubernetes_secrets_not_values() -> None:
    container = built()["spec"]["containers"][0]
    refs = container["envFrom"]
    assert {"secretRef": {"name": "helmsman-mlflow"}} in refs
    # Inline values are lineage only: MLflow and object-store credentials arrive via envFrom.
    names = {e["name"] for e in container["env"]}
    assert names == {
        "HELMSMAN_DAG_ID",
        "HELMSMAN_RUN_ID",
        "HELMSMAN_RUN_KEY",
        "HELMSMAN_IMAGE",
        "HELMSMAN_CODE_VERSION",
        "TMPDIR",
    }


def test_lifecycle_defaults() -> None:
    operator = pods.pod_task("etl", "etl", [])
    assert operator.durable is True
    assert operator.on_finish_action.value == "delete_succeeded_pod"
    assert operator.do_xcom_push is False
    assert operator.deferrable is False  # the platform's one switch, off by default (ADR 0005)
    deferred = pods.Platform(deferrable=True)
    assert pods.pod_task("etl", "etl", [], platform=deferred).deferrable is True
    assert pods.pod_task("etl", "etl", [], platform=deferred, deferrable=False).deferrable is False


def test_unknown_stage_and_negative_gpus_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown stage 'deploy'"):
        pods.pod_task("x", "deploy", [])
    with pytest.raises(ValueError, match="gpus must be 0 or more"):
        pods.pod_task("x", "train", [], gpus=-1)


def test_the_policy_check_catches_what_restricted_forbids() -> None:
    bad = {
        "hostNetwork": True,
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
        "containers": [
            {
                "name": "c",
                "image": "x",
                "securityContext": {
                    "privileged": True,
                    "runAsUser": 0,
                    "capabilities": {"add": ["SYS_ADMIN"]},
                },
                "ports": [{"containerPort": 80, "hostPort": 80}],
            }
        ],
    }
    problems = restricted_violations(bad)
    for expected in (
        "hostNetwork must not be true",
        "volume host uses ['hostPath']",
        "container c: privileged",
        "container c: allowPrivilegeEscalation must be false",
        "container c: runAsNonRoot must be true",
        "container c: runAsUser must not be 0",
        "container c: seccompProfile must be RuntimeDefault or Localhost",
        "container c: capabilities must drop ALL",
        "container c: may add only NET_BIND_SERVICE",
        "container c: hostPort",
    ):
        assert expected in problems, problems


def test_the_schema_check_catches_a_misspelled_field() -> None:
    pod = built()
    pod["spec"]["containers"][0]["imagee"] = "x"
    assert "imagee" in (schema_errors(pod) or "")


def context(**params: Any) -> Any:
    """What the templates of a pod task read from Airflow's task context."""
    return {"params": params, "dag": SimpleNamespace(dag_id="train_churn"), "run_id": "manual_1"}


def test_a_templated_gpu_count_follows_the_rendered_param() -> None:
    operator = pods.pod_task("train_model", "train", [], gpus="{{ params.gpus }}", gpu_slots=2)
    assert (operator.pool, operator.pool_slots) == ("gpu", 2)
    for count, expect_gpu in ((0, False), (3, True)):
        operator.gpus = "{{ params.gpus }}"
        operator.render_template_fields(context(gpus=count))
        pod = ApiClient().sanitize_for_serialization(operator.build_pod_request_obj())
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert ("nvidia.com/gpu" in limits) is expect_gpu
        assert bool(pod["spec"].get("nodeSelector")) is expect_gpu
        if expect_gpu:
            assert limits["nvidia.com/gpu"] == "3"
        assert schema_errors(pod) is None


def test_a_gpu_count_that_is_not_a_number_is_refused_with_the_value() -> None:
    operator = pods.pod_task("train_model", "train", [], gpus="{{ params.gpus }}")
    operator.render_template_fields(context(gpus="two"))
    with pytest.raises(ValueError, match="'two'"):
        operator.build_pod_request_obj()
