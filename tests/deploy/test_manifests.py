"""What a platform team deploys, checked here although no real cluster runs here.

- helm-values/*.yaml against the official Airflow chart's values schema (vendored);
- every manifest in deploy/ and the serving stack the rollout applies, and the pods the
  factory builds, against the official Kubernetes schema and Pod Security "restricted";
- the same objects through a well-known policy scanner (checkov), with every accepted
  finding answered beside it (a ``checkov.io/skip`` annotation in the manifest, or
  ``ACCEPTED_FOR_PODS`` below for pods Airflow creates at run time);
- ``kubectl apply -f deploy/`` against localcluster, then the serving stack, which becomes
  Available.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes.client import ApiClient

from helmsman import pods
from helmsman.serving import objects
from tests.cluster_fixtures import Cluster
from tests.dev_env import REPO
from tests.k8s_policy import restricted_violations, schema_errors
from tests.mlflow_fixtures import Trained

CHART_SCHEMA = json.loads(
    (REPO / "tests" / "schemas" / "airflow-chart-values.schema.json").read_text()
)
CHECKOV = REPO / ".venv-policy" / "bin" / "checkov"
MANIFESTS = sorted((REPO / "deploy").glob("*.yaml"))
# Findings on the pods Airflow creates at run time, which carry no annotations of ours.
ACCEPTED_FOR_PODS = {
    "CKV_K8S_11": "no CPU limit on purpose: a training pod may use its node's idle CPU; the "
    "request reserves its share and the namespace quota bounds the sum",
    "CKV_K8S_43": "the release pins the image tag in one place (plugins/helmsman/pods.py)",
    "CKV_K8S_15": "IfNotPresent with immutable release tags (no registry round trip per pod)",
    "CKV_K8S_35": "MLflow reads credentials from environment variables only; they come from a "
    "Secret via envFrom, never inline",
    "CKV_K8S_8": "batch pods run to completion and serve nothing: no liveness endpoint; a hung "
    "step is ended by the task's execution timeout",
    "CKV_K8S_9": "batch pods take no traffic, so readiness has no meaning for them",
}


def load_values(*names: str) -> dict[str, Any]:
    """Merge values files the way ``helm -f a -f b`` does (maps deep, everything else replaced)."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(base)
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    values: dict[str, Any] = {}
    for name in names:
        values = merge(values, yaml.safe_load((REPO / "helm-values" / name).read_text()) or {})
    return values


@pytest.mark.parametrize(
    "files",
    [
        ("airflow.yaml",),
        ("airflow.yaml", "airflow-dev.yaml"),
        ("airflow.yaml", "airflow-prod.yaml"),
    ],
    ids=["base", "dev", "prod"],
)
def test_airflow_values_match_the_chart_schema(files: tuple[str, ...]) -> None:
    jsonschema.Draft7Validator(CHART_SCHEMA).validate(load_values(*files))


def test_a_misplaced_key_fails_the_chart_schema() -> None:
    values = load_values("airflow.yaml")
    values["workers"]["serviceAcount"] = {"name": "typo"}
    with pytest.raises(jsonschema.ValidationError, match="serviceAcount"):
        jsonschema.Draft7Validator(CHART_SCHEMA).validate(values)


def test_airflow_values_bind_the_accounts_the_role_names_and_hold_no_secret() -> None:
    values = load_values("airflow.yaml")
    role_binding = next(d for d in manifests() if d["kind"] == "RoleBinding")
    bound = {s["name"] for s in role_binding["subjects"]}
    assert {values["workers"]["serviceAccount"]["name"],
            values["triggerer"]["serviceAccount"]["name"]} == bound  # fmt: skip
    text = (REPO / "helm-values" / "airflow.yaml").read_text().lower()
    assert "password:" not in text.replace('"password": "..."', "")
    assert {s["envName"] for s in values["secret"]} == {"AIRFLOW_CONN_MLFLOW_DEFAULT"}
    pools = json.loads((REPO / "helm-values" / "airflow-pools.json").read_text())
    assert {"gpu", "gpu_backfill", "serving_rollout"} <= pools.keys()
    assert "pools import /opt/airflow/pools.json" in values["migrateDatabaseJob"]["args"][-1]


def manifests() -> list[dict[str, Any]]:
    return [d for f in MANIFESTS for d in yaml.safe_load_all(f.read_text()) if d]


def serving_objects(version: str = "3", model: str = "churn") -> list[dict[str, Any]]:
    """Every object a rollout session applies, in every shape it takes."""
    target = objects.Target("churn-serving", "ml", model, version)
    gateway = objects.GatewayRef("helmsman-gateway")
    return [
        objects.deployment(target, "blue", 2),
        objects.service(target, "churn-serving", "blue"),
        objects.service(target, objects.preview_name("churn-serving"), "green"),
        objects.service(target, "churn-serving", None),  # replica ratio: every slot
        objects.route(target, gateway, 25),
        objects.route(target, gateway, 0, mirror=True),
        objects.autoscaler(target, "green", 2),
        objects.budget(target),
    ]


