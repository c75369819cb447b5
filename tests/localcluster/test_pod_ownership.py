"""A pod belongs to one try at a time: a later try that re-attaches to it claims it, and the
earlier try's worker -- a zombie that outlived a scheduler restart -- can no longer delete it,
neither when it is killed nor when it sees the pod end.

Helmsman's pod operator against localcluster with the real kubernetes client and KPO's own
re-attach code (``get_or_create_pod``); the two tries are two operator instances, as two
workers would hold them, and Airflow's task context is reduced to what KPO reads from it.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from helmsman.pods import HelmsmanPodOperator
from tests.cluster_fixtures import Cluster, wait_for

NS = "default"
SLEEP = "import time; time.sleep(120)"


@pytest.fixture
def connection(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {
        "conn_type": "kubernetes",
        "extra": {"kube_config_path": str(cluster.kubeconfig), "in_cluster": False},
    }
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(conn))


def try_of(number: int, run_id: str) -> tuple[HelmsmanPodOperator, dict[str, Any]]:
    operator = HelmsmanPodOperator(
        task_id="train", name="train", namespace=NS, image="python:3.11-slim",
        cmds=["python", "-c", SLEEP], kubernetes_conn_id="kubernetes_default",
        on_finish_action="delete_pod", durable=True,
    )  # fmt: skip
    ti = SimpleNamespace(dag_id="ownership", task_id="train", try_number=number, map_index=-1)
    return operator, {"ti": ti, "run_id": run_id, "dag": SimpleNamespace()}


def start(cluster: Cluster, operator: HelmsmanPodOperator, context: dict[str, Any]) -> Any:
    """The try's pod, created through KPO's own get_or_create_pod, once it runs."""
    created = operator.get_or_create_pod(operator.build_pod_request_obj(context), context)
    name = created.metadata.name
    operator.pod = wait_for(f"pod {name} running", lambda: running(cluster, name), timeout=60)
    return operator.pod


def running(cluster: Cluster, name: str) -> Any:
    pod = cluster.core.read_namespaced_pod(name, NS)
    return pod if pod.status.phase == "Running" else None


def exists(cluster: Cluster, name: str) -> bool:
    return any(p.metadata.name == name for p in cluster.core.list_namespaced_pod(NS).items)


@pytest.mark.usefixtures("connection")
def test_a_zombie_try_cannot_delete_the_pod_a_later_try_reattached_to(cluster: Cluster) -> None:
    first, first_context = try_of(1, "manual__zombie")
    name = start(cluster, first, first_context).metadata.name

    # Try 2 (its worker believes try 1's is dead) finds the running pod and claims it.
    second, second_context = try_of(2, "manual__zombie")
    request = second.build_pod_request_obj(second_context)
    attached = second.get_or_create_pod(request, second_context)
    assert attached.metadata.name == name  # re-attached, no second pod
    assert cluster.core.read_namespaced_pod(name, NS).metadata.labels["try_number"] == "2"
    assert len(cluster.core.list_namespaced_pod(NS, label_selector="dag_id=ownership").items) == 1

    # The zombie is killed, then sees the pod: neither deletes what try 2 follows.
    first.on_kill()
    assert cluster.core.read_namespaced_pod(name, NS).metadata.deletion_timestamp is None
    assert first.process_pod_deletion(first.pod) is False
    pod = running(cluster, name)
    assert pod is not None
    assert pod.metadata.deletion_timestamp is None

    # The owner may: try 2 is killed and its pod goes with it.
    second.pod = attached
    second.on_kill()
    wait_for("try 2's pod deleted", lambda: not exists(cluster, name), timeout=60)


@pytest.mark.usefixtures("connection")
def test_without_a_later_claim_a_killed_try_deletes_its_own_pod(cluster: Cluster) -> None:
    """The guard changes nothing for the common case: the only try is killed, its pod goes."""
    only, context = try_of(1, "manual__alone")
    name = start(cluster, only, context).metadata.name
    only.on_kill()
    wait_for("the pod deleted", lambda: not exists(cluster, name), timeout=60)
