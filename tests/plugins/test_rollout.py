"""The serving stack, as values (schema, PSS restricted) and for real on localcluster with a
real MLflow server: first deployment, then an update to another version."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from helmsman import rollout
from tests.cluster_fixtures import Cluster, start_cluster
from tests.k8s_policy import restricted_violations, schema_errors
from tests.mlflow_fixtures import Trained

NAMESPACE = "ml"


def target(version: str, model: str = "churn-test") -> rollout.Target:
    return rollout.Target(
        name="churn-serving",
        namespace=NAMESPACE,
        model_name=model,
        model_version=version,
        annotations={"helmsman.io/dag-run": "tests"},
    )


def test_rendered_objects_pass_the_schema_and_pss_restricted() -> None:
    objects = rollout.render(target("7"))
    assert [o["kind"] for o in objects] == ["Deployment", "Service", "PodDisruptionBudget"]
    for obj in objects:
        assert schema_errors(obj) is None, obj["kind"]
    deployment = objects[0]
    assert restricted_violations(deployment["spec"]["template"]["spec"]) == []
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model-uri") + 1] == "models:/churn-test/7"
    assert (
        deployment["spec"]["template"]["metadata"]["annotations"][rollout.MODEL_ANNOTATION] == "7"
    )
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert (strategy["maxSurge"], strategy["maxUnavailable"]) == (1, 0)
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert objects[1]["spec"]["selector"] == selector  # the Service selects the live slot
    assert selector[rollout.SLOT_LABEL] == rollout.MAIN_SLOT
    pdb = objects[2]["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= selector.items()
    assert rollout.SLOT_LABEL not in pdb  # the budget covers every slot


@pytest.fixture(scope="module")
def serving_cluster(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str
) -> Iterator[Cluster]:
    """localcluster with the namespace and the MLflow Secret the serving pods read."""
    cluster = start_cluster(tmp_path_factory.mktemp("serving"), {"restartBackoffSeconds": 0.5})
    cluster.core.create_namespace({"metadata": {"name": NAMESPACE}})
    secret = {"MLFLOW_TRACKING_URI": base64.b64encode(mlflow_server.encode()).decode()}
    cluster.core.create_namespaced_secret(
        NAMESPACE, {"metadata": {"name": "helmsman-mlflow"}, "data": secret}
    )
    yield cluster
    cluster.api.close()
    cluster.server.stop()


def metadata(cluster: Cluster) -> dict:
    svc = cluster.core.read_namespaced_service("churn-serving", NAMESPACE)
    with urllib.request.urlopen(f"http://{svc.spec.cluster_ip}/metadata", timeout=5) as r:
        result: dict = json.load(r)
        return result


def test_first_deployment_then_an_update_roll_out_and_answer(
    serving_cluster: Cluster, champion: Trained, tmp_path: Path
) -> None:
    api = serving_cluster.api
    assert rollout.served_version(api, "churn-serving", NAMESPACE) is None
    rollout.apply(api, rollout.render(target(champion.version)))
    rollout.wait_for_rollout(api, "churn-serving", NAMESPACE, timeout=120)
    assert rollout.served_version(api, "churn-serving", NAMESPACE) == champion.version
    assert metadata(serving_cluster)["model_version"] == champion.version
    pdb = client.PolicyV1Api(api).read_namespaced_pod_disruption_budget("churn-serving", NAMESPACE)
    assert pdb.spec.min_available == 1

    # The same version again is a no-op rollout; the Deployment keeps its generation.
    generation = serving_cluster.apps.read_namespaced_deployment(
        "churn-serving", NAMESPACE
    ).metadata.generation
    rollout.apply(api, rollout.render(target(champion.version)))
    rollout.wait_for_rollout(api, "churn-serving", NAMESPACE, timeout=60)
    after = serving_cluster.apps.read_namespaced_deployment(
        "churn-serving", NAMESPACE
    ).metadata.generation
    assert after == generation


def test_a_version_that_cannot_load_fails_the_rollout_while_the_old_pods_serve(
    serving_cluster: Cluster, champion: Trained
) -> None:
    api = serving_cluster.api
    broken = rollout.render(target("999"))  # no such version: the server exits with code 2
    broken[0]["spec"]["progressDeadlineSeconds"] = 8
    rollout.apply(api, broken)
    with pytest.raises(rollout.RolloutFailed, match="timed out progressing"):
        rollout.wait_for_rollout(api, "churn-serving", NAMESPACE, timeout=60)
    # maxUnavailable 0: the champion's pods never stopped serving.
    assert metadata(serving_cluster)["model_version"] == champion.version


def golden_of(version: str, model: str = "churn-test") -> dict:
    import mlflow

    from helmsman_steps import evaluate, registry

    run_id = registry.resolve(f"models:/{model}/{version}").run_id
    golden: dict = mlflow.artifacts.load_dict(f"runs:/{run_id}/{evaluate.GOLDEN_ARTIFACT}")
    return golden


def test_rollback_returns_to_the_serving_revision_and_the_gate_passes_it(
    serving_cluster: Cluster, champion: Trained
) -> None:
    api = serving_cluster.api
    # The previous test left the Deployment on a version that cannot load.
    assert rollout.rollback(api, "churn-serving", NAMESPACE, timeout=120) == champion.version
    svc = serving_cluster.core.read_namespaced_service("churn-serving", NAMESPACE)
    gate = rollout.health_gate(
        api,
        target(champion.version),
        f"http://{svc.spec.cluster_ip}",
        golden_of(champion.version),
        probe_requests=100,
    )
    assert gate.passed, gate.reasons
    assert gate.error_rate == 0


def test_the_gate_fails_a_model_that_serves_other_predictions(
    serving_cluster: Cluster, champion: Trained
) -> None:
    """Served predictions that differ from the evaluated ones fail the parity check."""
    api = serving_cluster.api
    svc = serving_cluster.core.read_namespaced_service("churn-serving", NAMESPACE)
    golden = golden_of(champion.version)
    tampered = {**golden, "predictions": [min(p + 0.05, 1.0) for p in golden["predictions"]]}
    gate = rollout.health_gate(
        api, target(champion.version), f"http://{svc.spec.cluster_ip}", tampered, probe_requests=20
    )
    assert not gate.passed
    assert any("golden-set predictions differ" in r for r in gate.reasons), gate.reasons
    wrong_version = rollout.health_gate(
        api, target("12345"), f"http://{svc.spec.cluster_ip}", golden, probe_requests=20
    )
    assert any("/metadata reports versions" in r for r in wrong_version.reasons)


def test_the_deferred_wait_reports_a_finished_rollout_from_the_triggerer_side(
    serving_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeploymentAvailableTrigger, run as the triggerer runs it (asyncio, kubernetes_asyncio,
    the connection from the environment), against the Deployment the tests above rolled out."""
    import asyncio

    from helmsman.deploy import DeploymentAvailableTrigger

    conn = {
        "conn_type": "kubernetes",
        "extra": {"kube_config_path": str(serving_cluster.kubeconfig)},
    }
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(conn))
    plan = {"deployment": "churn-serving", "gate_service": "churn-serving", "pod_labels": {}}
    trigger = DeploymentAvailableTrigger("churn-serving", NAMESPACE, "kubernetes_default", 60, plan)
    classpath, kwargs = trigger.serialize()
    assert classpath == "helmsman.deploy.DeploymentAvailableTrigger"
    revived = DeploymentAvailableTrigger(**kwargs)
    payload = asyncio.run(asyncio.wait_for(first_event_of(revived), 90))
    assert payload == {"plan": plan, "error": None}

    # A rollout that is not done when the trigger's time is up is reported as such.
    impatient = DeploymentAvailableTrigger(
        "churn-serving", NAMESPACE, "kubernetes_default", 0, plan
    )
    serving_cluster.apps.patch_namespaced_deployment_scale(
        "churn-serving", NAMESPACE, {"spec": {"replicas": 3}}
    )
    payload = asyncio.run(asyncio.wait_for(first_event_of(impatient), 90))
    assert "timed out" in (payload["error"] or "")


