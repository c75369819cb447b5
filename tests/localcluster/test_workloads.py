"""Deployments, Services and real kubectl against localcluster, as a cluster user would work."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster_fixtures import Cluster, events_of, wait_for

KUBECTL = shutil.which("kubectl")
SERVER = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = (os.environ.get('VERSION', 'v1') + ' ' + os.environ['HOSTNAME']).encode()\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    def log_message(self, *args):\n"
    "        print('served', args[0] if args else '', flush=True)\n"
    "http.server.ThreadingHTTPServer((os.environ['POD_IP'], 8080), H).serve_forever()\n"
)


def manifests(name: str, replicas: int = 2, **strategy: object) -> list[dict]:
    labels = {"app": name}
    container = {
        "name": "web",
        "image": "python:3.11-slim",
        "command": ["python", "-c", SERVER],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "VERSION", "value": "v1"},
        ],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "strategy": strategy
                or {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {
                "selector": labels,
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
    ]


@pytest.fixture
def kubectl(cluster: Cluster):  # type: ignore[no-untyped-def]
    assert KUBECTL, "kubectl is not on PATH; the workplace image ships one (see DESIGN.md)"

    def run(*args: str, check: bool = True) -> str:
        proc = subprocess.run(
            [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    return run


def set_version(cluster: Cluster, name: str, version: str) -> None:
    """Change the VERSION variable of the web container: a new pod template, so a rollout."""
    env = [{"name": "VERSION", "value": version}]
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "web", "env": env}]}}}}
    cluster.apps.patch_namespaced_deployment(name, "default", patch)


def service_url(cluster: Cluster, name: str) -> str:
    svc = cluster.core.read_namespaced_service(name, "default")
    return f"http://{svc.spec.cluster_ip}:80/"


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        return response.read().decode()


def test_kubectl_session(cluster: Cluster, kubectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "web.yaml"
    path.write_text(yaml.safe_dump_all(manifests("web")))
    out = kubectl("apply", "-f", str(path))
    assert "deployment.apps/web created" in out
    assert "service/web created" in out
    assert 'deployment "web" successfully rolled out' in kubectl(
        "rollout", "status", "deployment/web", "--timeout=60s"
    )

    pods = kubectl("get", "pods", "-l", "app=web").splitlines()
    assert pods[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert len(pods) == 3
    assert all(line.split()[1:4] == ["1/1", "Running", "0"] for line in pods[1:]), pods

    served = get(service_url(cluster, "web"))
    assert served.startswith("v1 web-")
    pod_name = served.split()[1]
    wait_for("the request in the pod's log", lambda: "served" in kubectl("logs", pod_name))

    assert "deployment.apps/web scaled" in kubectl("scale", "deployment/web", "--replicas=3")
    kubectl("rollout", "status", "deployment/web", "--timeout=60s")
    deploy = kubectl("get", "deployment", "web").splitlines()
    assert deploy[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert deploy[1].split()[1:4] == ["3/3", "3", "3"]

    assert "image updated" in kubectl("set", "image", "deployment/web", "web=python:3.12-slim")
    kubectl("rollout", "status", "deployment/web", "--timeout=60s")
    image = "jsonpath={.spec.template.spec.containers[0].image}"
    assert kubectl("get", "deployment", "web", "-o", image) == "python:3.12-slim"

    assert "rolled back" in kubectl("rollout", "undo", "deployment/web")
    kubectl("rollout", "status", "deployment/web", "--timeout=60s")
    assert kubectl("get", "deployment", "web", "-o", image) == "python:3.11-slim"
    history = kubectl("rollout", "history", "deployment/web")
    assert [ln.split()[0] for ln in history.splitlines() if ln[:1].isdigit()] == ["2", "3"]

    misspelled = tmp_path / "bad.yaml"
    misspelled.write_text(yaml.safe_dump_all(manifests("web")).replace("image:", "imagee:"))
    rejected = kubectl("apply", "-f", str(misspelled), check=False)
    assert (
        'strict decoding error: unknown field "spec.template.spec.containers[0].imagee"' in rejected
    )

    assert 'deployment.apps "web" deleted' in kubectl("delete", "-f", str(path))
    wait_for(
        "the pods to go", lambda: "No resources found" in kubectl("get", "pods", "-l", "app=web")
    )


def test_a_rolling_update_under_load_loses_no_request(cluster: Cluster) -> None:
    from kubernetes.utils import create_from_dict

    for manifest in manifests("steady"):
        create_from_dict(cluster.api, manifest)
    wait_for(
        "the first rollout",
        lambda: (
            (
                cluster.apps.read_namespaced_deployment(
                    "steady", "default"
                ).status.available_replicas
                or 0
            )
            == 2
        ),
    )
    url = service_url(cluster, "steady")
    results: Counter[str] = Counter()
    stop = threading.Event()

    def hammer() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                results[get(url).split()[0]] += 1
            except OSError as exc:
                results[f"error: {exc}"] += 1
            time.sleep(0.01)

    thread = threading.Thread(target=hammer)
    thread.start()
    time.sleep(0.5)
    set_version(cluster, "steady", "v2")

    def rolled() -> bool:
        d = cluster.apps.read_namespaced_deployment("steady", "default")
        return (
            d.status.updated_replicas == 2
            and d.status.available_replicas == 2
            and d.status.replicas == 2
        )

    wait_for("the rolling update", rolled, timeout=60)
    time.sleep(0.5)
    stop.set()
    thread.join()
    errors = {k: v for k, v in results.items() if k.startswith("error")}
    assert errors == {}, results
    assert results["v1"] > 0, results
    assert results["v2"] > 0, results


def test_a_rollout_that_never_gets_ready_exceeds_its_progress_deadline(cluster: Cluster) -> None:
    from kubernetes.utils import create_from_dict

    deployment, service = manifests("stuck", replicas=1)
    deployment["spec"]["progressDeadlineSeconds"] = 3
    create_from_dict(cluster.api, deployment)
    create_from_dict(cluster.api, service)
    wait_for(
        "the first rollout",
        lambda: (
            (
                cluster.apps.read_namespaced_deployment(
                    "stuck", "default"
                ).status.available_replicas
                or 0
            )
            == 1
        ),
    )
    broken = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": 9},
                                "periodSeconds": 1,
                            },
                        }
                    ]
                }
            }
        }
    }
    cluster.apps.patch_namespaced_deployment("stuck", "default", broken)

    def deadline_exceeded() -> bool:
        conditions = (
            cluster.apps.read_namespaced_deployment("stuck", "default").status.conditions or []
        )
        return any(
            c.type == "Progressing"
            and c.status == "False"
            and c.reason == "ProgressDeadlineExceeded"
            for c in conditions
        )

    wait_for("ProgressDeadlineExceeded", deadline_exceeded, timeout=30)
    # maxUnavailable 0: the old pod keeps serving while the new one never becomes ready.
    status = cluster.apps.read_namespaced_deployment("stuck", "default").status
    assert status.available_replicas == 1
    assert get(service_url(cluster, "stuck")).startswith("v1 stuck-")


def test_a_failing_liveness_probe_restarts_the_container(cluster: Cluster) -> None:
    from tests.cluster_fixtures import pod_manifest

    probe = {
        "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2}
    }
    cluster.core.create_namespaced_pod(
        "default",
        pod_manifest(
            "unhealthy", "import time; time.sleep(600)", restartPolicy="Always", container=probe
        ),
    )

    def restarted() -> bool:
        statuses = cluster.core.read_namespaced_pod(
            "unhealthy", "default"
        ).status.container_statuses
        return bool(statuses) and statuses[0].restart_count >= 1

    wait_for("a liveness restart", restarted, timeout=30)
    reasons = {e.reason for e in events_of(cluster, "unhealthy")}
    assert {"Unhealthy", "Killing"} <= reasons
    cluster.core.delete_namespaced_pod("unhealthy", "default", grace_period_seconds=0)


def test_recreate_paused_and_revision_history(cluster: Cluster) -> None:
    from kubernetes.utils import create_from_dict

    deployment, _ = manifests("recreate", replicas=2, type="Recreate")
    deployment["spec"]["revisionHistoryLimit"] = 1
    create_from_dict(cluster.api, deployment)

    def settled(version: str) -> bool:
        d = cluster.apps.read_namespaced_deployment("recreate", "default")
        pods = cluster.core.list_namespaced_pod("default", label_selector="app=recreate").items
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        versions = {e.value for p in live for e in p.spec.containers[0].env if e.name == "VERSION"}
        return d.status.available_replicas == 2 and versions == {version}

    wait_for("the first rollout", lambda: settled("v1"))
    seen_versions: set[frozenset[str]] = set()
    for version in ("v2", "v3"):
        set_version(cluster, "recreate", version)

        def observe(version: str = version) -> bool:
            # Recreate: old and new pods never run side by side.
            pods = cluster.core.list_namespaced_pod("default", label_selector="app=recreate").items
            running = [
                p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp
            ]
            seen_versions.add(
                frozenset(
                    e.value
                    for p in running
                    for e in p.spec.containers[0].env
                    if e.name == "VERSION"
                )
            )
            return settled(version)

        wait_for(f"the {version} rollout", observe, timeout=60)
    assert all(len(versions) <= 1 for versions in seen_versions), seen_versions
    # revisionHistoryLimit 1: the current ReplicaSet and one old one are kept.
    sets = cluster.apps.list_namespaced_replica_set("default", label_selector="app=recreate").items
    revisions = sorted(
        int(rs.metadata.annotations["deployment.kubernetes.io/revision"]) for rs in sets
    )
    assert revisions == [2, 3]

    cluster.apps.patch_namespaced_deployment("recreate", "default", {"spec": {"paused": True}})
    set_version(cluster, "recreate", "v4")
    time.sleep(2)
    assert settled("v3"), "a paused Deployment must not roll out"
    cluster.apps.patch_namespaced_deployment("recreate", "default", {"spec": {"paused": False}})
    wait_for("the resumed rollout", lambda: settled("v4"), timeout=60)


STORED_ONLY = """
apiVersion: v1
kind: Namespace
metadata: {name: ml}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: trainer, namespace: ml}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-runner, namespace: ml}
rules:
- apiGroups: [""]
  resources: [pods, pods/log]
  verbs: [create, get, list, watch, delete, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: trainer-runs-pods, namespace: ml}
