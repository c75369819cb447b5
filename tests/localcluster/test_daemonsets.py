"""DaemonSets, ReplicationControllers and required node affinity on a three-node localcluster,
driven by real kubectl (1.32 on PATH, and 1.35 for the rollout)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cluster_fixtures import Cluster, pod_manifest, start_cluster, tool, wait_for

SLEEPER = "import time; time.sleep(600)"
NODES = [
    {"name": "node-a", "capacity": {"cpu": "2", "memory": "4Gi"}},
    {"name": "node-b", "labels": {"role": "edge"}, "capacity": {"cpu": "2", "memory": "4Gi"}},
    {
        "name": "node-c",
        "taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}],
        "capacity": {"cpu": "2", "memory": "4Gi"},
    },
]


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("three-nodes")
    cluster = start_cluster(root, {"restartBackoffSeconds": 0.5, "nodes": NODES})
    yield cluster
    cluster.api.close()
    assert cluster.server.stop() == 0


@pytest.fixture
def kubectl(three: Cluster) -> Callable[..., str]:
    def run(*args: str, binary: str = "kubectl", stdin: str | None = None) -> str:
        done = subprocess.run(
            [tool(binary), "--kubeconfig", str(three.kubeconfig), *args],
            input=stdin, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout

    return run


def pods_of(cluster: Cluster, selector: str) -> list[Any]:
    pods = cluster.core.list_namespaced_pod("default", label_selector=selector).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def daemonset(image_env: str = "v1", **spec: Any) -> dict[str, Any]:
    container = {
        "name": "agent",
        "image": "python:3.11-slim",
        "command": ["python", "-c", SLEEPER],
        "env": [{"name": "VERSION", "value": image_env}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [container], **spec},
            },
        },
    }


def on_nodes(cluster: Cluster) -> dict[str, str]:
    """node -> the name of the running, ready daemon pod bound to it."""
    placed = {}
    for pod in pods_of(cluster, "app=agent"):
        ready = pod.status.phase == "Running" and all(
            c.ready for c in pod.status.container_statuses or []
        )
        if ready and pod.spec.node_name:
            placed[pod.spec.node_name] = pod.metadata.name
    return placed


def test_a_daemonset_runs_one_pod_per_eligible_node_and_rolls_node_by_node(
    three: Cluster, kubectl: Callable[..., str]
) -> None:
    kubectl("apply", "-f", "-", stdin=json.dumps(daemonset()))
    kubectl("rollout", "status", "ds/agent", "--timeout=60s")
    first = wait_for(
        "a pod on each untainted node", lambda: len(on_nodes(three)) == 2 and on_nodes(three)
    )
    assert set(first) == {"node-a", "node-b"}  # node-c's taint is not tolerated
    ds = three.apps.read_namespaced_daemon_set("agent", "default")
    assert (ds.status.desired_number_scheduled, ds.status.number_ready) == (2, 2)
    assert ds.status.updated_number_scheduled == 2
    pod = three.core.read_namespaced_pod(first["node-a"], "default")
    assert pod.metadata.owner_references[0].kind == "DaemonSet"
    assert pod.metadata.labels["controller-revision-hash"]
    assert pod.metadata.labels["pod-template-generation"] == "1"
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    assert terms.node_selector_terms[0].match_fields[0].values == ["node-a"]
    assert {"node.kubernetes.io/unschedulable"} <= {t.key for t in pod.spec.tolerations}

    # A new template rolls out node by node and kubectl 1.35 waits for it to finish.
    kubectl("set", "env", "ds/agent", "VERSION=v2")
    kubectl("rollout", "status", "ds/agent", "--timeout=90s", binary="kubectl-1.35")
    second = wait_for("the new pods", lambda: len(on_nodes(three)) == 2 and on_nodes(three))
    assert set(second) == {"node-a", "node-b"}
    assert not set(second.values()) & set(first.values())
    for name in second.values():
        env = three.core.read_namespaced_pod(name, "default").spec.containers[0].env
        assert {e.name: e.value for e in env}["VERSION"] == "v2"
    ds = three.apps.read_namespaced_daemon_set("agent", "default")
    assert ds.status.observed_generation == ds.metadata.generation == 2

    # Tolerating the taint brings node-c in; a deleted pod comes back on its node.
    toleration = [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    patch = {"spec": {"template": {"spec": {"tolerations": toleration}}}}
    three.apps.patch_namespaced_daemon_set("agent", "default", patch)
    kubectl("rollout", "status", "ds/agent", "--timeout=90s")
    third = wait_for("three pods", lambda: len(on_nodes(three)) == 3 and on_nodes(three))
    three.core.delete_namespaced_pod(third["node-c"], "default", grace_period_seconds=0)
    replaced = wait_for(
        "a replacement on node-c",
        lambda: on_nodes(three).get("node-c") not in (None, third["node-c"]) and on_nodes(three),
    )
    assert set(replaced) == {"node-a", "node-b", "node-c"}

    # The cascade: deleting the DaemonSet deletes its pods.
    kubectl("delete", "ds/agent", "--wait=true", "--timeout=60s")
    wait_for("no daemon pods", lambda: not pods_of(three, "app=agent"))


def test_a_daemonset_with_a_node_selector_and_on_delete_updates(
    three: Cluster, kubectl: Callable[..., str]
) -> None:
    manifest = daemonset(nodeSelector={"role": "edge"})
    manifest["spec"]["updateStrategy"] = {"type": "OnDelete"}
    kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    first = wait_for("the edge pod", lambda: on_nodes(three))
    assert list(first) == ["node-b"]
    kubectl("set", "env", "ds/agent", "VERSION=v2")
    wait_for(
        "the controller to see the new generation",
        lambda: (
            three.apps.read_namespaced_daemon_set("agent", "default").status.observed_generation
            == 2
        ),
    )
    assert on_nodes(three) == first  # OnDelete: the old pod stays until someone deletes it
    ds = three.apps.read_namespaced_daemon_set("agent", "default")
    assert ds.status.updated_number_scheduled == 0
    three.core.delete_namespaced_pod(first["node-b"], "default", grace_period_seconds=0)
    second = wait_for(
        "its replacement", lambda: on_nodes(three).get("node-b") not in (None, first["node-b"])
    )
    assert second
    wait_for(
        "the status to count it as updated",
        lambda: (
            three.apps.read_namespaced_daemon_set(
                "agent", "default"
            ).status.updated_number_scheduled
            == 1
        ),
    )
    kubectl("delete", "ds/agent", "--wait=true", "--timeout=60s")
    wait_for("no daemon pods", lambda: not pods_of(three, "app=agent"))


def test_a_replication_controller_keeps_its_replicas_and_scales(
    three: Cluster, kubectl: Callable[..., str]
) -> None:
    container = {"name": "web", "image": "python:3.11-slim", "command": ["python", "-c", SLEEPER]}
    rc = {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {"name": "legacy"},
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {"labels": {"app": "legacy"}},
                "spec": {"containers": [container]},
            },
        },
    }
    kubectl("create", "-f", "-", stdin=json.dumps(rc))
    stored = three.core.read_namespaced_replication_controller("legacy", "default")
    assert stored.spec.selector == {"app": "legacy"}  # defaulted from the template
    assert stored.metadata.labels == {"app": "legacy"}

    def ready(count: int) -> Callable[[], bool]:
        def check() -> bool:
            status = three.core.read_namespaced_replication_controller("legacy", "default").status
            return status.ready_replicas == count and len(pods_of(three, "app=legacy")) == count

        return check

    wait_for("two ready replicas", ready(2))
    kubectl("scale", "rc/legacy", "--replicas=3")
    wait_for("three ready replicas", ready(3))
    scale = json.loads(
        kubectl("get", "--raw", "/api/v1/namespaces/default/replicationcontrollers/legacy/scale")
    )
    assert scale["status"] == {"replicas": 3, "selector": "app=legacy"}
    victim = pods_of(three, "app=legacy")[0].metadata.name
    three.core.delete_namespaced_pod(victim, "default", grace_period_seconds=0)
    wait_for(
        "a replacement",
        lambda: (
            ready(3)() and victim not in {p.metadata.name for p in pods_of(three, "app=legacy")}
        ),
    )
    assert "legacy" in kubectl("get", "all")
    kubectl("delete", "rc/legacy", "--wait=true", "--timeout=60s")
    wait_for("no replicas", lambda: not pods_of(three, "app=legacy"))


@pytest.mark.parametrize(
    ("operator", "node"), [("In", "node-b"), ("NotIn", "node-a"), ("DoesNotExist", "node-a")]
)
def test_required_node_affinity_chooses_the_node(three: Cluster, operator: str, node: str) -> None:
    name = f"affine-{operator.lower()}"
    expression: dict[str, Any] = {"key": "role", "operator": operator}
    if operator in ("In", "NotIn"):
        expression["values"] = ["edge"]
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [expression]}]
            }
        }
    }
    three.core.create_namespaced_pod("default", pod_manifest(name, SLEEPER, affinity=affinity))
    bound = wait_for(
        "the pod bound", lambda: three.core.read_namespaced_pod(name, "default").spec.node_name
    )
    assert bound == node  # node-c is tainted, so NotIn/DoesNotExist leave node-a alone
    three.core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_a_pod_no_node_matches_by_affinity_says_so(three: Cluster) -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["x"]}]}
                ]
            }
        }
    }
    three.core.create_namespaced_pod("default", pod_manifest("nowhere", SLEEPER, affinity=affinity))

    def failed() -> list[Any]:
        found = three.core.list_namespaced_event(
            "default", field_selector="involvedObject.name=nowhere,reason=FailedScheduling"
        ).items
        return found

    message = wait_for("a FailedScheduling event", failed)[0].message
    assert "didn't match Pod's node affinity/selector" in message
    three.core.delete_namespaced_pod("nowhere", "default", grace_period_seconds=0)
