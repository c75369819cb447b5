"""The training DAG run through Airflow for real, against localcluster and a real MLflow server.

The scenarios build on each other, in order, on one stack (the way a platform lives):

1. a REST trigger with invalid Params is refused (400) and starts nothing;
2. the first run (REST trigger, valid Params) deploys, the model answers through the Service,
   and the Params reached the pods;
3. a worse challenger is recorded, not deployed; the champion is untouched;
4. a challenger that passes evaluation but is served wrong (train/serve skew in its serving
   image) fails the health gate and is rolled back, with no failed client request under a
   steady request loop;
5. a three-day backfill records three runs and deploys nothing;
6. blue-green and canary rollouts of a good challenger switch traffic after the gate;
7. every Kubernetes call Airflow made is allowed by the Role in deploy/rbac.yaml.

The only thing emulated is the GPU node (an "emulated GPU" node in localcluster: the scheduler
and the pod spec are real; the training pod computes on this machine's CPU).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from helmsman import rollout
from tests.e2e.conftest import SKEWED_IMAGE
from tools.airflow_api import AirflowApi, ApiError
from tools.stack import REPO, Stack

DAG = "ml_training"
MODEL = "churn"
NS = "ml"
# Small, quick runs: two days of 4000 rows, a few epochs.
BASE = {"window_days": 2, "gpus": 1, "hidden": "16,8"}
TIMINGS: dict[str, float] = {}
TEST_AGENT = "helmsman-e2e-tests"


@pytest.fixture(scope="module")
def k8s(stack: Stack) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(stack.kubeconfig))
    api.user_agent = TEST_AGENT  # the RBAC check below tells the tests' calls from Airflow's
    yield api
    api.close()


@pytest.fixture(scope="module")
def registry(stack: Stack) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_url)


def run(airflow: AirflowApi, conf: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    started = time.monotonic()
    run_id = airflow.trigger(DAG, {**BASE, **conf})
    result = airflow.wait(DAG, run_id, timeout=900)
    TIMINGS[name] = time.monotonic() - started
    states = {t: ti["state"] for t, ti in airflow.task_instances(DAG, run_id).items()}
    return run_id, {"run": result, "states": states}


def service_address(k8s: client.ApiClient) -> str:
    return rollout.service_url(k8s, "churn-serving", NS)


def get_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - a Service address in the test cluster
        url, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return json.load(response)


def served_version(k8s: client.ApiClient) -> str:
    return str(get_json(service_address(k8s) + "/metadata")["model_version"])


def deployment_generation(k8s: client.ApiClient) -> int:
    deployment = client.AppsV1Api(k8s).read_namespaced_deployment("churn-serving", NS)
    return int(deployment.metadata.generation)


def champion(registry: Any) -> str:
    return str(registry.get_model_version_by_alias(MODEL, "champion").version)


def golden_inputs(registry: Any, version: str, tmp: Path) -> list[dict[str, Any]]:
    run_id = registry.get_model_version(MODEL, version).run_id
    path = registry.download_artifacts(run_id, "evaluation/golden.json", str(tmp))
    inputs: list[dict[str, Any]] = json.loads(Path(path).read_text())["inputs"]
    return inputs


def test_1_invalid_params_are_refused_with_400_and_start_nothing(airflow: AirflowApi) -> None:
    for conf, field in (
        ({"epochs": 0}, "epochs"),
        ({"strategy": "sideways"}, "strategy"),
        ({"hidden": "64,,32"}, "hidden"),
        ({"gpus": 9}, "gpus"),
    ):
        with pytest.raises(ApiError) as refused:
            airflow.trigger(DAG, conf)
        assert refused.value.status == 400, conf
        assert field in refused.value.detail, refused.value.detail
    assert airflow.runs(DAG) == []


def test_2_first_run_deploys_and_the_model_answers_through_the_service(
    airflow: AirflowApi, k8s: client.ApiClient, registry: Any, tmp_path: Path
) -> None:
    conf = {"data_end": "2026-03-03", "epochs": 2, "seed": 11, "gpus": 2}
    run_id, result = run(airflow, conf, "first")
    assert result["run"]["state"] == "success", result["states"]
    train = airflow.task_instances(DAG, run_id)["train"]
    assert (train["pool"], train["pool_slots"]) == ("gpu", 2)  # slots follow the Param
    decision = airflow.xcom(DAG, run_id, "decide")
    assert decision["deploy"] is True
    assert decision["champion"] is None
    version = decision["version"]
    assert champion(registry) == version
    assert served_version(k8s) == version

    rows = golden_inputs(registry, version, tmp_path)[:5]
    answer = get_json(service_address(k8s) + "/predict", {"instances": rows})
    assert len(answer["predictions"]) == 5
    assert all(0.0 <= p <= 1.0 for p in answer["predictions"])

    # The Params reached the pods: the training run recorded what the trigger asked for.
    mv = registry.get_model_version(MODEL, version)
    params = registry.get_run(mv.run_id).data.params
    assert (params["epochs"], params["seed"], params["hidden"]) == ("2", "11", "(16, 8)")
    assert params["days"] == "2026-03-01..2026-03-02"
    # Lineage both ways: the version names the DAG run, the Deployment names both.
    assert mv.tags["helmsman.run_id"] == run_id
    assert mv.tags["helmsman.rollout"] == "passed"
    deployment = client.AppsV1Api(k8s).read_namespaced_deployment("churn-serving", NS)
    annotations = deployment.metadata.annotations
    assert annotations["helmsman.io/dag-run"] == run_id
    assert annotations["helmsman.io/model-uri"] == f"models:/{MODEL}/{version}"


def test_3_a_worse_challenger_is_recorded_and_not_deployed(
    airflow: AirflowApi, k8s: client.ApiClient, registry: Any
) -> None:
    before = champion(registry)
    generation = deployment_generation(k8s)
    conf = {"data_end": "2026-03-04", "epochs": 1, "hidden": "1", "learning_rate": 0.00001}
    run_id, result = run(airflow, conf, "worse challenger")
    assert result["run"]["state"] == "success", result["states"]
    assert result["states"]["rollout"] == "skipped"
    assert result["states"]["promote"] == "skipped"
    decision = airflow.xcom(DAG, run_id, "decide")
    assert decision["evaluation"] == "reject"
    assert decision["deploy"] is False
    assert champion(registry) == before
    assert served_version(k8s) == before
    assert deployment_generation(k8s) == generation
    tags = registry.get_model_version(MODEL, decision["version"]).tags
    assert tags["helmsman.fence"] == "hold"
    assert tags["helmsman.decision"] == "reject"


class RequestLoop(threading.Thread):
    """A steady client: one prediction every 20 ms through the Service, errors counted."""

    def __init__(self, url: str, row: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url, self.row = url, row
        self.ok, self.failures = 0, []  # type: ignore[var-annotated]
        self.versions: set[str] = set()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                answer = get_json(self.url + "/predict", {"instances": [self.row]})
                self.versions.add(str(answer["model_version"]))
                self.ok += 1
            except Exception as exc:  # every failure is what we count
                self.failures.append(repr(exc))
            time.sleep(0.02)


def test_4_a_challenger_served_wrong_is_rolled_back_without_failed_requests(
    airflow: AirflowApi, k8s: client.ApiClient, registry: Any, tmp_path: Path
) -> None:
    before = champion(registry)
    loop = RequestLoop(service_address(k8s), golden_inputs(registry, before, tmp_path)[0])
    loop.start()
    try:
        conf = {
            "data_end": "2026-03-05",
            "epochs": 8,
            "min_improvement": -1.0,
            "serving_image": SKEWED_IMAGE,
        }
        run_id, result = run(airflow, conf, "skewed challenger (rolled back)")
        time.sleep(2)  # a little steady traffic after the rollback, too
    finally:
        loop.stopping.set()
        loop.join()

    assert result["run"]["state"] == "failed"
    assert result["states"]["rollout"] == "failed"
    assert result["states"]["promote"] == "upstream_failed"
    decision = airflow.xcom(DAG, run_id, "decide")
    assert decision["evaluation"] == "promote", "the challenger should pass evaluation"
    rejected = decision["version"]
    assert champion(registry) == before
    assert served_version(k8s) == before
    tags = registry.get_model_version(MODEL, rejected).tags
    assert tags["helmsman.rollout"] == "rejected"
    assert "golden-set predictions differ" in tags["helmsman.rollout_reason"]
    log = airflow.task_log(DAG, run_id, "rollout")
    assert "gate failed: golden-set predictions differ" in log
    assert f"rolled back, version {before} serves again" in log

    assert loop.failures == [], loop.failures[:5]
    assert loop.ok > 100
    assert rejected in loop.versions  # the skewed pods did serve for a while: a real episode
    deployment = client.AppsV1Api(k8s).read_namespaced_deployment("churn-serving", NS)
    image = deployment.spec.template.spec.containers[0].image
    assert image != SKEWED_IMAGE


def test_5_a_three_day_backfill_records_three_runs_and_deploys_nothing(
    airflow: AirflowApi, k8s: client.ApiClient, registry: Any
) -> None:
    before = champion(registry)
    generation = deployment_generation(k8s)
    started = time.monotonic()
    airflow.backfill(DAG, "2026-03-06T00:00:00Z", "2026-03-08T23:59:59Z", max_active_runs=1)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        runs = [r for r in airflow.runs(DAG) if r["run_type"] == "backfill"]
        if len(runs) == 3 and all(r["state"] in ("success", "failed") for r in runs):
            break
        time.sleep(3)
    TIMINGS["3-day backfill"] = time.monotonic() - started
    assert [r["state"] for r in runs] == ["success"] * 3
    versions = []
    for r in runs:
        tis = airflow.task_instances(DAG, r["dag_run_id"])
        # The cluster policy moved the backfill's GPU task to the backfill pool.
        assert (tis["train"]["pool"], tis["train"]["pool_slots"]) == ("gpu_backfill", 1)
        states = {t: ti["state"] for t, ti in tis.items()}
        assert (states["rollout"], states["promote"]) == ("skipped", "skipped"), states
        decision = airflow.xcom(DAG, r["dag_run_id"], "decide")
        assert decision["deploy"] is False
        assert "backfill" in decision["reason"]
        versions.append(decision["version"])
        tags = registry.get_model_version(MODEL, decision["version"]).tags
        assert tags["helmsman.fence"] == "hold"
    assert len(set(versions)) == 3
    intervals = sorted(r["data_interval_start"][:10] for r in runs)
    assert intervals == ["2026-03-06", "2026-03-07", "2026-03-08"]
    assert champion(registry) == before
    assert served_version(k8s) == before
    assert deployment_generation(k8s) == generation


@pytest.mark.parametrize("strategy", ["blue-green", "canary"])
def test_6_blue_green_and_canary_switch_traffic_after_the_gate(
    strategy: str, airflow: AirflowApi, k8s: client.ApiClient, registry: Any
) -> None:
    before = champion(registry)
    end = {"blue-green": "2026-03-20", "canary": "2026-03-21"}[strategy]
    conf = {"data_end": end, "epochs": 4, "min_improvement": -1.0, "strategy": strategy}
    run_id, result = run(airflow, conf, f"{strategy} rollout")
    assert result["run"]["state"] == "success", result["states"]
    version = airflow.xcom(DAG, run_id, "decide")["version"]
    assert champion(registry) == version
    assert registry.get_model_version_by_alias(MODEL, "previous-champion").version == before
    assert {served_version(k8s) for _ in range(8)} == {version}
    services = {s.metadata.name for s in client.CoreV1Api(k8s).list_namespaced_service(NS).items}
    assert "churn-serving-canary" not in services  # a finished canary leaves nothing behind


def test_7_every_kubernetes_call_airflow_made_is_allowed_by_the_role(stack: Stack) -> None:
    role = next(
        d
        for d in yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text())
        if d["kind"] == "Role"
    )
    allowed = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    calls = [json.loads(line) for line in stack.audit_log.read_text().splitlines()]
    airflow_calls = {
        (c["apiGroup"], c["resource"], c["verb"], c["namespace"])
        for c in calls
        if not c["userAgent"].startswith(("kubectl", TEST_AGENT))
    }
    assert airflow_calls, "the audit log saw no call from Airflow"
    outside = sorted(c for c in airflow_calls if c[3] != role["metadata"]["namespace"])
    assert outside == [], f"calls outside the Role's namespace: {outside}"
    denied = sorted(c[:3] for c in airflow_calls if c[:3] not in allowed)
    assert denied == [], f"calls the Role does not allow: {denied}"
    used = {c[:3] for c in airflow_calls}
    unused = sorted(allowed - used)
    print("\nRBAC: rules granted but not exercised by the scenarios:", unused)
    print("scenario timings (s):", {k: round(v, 1) for k, v in TIMINGS.items()})