subjects: [{kind: ServiceAccount, name: trainer, namespace: ml}]
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-runner}
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: gpus, namespace: ml}
spec: {hard: {requests.nvidia.com/gpu: "2"}}
---
apiVersion: v1
kind: LimitRange
metadata: {name: defaults, namespace: ml}
spec: {limits: [{type: Container, default: {memory: 512Mi}}]}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: serve, namespace: ml}
spec: {minAvailable: 1, selector: {matchLabels: {app: serve}}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: serve, namespace: ml}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: serve}
  minReplicas: 2
  maxReplicas: 5
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: serve-ingress, namespace: ml}
spec:
  podSelector: {matchLabels: {app: serve}}
  policyTypes: [Ingress]
  ingress: [{ports: [{port: 8080}]}]
"""


def test_manifests_of_kinds_it_only_stores_apply_cleanly(kubectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "platform.yaml"
    path.write_text(STORED_ONLY)
    out = kubectl("apply", "-f", str(path))
    for created in (
        "namespace/ml",
        "serviceaccount/trainer",
        "role.rbac.authorization.k8s.io/pod-runner",
        "rolebinding.rbac.authorization.k8s.io/trainer-runs-pods",
        "resourcequota/gpus",
        "limitrange/defaults",
        "poddisruptionbudget.policy/serve",
        "horizontalpodautoscaler.autoscaling/serve",
        "networkpolicy.networking.k8s.io/serve-ingress",
    ):
        assert f"{created} created" in out, out
    again = kubectl("apply", "-f", str(path))
    assert "created" not in again, again
    assert "unchanged" in again, again
    assert "pod-runner" in kubectl("get", "roles", "-n", "ml")
    assert 'namespace "ml" deleted' in kubectl("delete", "namespace", "ml")


def test_startup_probe_gates_readiness_and_services_are_in_the_environment(
    cluster: Cluster,
) -> None:
    from kubernetes.utils import create_from_dict

    from tests.cluster_fixtures import pod_manifest

    create_from_dict(cluster.api, manifests("envsvc", replicas=1)[1])  # a Service to be seen
    script = (
        "import os, pathlib, time\n"
        "print(os.environ['ENVSVC_SERVICE_HOST'], os.environ['ENVSVC_SERVICE_PORT'], flush=True)\n"
        "time.sleep(2)\n"
        "pathlib.Path(os.environ['HOME'], 'started').touch()\n"
        "time.sleep(600)\n"
    )
    probes = {
        "startupProbe": {
            "exec": {"command": ["sh", "-c", 'test -f "$HOME/started"']},
            "periodSeconds": 1,
            "failureThreshold": 10,
        },
        "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
    }
    cluster.core.create_namespaced_pod(
        "default", pod_manifest("slow-start", script, restartPolicy="Always", container=probes)
    )

    def status():  # type: ignore[no-untyped-def]
        statuses = cluster.core.read_namespaced_pod(
            "slow-start", "default"
        ).status.container_statuses
        return statuses[0] if statuses else None

    wait_for("the container to run", lambda: status() is not None and status().state.running)
    assert (status().started, status().ready) == (False, False)
    wait_for("startup to succeed and readiness to follow", lambda: status().ready, timeout=20)
    assert status().started is True
    service = cluster.core.read_namespaced_service("envsvc", "default")
    lines = cluster.core.read_namespaced_pod_log("slow-start", "default", _preload_content=False)
    assert lines.data.decode().split("\n")[0] == f"{service.spec.cluster_ip} 80"
    cluster.core.delete_namespaced_pod("slow-start", "default", grace_period_seconds=0)


def test_server_side_apply_twice_is_a_no_op(cluster: Cluster, kubectl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Helm 4 applies server-side: re-applying the same manifest must not roll a Deployment."""
    path = tmp_path / "ssa.yaml"
    path.write_text(yaml.safe_dump_all(manifests("ssa")))
    assert "deployment.apps/ssa serverside-applied" in kubectl(
        "apply", "--server-side", "-f", str(path)
    )
    kubectl("rollout", "status", "deployment/ssa", "--timeout=60s")
    before = cluster.apps.read_namespaced_deployment("ssa", "default")

    assert "deployment.apps/ssa serverside-applied" in kubectl(
        "apply", "--server-side", "-f", str(path)
    )
    after = cluster.apps.read_namespaced_deployment("ssa", "default")
    assert after.metadata.generation == before.metadata.generation
    assert after.metadata.resource_version == before.metadata.resource_version
    sets = cluster.apps.list_namespaced_replica_set("default", label_selector="app=ssa").items
    assert len(sets) == 1
    container = after.spec.template.spec.containers[0]
    assert container.image_pull_policy == "IfNotPresent"  # the default survived the apply


