"""helm 4 and kubectl 1.35 against localcluster, as a platform user drives a cluster.

helm stores its releases as Secrets (sent as protobuf), applies server-side, waits with watches,
and runs hook Jobs and test pods; kubectl 1.35 waits through WatchList. The binaries come from
`make test-tools` (tools/kube_tools.py).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.cluster_fixtures import Cluster, tool

CHART = Path(__file__).parent / "charts" / "demo"


@pytest.fixture
def helm(cluster: Cluster, tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
        "HELM_DATA_HOME": str(tmp_path / "data"),
    }

    def run(*args: str) -> str:
        done = subprocess.run(
            [tool("helm"), *args], env=env, capture_output=True, text=True, timeout=180,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    return run


def message(cluster: Cluster) -> str:
    config = cluster.core.read_namespaced_config_map("r1-config", "default")
    return str(config.data["message"])


def hook_log(cluster: Cluster) -> str:
    pods = cluster.core.list_namespaced_pod("default", label_selector="job-name=r1-migrate")
    (pod,) = pods.items
    return str(
        cluster.core.read_namespaced_pod_log(
            pod.metadata.name, "default", _preload_content=False
        ).data.decode()
    )


def test_helm_install_upgrade_rollback_test_uninstall(cluster: Cluster, helm) -> None:  # type: ignore[no-untyped-def]
    assert "STATUS: deployed" in helm("install", "r1", str(CHART), "--wait", "--timeout", "90s")
    assert message(cluster) == "hello"
    web = cluster.apps.read_namespaced_deployment("r1-web", "default")
    assert web.status.ready_replicas == 1
    # The post-install hook ran to completion before install returned.
    hook = client.BatchV1Api(cluster.api).read_namespaced_job("r1-migrate", "default")
    assert hook.status.succeeded == 1
    assert hook_log(cluster) == "migrated to hello\n"

    helm("upgrade", "r1", str(CHART), "--set", "message=bye", "--wait", "--timeout", "90s")
    assert message(cluster) == "bye"
    assert hook_log(cluster) == "migrated to bye\n"  # before-hook-creation replaced the Job

    helm("rollback", "r1", "1", "--wait", "--timeout", "90s")
    assert message(cluster) == "hello"
    history = helm("history", "r1").splitlines()
    assert [line.split()[0] for line in history[1:]] == ["1", "2", "3"]

    tested = helm("test", "r1", "--logs", "--timeout", "90s")
    assert "Phase:          Succeeded" in tested
    assert "message is hello" in tested

    releases = cluster.core.list_namespaced_secret("default", label_selector="owner=helm").items
    assert len(releases) == 3
    assert {s.type for s in releases} == {"helm.sh/release.v1"}

    helm("uninstall", "r1", "--wait", "--timeout", "90s")
    for read in (
        lambda: cluster.core.read_namespaced_config_map("r1-config", "default"),
        lambda: cluster.apps.read_namespaced_deployment("r1-web", "default"),
    ):
        with pytest.raises(ApiException) as gone:
            read()
        assert gone.value.status == 404
    assert not cluster.core.list_namespaced_secret("default", label_selector="owner=helm").items


def test_kubectl_135_applies_server_side_and_waits(cluster: Cluster, tmp_path: Path) -> None:
    kubectl = [tool("kubectl-1.35"), "--kubeconfig", str(cluster.kubeconfig)]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*kubectl, *args], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"kubectl {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    assert "v1.35" in run("version", "--client")
    run("create", "deployment", "w135", "--image=python:3.11-slim", "--replicas=2", "--",
        "python", "-c", "import time; time.sleep(600)")  # fmt: skip
    assert 'deployment "w135" successfully rolled out' in run(
        "rollout", "status", "deployment/w135", "--timeout=60s"
    )
    run("wait", "--for=condition=Available", "deployment/w135", "--timeout=60s")
    run("delete", "deployment", "w135", "--wait=true")