def factory_pods() -> list[dict[str, Any]]:
    built = []
    for stage, gpus in (("etl", 0), ("train", 1), ("evaluate", 0)):
        op = pods.pod_task(stage, stage, ["--start", "2026-03-01"], gpus=gpus)
        pod: dict[str, Any] = ApiClient().sanitize_for_serialization(op.build_pod_request_obj())
        pod.setdefault("apiVersion", "v1")
        pod.setdefault("kind", "Pod")
        built.append(pod)
    return built


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] == "Pod":
        spec: dict[str, Any] = obj["spec"]
        return spec
    template = obj.get("spec", {}).get("template")
    return template["spec"] if template else None


def test_every_object_matches_the_kubernetes_schema_and_pss_restricted() -> None:
    objects = manifests() + serving_objects() + factory_pods()
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "ResourceQuota", "LimitRange", "Role", "RoleBinding", "ServiceAccount",
            "HorizontalPodAutoscaler", "NetworkPolicy", "Deployment", "Service",
            "PodDisruptionBudget", "Pod", "Gateway", "HTTPRoute"} <= kinds  # fmt: skip
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata'].get('name')}"
        assert schema_errors(obj) is None, name
        spec = pod_spec(obj)
        if spec is not None:
            assert restricted_violations(spec) == [], name
    namespace = next(o for o in objects if o["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def scan(folder: Path) -> dict[str, Any]:
    assert CHECKOV.exists(), "the policy scanner is missing: run `make setup`"
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(folder), "--framework", "kubernetes", "--quiet", "--compact",
         "-o", "json", "--skip-download"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    entry: dict[str, Any] = report[0] if isinstance(report, list) else report
    return {**entry["results"], "summary": entry["summary"]}


@pytest.fixture
def scanned(tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path
    for f in MANIFESTS:
        (folder / f.name).write_text(f.read_text())
    (folder / "serving.yaml").write_text(yaml.safe_dump_all(serving_objects()))
    (folder / "pods.yaml").write_text(yaml.safe_dump_all(factory_pods()))
    return scan(folder)


def test_the_policy_scanner_finds_nothing_unanswered(scanned: dict[str, Any]) -> None:
    unanswered = [
        f"{f['check_id']} {f['resource']}: {f['check_name']}"
        for f in scanned["failed_checks"]
        if not (f["resource"].startswith("Pod.") and f["check_id"] in ACCEPTED_FOR_PODS)
    ]
    assert unanswered == []
    # Every skip in a manifest carries its reason.
    for skipped in scanned.get("skipped_checks", []):
        assert len(skipped.get("suppress_comment", "")) > 20, skipped["check_id"]
    assert scanned["summary"]["passed"] > 100


def test_the_policy_scanner_catches_a_privileged_container(tmp_path: Path) -> None:
    pod = factory_pods()[0]
    pod["spec"]["containers"][0]["securityContext"]["privileged"] = True
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(pod))
    failed = {f["check_id"] for f in scan(tmp_path)["failed_checks"]}
    assert "CKV_K8S_16" in failed  # "Container should not be privileged"


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", str(cluster.kubeconfig), *args],
        input=stdin, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"kubectl {' '.join(args)}:\n{proc.stderr}"
    return proc.stdout


def test_kubectl_applies_everything_and_the_serving_deployment_becomes_available(
    cluster: Cluster, mlflow_server: str, champion: Trained
) -> None:
    out = kubectl(cluster, "apply", "-f", str(REPO / "deploy"))
    assert "gateway.gateway.networking.k8s.io/helmsman-gateway created" in out
    assert "role.rbac.authorization.k8s.io/helmsman-airflow created" in out
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "helmsman-mlflow-serving", "namespace": "ml"},
              "stringData": {"MLFLOW_TRACKING_URI": mlflow_server}}  # fmt: skip
    settings = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "helmsman-settings", "namespace": "ml"},
                "data": {"HELMSMAN_DATASET_URI": champion.dataset_uri}}  # fmt: skip
    served = serving_objects(champion.version, champion.model_name)
    stack = yaml.safe_dump_all([secret, settings, *served])
    kubectl(cluster, "apply", "-f", "-", stdin=stack)
    status = kubectl(cluster, "-n", "ml", "rollout", "status", "deployment/churn-serving-blue",
                     "--timeout=120s")  # fmt: skip
    assert "successfully rolled out" in status
    available = kubectl(cluster, "-n", "ml", "get", "deployment", "churn-serving-blue", "-o",
                        "jsonpath={.status.conditions[?(@.type=='Available')].status}")  # fmt: skip
    assert available == "True"
    weights = kubectl(cluster, "-n", "ml", "get", "httproute", "churn-serving", "-o",
                      "jsonpath={.spec.rules[0].backendRefs[*].weight}")  # fmt: skip
    assert weights.split() == ["100", "0"]  # the last route applied: all stable, mirrored


def test_mlflow_values_take_credentials_from_secrets() -> None:
    values = yaml.safe_load((REPO / "helm-values" / "mlflow.yaml").read_text())
    assert values["backendStore"]["postgres"]["enabled"] is True
    assert "password" not in values["backendStore"]["postgres"]
    assert values["backendStore"]["existingDatabaseSecret"]["name"]
    s3 = values["artifactRoot"]["s3"]
    assert s3["enabled"] is True
    assert "awsSecretAccessKey" not in s3
    assert s3["existingSecret"]["name"]
    # The server runs the MLflow release the pipeline's client is pinned to.
    assert f"mlflow=={values['image']['tag']}" in (REPO / "requirements.txt").read_text()