def test_evictions_respect_the_disruption_budget(cluster: Cluster) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    from kubernetes.utils import create_from_dict

    for manifest in manifests("guarded"):
        create_from_dict(cluster.api, manifest)
    policy = client.PolicyV1Api(cluster.api)
    budget = {
        "metadata": {"name": "guarded"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "guarded"}}},
    }
    policy.create_namespaced_pod_disruption_budget("default", budget)

    def allowed() -> Any:
        status = policy.read_namespaced_pod_disruption_budget("guarded", "default").status
        return status if status and status.current_healthy == 2 else None

    status = wait_for("the budget's status", allowed)
    assert (status.expected_pods, status.desired_healthy, status.disruptions_allowed) == (2, 2, 0)
    pods = cluster.core.list_namespaced_pod("default", label_selector="app=guarded").items
    eviction = {"metadata": {"name": pods[0].metadata.name, "namespace": "default"}}
    with pytest.raises(ApiException) as refused:
        cluster.core.create_namespaced_pod_eviction(pods[0].metadata.name, "default", eviction)
    assert refused.value.status == 429
    body = json.loads(refused.value.body)
    assert body["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert body["details"]["causes"][0]["message"] == (
        "The disruption budget guarded needs 2 healthy pods and has 2 currently"
    )

    policy.patch_namespaced_pod_disruption_budget(
        "guarded", "default", {"spec": {"minAvailable": 1}}
    )
    cluster.core.create_namespaced_pod_eviction(pods[0].metadata.name, "default", eviction)
    second = {"metadata": {"name": pods[1].metadata.name, "namespace": "default"}}
    with pytest.raises(ApiException) as again:
        cluster.core.create_namespaced_pod_eviction(pods[1].metadata.name, "default", second)
    assert again.value.status == 429
    cluster.apps.delete_namespaced_deployment("guarded", "default")


