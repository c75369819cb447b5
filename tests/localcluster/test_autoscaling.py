"""Resource metrics and the HorizontalPodAutoscaler: `kubectl top`, and Helmsman's serving
HPA (autoscaling/v2, CPU utilisation of the request) scaling a Deployment up under load and
back down after, on a cluster whose metrics and autoscaler run every second."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.cluster_fixtures import Cluster, start_cluster, wait_for
from tests.dev_env import REPO

KUBECTL = shutil.which("kubectl")
SERVING = REPO / "plugins" / "helmsman" / "manifests" / "serving.yaml"
# Busy for BURN seconds after it starts, then idle: load that comes and goes.
BURNER = (
    "import time\n"
    "end = time.monotonic() + float(__import__('os').environ['BURN'])\n"
    "while time.monotonic() < end:\n"
    "    pass\n"
    "time.sleep(600)\n"
)


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    settings = {
        "restartBackoffSeconds": 0.5,
        "metricsResolutionSeconds": 1,
        "autoscalerSyncSeconds": 1,
    }
    cluster = start_cluster(tmp_path_factory.mktemp("autoscaling"), settings)
    yield cluster
    cluster.api.close()
    cluster.server.stop()


def burner(name: str, seconds: float, replicas: int = 1) -> dict[str, Any]:
    container = {
        "name": "work",
        "image": "python:3.11-slim",
        "command": ["python", "-c", BURNER],
        "env": [{"name": "BURN", "value": str(seconds)}],
        "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container]},
            },
        },
    }


def serving_autoscaler(target: str) -> dict[str, Any]:
    """Helmsman's serving HPA as shipped, pointed at ``target``, with a short scale-down
    window (300 s in the manifest) so the test sees the way down too."""
    hpa = next(
        d for d in yaml.safe_load_all(SERVING.read_text())
        if d and d["kind"] == "HorizontalPodAutoscaler"
    )  # fmt: skip
    hpa["metadata"] = {"name": target}
    hpa["spec"]["scaleTargetRef"]["name"] = target
    hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"] = 1, 3
    hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] = 2
    return hpa


def test_kubectl_top_reads_what_the_containers_use(fast: Cluster) -> None:
    from kubernetes.utils import create_from_dict

    assert KUBECTL, "kubectl is not on PATH"
    create_from_dict(fast.api, burner("busy", 600))

    def top() -> list[list[str]]:
        done = subprocess.run(
            [KUBECTL, "--kubeconfig", str(fast.kubeconfig), "top", "pods", "-l", "app=busy"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        rows = [line.split() for line in done.stdout.splitlines()[1:]]
        return rows if done.returncode == 0 and rows else []

    (row,) = wait_for("metrics for the busy pod", top, timeout=30)
    cpu_millicores = int(row[1].removesuffix("m"))
    assert cpu_millicores > 500, row  # a process spinning on one core
    assert row[2].endswith("Mi")
    nodes = subprocess.run(
        [KUBECTL, "--kubeconfig", str(fast.kubeconfig), "top", "nodes"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert nodes[0].split()[:3] == ["NAME", "CPU(cores)", "CPU(%)"]
    fast.apps.delete_namespaced_deployment("busy", "default")


def test_the_serving_autoscaler_scales_up_under_load_and_down_after(fast: Cluster) -> None:
    from kubernetes.utils import create_from_dict

    create_from_dict(fast.api, burner("served", 8))
    autoscaling = client.AutoscalingV2Api(fast.api)
    autoscaling.create_namespaced_horizontal_pod_autoscaler("default", serving_autoscaler("served"))

    def replicas() -> int:
        return int(fast.apps.read_namespaced_deployment("served", "default").spec.replicas)

    wait_for("a scale-up to the maximum", lambda: replicas() == 3, timeout=30)
    status = autoscaling.read_namespaced_horizontal_pod_autoscaler("served", "default").status
    assert status.current_metrics[0].resource.current.average_utilization > 70
    limited = next(c for c in status.conditions if c.type == "ScalingLimited")
    assert (limited.status, limited.reason) == ("True", "TooManyReplicas")

    # Every pod's busy spell ends; the CPU falls under target and it scales back down.
    wait_for("the scale-down", lambda: replicas() == 1, timeout=60)
    rescales = [
        e.message
        for e in fast.core.list_namespaced_event(
            "default", field_selector="involvedObject.name=served"
        ).items
        if e.reason == "SuccessfulRescale"
    ]
    assert any("New size: 3" in m and "above target" in m for m in rescales), rescales
    assert any("New size: 1" in m and "below target" in m for m in rescales), rescales
    fast.apps.delete_namespaced_deployment("served", "default")
