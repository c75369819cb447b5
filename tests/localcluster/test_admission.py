"""What the real API server and its controllers add to objects, checked with real clients:
QoS classes, PriorityClass admission, the default ServiceAccount, discovery categories (`kubectl
get all`), stored-only workload kinds, and a hint for an image with no local runtime."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from tests.cluster_fixtures import Cluster, events_of, kubectl, pod_manifest, wait_for


def resources(requests: dict[str, str] | None, limits: dict[str, str] | None) -> dict[str, Any]:
    return {
        "container": {
            "resources": {
                **({"requests": requests} if requests else {}),
                **({"limits": limits} if limits else {}),
            }
        }
    }


@pytest.mark.parametrize(
    ("name", "requests", "limits", "qos"),
    [
        ("qos-none", None, None, "BestEffort"),
        ("qos-equal", {"cpu": "500m", "memory": "64Mi"}, {"cpu": "0.5", "memory": "64Mi"},
         "Guaranteed"),
        ("qos-limits", None, {"cpu": "1", "memory": "128Mi"}, "Guaranteed"),
        ("qos-request", {"cpu": "100m"}, None, "Burstable"),
        ("qos-less", {"cpu": "100m", "memory": "64Mi"}, {"cpu": "1", "memory": "64Mi"},
         "Burstable"),
    ],
)  # fmt: skip
def test_qos_class_follows_requests_and_limits(
    cluster: Cluster, name: str, requests: Any, limits: Any, qos: str
) -> None:
    manifest = pod_manifest(name, "pass", **resources(requests, limits))
    created = cluster.core.create_namespaced_pod("default", manifest)
    assert created.status.qos_class == qos
    cluster.core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_priority_classes_are_admitted_as_the_real_plugin_does(cluster: Cluster) -> None:
    critical = cluster.core.create_namespaced_pod(
        "default", pod_manifest("critical", "pass", priorityClassName="system-node-critical")
    )
    assert critical.spec.priority == 2000001000
    plain = cluster.core.create_namespaced_pod("default", pod_manifest("plain", "pass"))
    assert (plain.spec.priority, plain.spec.priority_class_name) == (0, None)

    with pytest.raises(ApiException) as refused:
        cluster.core.create_namespaced_pod(
            "default", pod_manifest("vip", "pass", priorityClassName="gold")
        )
    assert refused.value.status == 403
    assert json.loads(refused.value.body)["message"] == (
        'pods "vip" is forbidden: no PriorityClass with name gold was found'
    )
    for name in ("critical", "plain"):
        cluster.core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_every_namespace_gets_a_default_service_account(cluster: Cluster) -> None:
    cluster.core.create_namespace({"metadata": {"name": "team-a"}})
    account = wait_for(
        "the default ServiceAccount",
        lambda: cluster.core.list_namespaced_service_account("team-a").items,
    )
    assert [a.metadata.name for a in account] == ["default"]
    cluster.core.delete_namespace("team-a")


WORKLOADS = """
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent}
spec:
  selector: {matchLabels: {app: node-agent}}
  template:
    metadata: {labels: {app: node-agent}}
    spec: {containers: [{name: agent, image: python:3.11-slim}]}
---
apiVersion: v1
kind: ReplicationController
metadata: {name: legacy}
spec:
  replicas: 0
  selector: {app: legacy}
  template:
    metadata: {labels: {app: legacy}}
    spec: {containers: [{name: web, image: python:3.11-slim}]}
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: batch-low}
value: 100
description: training that can wait
"""


def test_stored_workload_kinds_apply_and_all_lists_the_workloads(
    cluster: Cluster, tmp_path: Path
) -> None:
    path = tmp_path / "workloads.yaml"
    path.write_text(WORKLOADS)
    out = kubectl(cluster, "apply", "-f", str(path))
    for created in (
        "daemonset.apps/node-agent",
        "replicationcontroller/legacy",
        "priorityclass.scheduling.k8s.io/batch-low",
    ):
        assert f"{created} created" in out, out
    pod = cluster.core.create_namespaced_pod(
        "default", pod_manifest("low", "pass", priorityClassName="batch-low")
    )
    assert pod.spec.priority == 100

    listed = kubectl(cluster, "get", "all", "-o", "name").split()
    assert "pod/low" in listed
    assert "daemonset.apps/node-agent" in listed
    assert "replicationcontroller/legacy" in listed
    assert not [name for name in listed if name.startswith(("configmap", "priorityclass"))]
    kubectl(cluster, "delete", "-f", str(path))
    cluster.core.delete_namespaced_pod("low", "default", grace_period_seconds=0)


def test_an_unmapped_image_says_how_to_map_it(cluster: Cluster) -> None:
    manifest = pod_manifest("nowhere", "pass", container={"image": "registry.example/x:1"})
    cluster.core.create_namespaced_pod("default", manifest)
    failed = wait_for(
        "the pull failure",
        lambda: [e for e in events_of(cluster, "nowhere", "Failed") if "image map" in e.message],
    )
    assert "under `images:` in the --config file" in failed[0].message
    cluster.core.delete_namespaced_pod("nowhere", "default", grace_period_seconds=0)


def test_bodies_are_decoded_strictly_at_any_depth(cluster: Cluster) -> None:
    from tests.localcluster.test_workloads import manifests

    deployment = manifests("strict")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagee"] = "typo"
    with pytest.raises(ApiException) as unknown:
        cluster.apps.create_namespaced_deployment("default", deployment, field_validation="Strict")
    assert unknown.value.status == 400
    assert (
        'unknown field "spec.template.spec.containers[0].imagee"'
        in json.loads(unknown.value.body)["message"]
    )

    deployment = manifests("typed")[0]
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(ApiException) as wrong:
        cluster.apps.create_namespaced_deployment("default", deployment)
    assert wrong.value.status == 400
    assert json.loads(wrong.value.body)["message"] == (
        'Deployment in version "v1" cannot be handled as a Deployment: spec.replicas: cannot '
        "decode a JSON string into a field that takes a JSON number"
    )
    with pytest.raises(ApiException):
        cluster.apps.read_namespaced_deployment("typed", "default")


def test_auth_reviews_and_service_account_tokens(cluster: Cluster) -> None:
    # The kubeconfig's user is the admin (system:masters, bound to cluster-admin).
    assert kubectl(cluster, "auth", "can-i", "delete", "secrets").strip() == "yes"
    rules = kubectl(cluster, "auth", "can-i", "--list")
    assert ["*.*", "[]", "[]", "[*]"] in [line.split()[:4] for line in rules.splitlines()]
    assert "localcluster-admin" in kubectl(cluster, "auth", "whoami")

    wait_for(
        "the default ServiceAccount",
        lambda: cluster.core.list_namespaced_service_account("default").items,
    )
    token = kubectl(cluster, "create", "token", "default", "--duration=20m").strip()
    _, claims, _ = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    assert payload["sub"] == "system:serviceaccount:default:default"
    assert payload["exp"] - payload["iat"] == 1200
    with pytest.raises(AssertionError, match="not found"):
        kubectl(cluster, "create", "token", "nobody")
