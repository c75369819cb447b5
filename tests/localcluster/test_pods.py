"""Pods as processes: phases, exit codes, logs, env, image pulls, restarts, deletion, scheduling."""

from __future__ import annotations

import base64
import contextlib
import os
import random
import signal
import time
import uuid
from pathlib import Path

from kubernetes.client.rest import ApiException

from tests.cluster_fixtures import Cluster, events_of, pod_manifest, start_cluster, wait_for


def processes_with(text: str) -> list[int]:
    """Live processes of this machine whose command line contains ``text`` (not this one)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        pid = int(cmdline.parent.name)
        with contextlib.suppress(OSError):
            if pid != os.getpid() and text.encode() in cmdline.read_bytes() and alive(pid):
                found.append(pid)
    return found


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for an unrelated parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def log_of(cluster: Cluster, name: str, **options: object) -> str:
    # Unread (_preload_content=False), as KubernetesPodOperator reads it: this client version
    # turns a preloaded text body into the repr of its bytes.
    response = cluster.core.read_namespaced_pod_log(
        name, "default", _preload_content=False, **options
    )
    return response.data.decode()


def phase(cluster: Cluster, name: str) -> str:
    return cluster.core.read_namespaced_pod(name, "default").status.phase


def finished(cluster: Cluster, name: str) -> str:
    return wait_for(
        f"pod {name} to finish",
        lambda: phase(cluster, name) if phase(cluster, name) in ("Succeeded", "Failed") else None,
    )


def test_a_pod_runs_to_success_with_its_own_ip_and_logs(cluster: Cluster) -> None:
    script = "import os; print('ip', os.environ['MY_IP']); print('ns', os.environ['MY_NS'])"
    env = [
        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    cluster.core.create_namespaced_pod(
        "default", pod_manifest("ok", script, container={"env": env})
    )
    assert finished(cluster, "ok") == "Succeeded"
    pod = cluster.core.read_namespaced_pod("ok", "default")
    assert pod.status.pod_ip.startswith("127.")
    assert pod.status.pod_ip != "127.0.0.1"
    state = pod.status.container_statuses[0].state.terminated
    assert (state.exit_code, state.reason) == (0, "Completed")
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["PodScheduled"] == "True"
    log = log_of(cluster, "ok")
    assert log == f"ip {pod.status.pod_ip}\nns default\n"
    stamped = log_of(cluster, "ok", timestamps=True, tail_lines=1)
    stamp, _, text = stamped.partition(" ")
    assert text == "ns default\n"
    assert stamp.endswith("Z")
    assert "T" in stamp


def test_resource_fields_are_rounded_up_as_the_kubelet_gives_them(cluster: Cluster) -> None:
    """The downward API's ``resourceFieldRef``: a request or limit in whole ``divisor``s,
    rounded up; a limit not set is the node's allocatable (what the serving Deployment's worker
    count is read from)."""
    fields = {"CPU": {"resource": "requests.cpu"},
              "MILLICPU": {"resource": "requests.cpu", "divisor": "1m"},
              "MEMORY_MI": {"resource": "limits.memory", "divisor": "1Mi"},
              "CPU_LIMIT": {"resource": "limits.cpu"}}  # fmt: skip
    env = [{"name": n, "valueFrom": {"resourceFieldRef": r}} for n, r in fields.items()]
    resources = {"requests": {"cpu": "1250m", "memory": "64Mi"}, "limits": {"memory": "100M"}}
    script = (
        "import os; print(*(os.environ[n] for n in ['CPU', 'MILLICPU', 'MEMORY_MI', 'CPU_LIMIT']))"
    )
    cluster.core.create_namespaced_pod(
        "default", pod_manifest("sized", script, container={"env": env, "resources": resources})
    )
    assert finished(cluster, "sized") == "Succeeded"
    node = cluster.core.read_node(
        cluster.core.read_namespaced_pod("sized", "default").spec.node_name
    )
    allocatable = node.status.allocatable["cpu"]
    # 1.25 CPUs -> 2; 1250 millicores; 100 MB is 95.37 MiB -> 96; no CPU limit: the node's
    assert log_of(cluster, "sized").split() == ["2", "1250", "96", allocatable]


def test_a_failing_container_fails_the_pod_with_its_exit_code(cluster: Cluster) -> None:
    cluster.core.create_namespaced_pod("default", pod_manifest("bad", "import sys; sys.exit(3)"))
    assert finished(cluster, "bad") == "Failed"
    state = cluster.core.read_namespaced_pod("bad", "default").status.container_statuses[0].state
    assert (state.terminated.exit_code, state.terminated.reason) == (3, "Error")


def test_env_from_secrets_and_configmaps(cluster: Cluster) -> None:
    cluster.core.create_namespaced_secret(
        "default",
        {"metadata": {"name": "creds"}, "data": {"token": base64.b64encode(b"s3cret").decode()}},
    )
    cluster.core.create_namespaced_config_map(
        "default", {"metadata": {"name": "settings"}, "data": {"MODE": "fast", "LEVEL": "2"}}
    )
    container = {
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "GREETING", "value": "mode=$(CFG_MODE)"},
        ],
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
    }
    script = (
        "import os; print(os.environ['TOKEN'], os.environ['GREETING'], os.environ['CFG_LEVEL'])"
    )
    cluster.core.create_namespaced_pod("default", pod_manifest("envs", script, container=container))
    assert finished(cluster, "envs") == "Succeeded"
    assert log_of(cluster, "envs") == "s3cret mode=fast 2\n"


def test_an_unknown_image_fails_like_a_pull(cluster: Cluster) -> None:
    cluster.core.create_namespaced_pod(
        "default", pod_manifest("pull", "pass", container={"image": "example.com/nope:1.0"})
    )

    def waiting_reason() -> str | None:
        statuses = cluster.core.read_namespaced_pod("pull", "default").status.container_statuses
        reason = (
            statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting else None
        )
        return reason if reason == "ImagePullBackOff" else None

    wait_for("ImagePullBackOff", waiting_reason)
    assert phase(cluster, "pull") == "Pending"
    messages = [e.message for e in events_of(cluster, "pull")]
    assert any('Failed to pull image "example.com/nope:1.0"' in m for m in messages), messages
    assert any(m == "Error: ErrImagePull" for m in messages), messages
    cluster.core.delete_namespaced_pod("pull", "default")


def test_restart_policy_on_failure_backs_off_and_restarts(cluster: Cluster) -> None:
    script = "import sys; print('attempt'); sys.exit(1)"
    cluster.core.create_namespaced_pod(
        "default", pod_manifest("crash", script, restartPolicy="OnFailure")
    )

    def restarted_twice() -> bool:
        status = cluster.core.read_namespaced_pod("crash", "default").status.container_statuses
        return bool(status) and status[0].restart_count >= 2

    wait_for("two restarts", restarted_twice)
    status = cluster.core.read_namespaced_pod("crash", "default").status.container_statuses[0]
    assert status.last_state.terminated.exit_code == 1
    previous = log_of(cluster, "crash", previous=True)
    assert previous == "attempt\n"
    cluster.core.delete_namespaced_pod("crash", "default", grace_period_seconds=0)


def test_deleting_a_running_pod_stops_its_process_group(cluster: Cluster, tmp_path: Path) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    ready = tmp_path / "ready"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(\n"
        f"    [sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}])\n"
        f"open({str(ready)!r}, 'w').write('ok')\n"
        "time.sleep(600)\n"
    )  # fmt: skip
    cluster.core.create_namespaced_pod("default", pod_manifest("long", script))
    wait_for("the pod's processes", ready.exists)
    # Seen from the machine: the container's command, its child, and the runtime around them.
    assert len(processes_with(marker)) >= 2
    cluster.core.delete_namespaced_pod("long", "default", grace_period_seconds=2)

    def gone() -> bool:
        try:
            cluster.core.read_namespaced_pod("long", "default")
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for("the pod object to go", gone, timeout=15)
    assert processes_with(marker) == []


def test_a_gpu_pod_waits_on_a_cluster_without_gpus(cluster: Cluster) -> None:
    gpu = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}
    cluster.core.create_namespaced_pod(
        "default", pod_manifest("gpu", "print('trained')", container=gpu)
    )

    def unschedulable() -> bool:
        conditions = cluster.core.read_namespaced_pod("gpu", "default").status.conditions or []
        return any(
            c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
            for c in conditions
        )

    wait_for("PodScheduled=False", unschedulable)
    failed = events_of(cluster, "gpu", "FailedScheduling")
    assert failed
    assert "0/1 nodes are available: 1 Insufficient nvidia.com/gpu." in failed[0].message
    assert phase(cluster, "gpu") == "Pending"
    cluster.core.delete_namespaced_pod("gpu", "default")


def test_a_gpu_pod_runs_on_a_declared_gpu_node(tmp_path: Path) -> None:
    gpu_cluster = start_cluster(
        tmp_path,
        {
            "restartBackoffSeconds": 0.5,
            "nodes": [
                {"name": "cpu-1", "capacity": {"cpu": "2", "memory": "4Gi"}},
                {
                    "name": "gpu-1",
                    "labels": {"pool": "gpu"},
                    "taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}],
                    "capacity": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
                },
            ],
        },
    )
    try:
        spec = {
            "container": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "nodeSelector": {"pool": "gpu"},
        }
        gpu_cluster.core.create_namespaced_pod(
            "default", pod_manifest("gpu", "print('trained')", **spec)
        )
        assert finished(gpu_cluster, "gpu") == "Succeeded"
        assert gpu_cluster.core.read_namespaced_pod("gpu", "default").spec.node_name == "gpu-1"
        # Without the toleration, the tainted GPU node is off limits, and the CPU node has none.
        spec.pop("tolerations")
        gpu_cluster.core.create_namespaced_pod(
            "default", pod_manifest("untolerated", "pass", **spec)
        )
        wait_for(
            "the scheduler to give up on it",
            lambda: events_of(gpu_cluster, "untolerated", "FailedScheduling"),
        )
    finally:
        gpu_cluster.api.close()
        assert gpu_cluster.server.stop() == 0


def test_sigterm_stops_the_cluster_and_every_pod_process(tmp_path: Path) -> None:
    own = start_cluster(tmp_path, {"restartBackoffSeconds": 0.5})
    marker = f"marker-{uuid.uuid4().hex}"
    ready = tmp_path / "ready"
    script = f"import time; open({str(ready)!r}, 'w').write({marker!r}); time.sleep(600)"
    own.core.create_namespaced_pod("default", pod_manifest("sleeper", script))
    wait_for("the pod's process", ready.exists)
    assert processes_with(marker)
    own.api.close()
    assert own.server.proc is not None
    own.server.proc.send_signal(signal.SIGTERM)
    assert own.server.proc.wait(30) == 0
    assert processes_with(marker) == []


def test_pods_deleted_while_they_start_leave_no_process(cluster: Cluster) -> None:
    """Hundreds of pods deleted at every moment of their start: none leaves a process behind."""
    marker = f"marker-{uuid.uuid4().hex}"
    script = f"import time; time.sleep(600)  # {marker}"
    rng = random.Random(7)  # noqa: S311 - a repeatable schedule, not a secret
    for batch in range(10):
        names = [f"churn-{batch}-{i}" for i in range(20)]
        for name in names:
            cluster.core.create_namespaced_pod("default", pod_manifest(name, script))
            time.sleep(rng.uniform(0, 0.02))
            if rng.random() < 0.5:  # some at once, the rest once the batch is in
                cluster.core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        time.sleep(rng.uniform(0, 0.5))
        for name in names:
            with contextlib.suppress(ApiException):
                cluster.core.delete_namespaced_pod(name, "default", grace_period_seconds=0)

    def all_gone() -> bool:
        pods = cluster.core.list_namespaced_pod("default").items
        return not [p for p in pods if p.metadata.name.startswith("churn-")]

    wait_for("every pod object to go", all_gone, timeout=120)
    wait_for("every process to go", lambda: not processes_with(marker), timeout=30)