def test_foreground_deletion_removes_the_owner_last(cluster: Cluster) -> None:
    from kubernetes.client.rest import ApiException
    from kubernetes.utils import create_from_dict

    create_from_dict(cluster.api, manifests("fg")[0])
    wait_for(
        "two pods",
        lambda: (
            len(cluster.core.list_namespaced_pod("default", label_selector="app=fg").items) == 2
        ),
    )
    cluster.apps.delete_namespaced_deployment("fg", "default", propagation_policy="Foreground")
    owner = cluster.apps.read_namespaced_deployment("fg", "default")
    assert owner.metadata.deletion_timestamp is not None
    assert "foregroundDeletion" in owner.metadata.finalizers

    def owner_gone() -> bool:
        try:
            cluster.apps.read_namespaced_deployment("fg", "default")
        except ApiException as exc:
            return exc.status == 404
        # While the owner stands, its pods may still be there; once it is gone, none are.
        return False

    wait_for("the Deployment to go", owner_gone, timeout=60)
    assert not cluster.core.list_namespaced_pod("default", label_selector="app=fg").items
    assert not cluster.apps.list_namespaced_replica_set("default", label_selector="app=fg").items


def test_kubectl_get_watch_keeps_its_columns(cluster: Cluster, kubectl) -> None:  # type: ignore[no-untyped-def]
    from kubernetes.utils import create_from_dict

    assert KUBECTL
    watcher = subprocess.Popen(
        [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), "get", "deployments", "-w"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        create_from_dict(cluster.api, manifests("watched", replicas=1)[0])
        kubectl("rollout", "status", "deployment/watched", "--timeout=60s")
    finally:
        time.sleep(0.5)
        watcher.terminate()
        out, err = watcher.communicate(timeout=10)
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], out + err
    rows = [line for line in lines[1:] if line[0] == "watched"]
    assert rows, out
    assert rows[-1][1:4] == ["1/1", "1", "1"], out
    cluster.apps.delete_namespaced_deployment("watched", "default")