async def first_event_of(trigger: Any) -> Any:
    async for event in trigger.run():
        return event.payload
    return None


def test_the_rollout_lock_refuses_another_runs_rollout_and_lets_a_rerun_join_its_own(
    serving_cluster: Cluster,
) -> None:
    api = serving_cluster.api
    t = target("5")
    state = {"owner": "ml_training/run_a", "version": "5", "phase": "rolling", "since": time.time()}
    rollout.write_state(api, t.name, NAMESPACE, state)
    # Another DAG run is refused, with the owner and version named.
    with pytest.raises(rollout.RolloutBusy, match="run_a"):
        rollout.claim(api, t, "ml_training/run_b", "rolling")
    # The same task re-run after a crash joins its rollout (same state, same start time).
    assert rollout.claim(api, t, "ml_training/run_a", "rolling") == state
    # A rollout left "rolling" for over an hour is stale: another run may take over.
    rollout.write_state(api, t.name, NAMESPACE, {**state, "since": time.time() - 7200})
    taken = rollout.claim(api, t, "ml_training/run_b", "canary")
    assert (taken["owner"], taken["strategy"], taken["phase"]) == (
        "ml_training/run_b",
        "canary",
        "rolling",
    )
    # A finished rollout never blocks the next one.
    rollout.write_state(api, t.name, NAMESPACE, {**state, "phase": "gated"})
    assert rollout.claim(api, t, "ml_training/run_c", "rolling")["owner"] == "ml_training/run_c"
