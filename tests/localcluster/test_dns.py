"""Cluster DNS: pods find Services and a headless Service's pods by their Kubernetes names.

What a rendezvous needs (torchrun's workers find rank 0 as ``<job>-0.<service>``): an Indexed
Job's pods get stable hostnames under a headless Service, resolvable from the other pods, and a
Service's name resolves to its cluster IP. The lookups run in the pods, through the C library's
resolver (``socket.getaddrinfo``), as any client's would.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster_fixtures import Cluster, kubectl, pod_manifest, wait_for

LOOKUP = """
import json, socket, sys, time
names = sys.argv[1:]
found = {}
deadline = time.monotonic() + 20
while time.monotonic() < deadline and len(found) < len(names):
    for name in names:
        try:
            found[name] = socket.getaddrinfo(name, 80, socket.AF_INET)[0][4][0]
        except socket.gaierror:
            pass
    time.sleep(0.2)
try:  # the hosts file is the namespace's: no container may change it
    open("/etc/hosts", "a").close()
    found["writable"] = "yes"
except OSError:
    pass
print(json.dumps(found), flush=True)
"""


def lookups(cluster: Cluster, name: str, *names: str) -> dict[str, str]:
    manifest = pod_manifest(name, LOOKUP, container={"args": list(names)})
    manifest["spec"]["containers"][0]["command"] = ["python", "-c", LOOKUP]
    cluster.core.create_namespaced_pod("default", manifest)

    def finished() -> bool:
        return cluster.core.read_namespaced_pod(name, "default").status.phase == "Succeeded"

    wait_for(f"pod {name}", finished, timeout=60)
    return log_json(cluster, name)


def log_json(cluster: Cluster, name: str) -> dict[str, str]:
    # Unparsed: the client would turn a JSON log line into a Python repr.
    raw = cluster.core.read_namespaced_pod_log(name, "default", _preload_content=False)
    found: dict[str, str] = json.loads(raw.data)
    return found


@pytest.fixture(scope="module")
def rendezvous(cluster: Cluster) -> dict[str, str]:
    """A headless Service ``rdzv`` and an Indexed Job of 2 long-running workers under it."""
    cluster.core.create_namespaced_service("default", {
        "metadata": {"name": "rdzv"},
        "spec": {"clusterIP": "None", "selector": {"job-name": "workers"},
                 "publishNotReadyAddresses": True, "ports": [{"port": 29500}]},
    })  # fmt: skip
    cluster.batch.create_namespaced_job("default", {
        "metadata": {"name": "workers"},
        "spec": {
            "completionMode": "Indexed", "completions": 2, "parallelism": 2,
            "template": {"spec": {
                "subdomain": "rdzv", "restartPolicy": "Never",
                "containers": [{"name": "w", "image": "python:3.11-slim",
                                "command": ["python", "-c", "import time; time.sleep(120)"]}],
            }},
        },
    })  # fmt: skip

    def ips() -> dict[str, str] | None:
        pods = cluster.core.list_namespaced_pod("default", label_selector="job-name=workers").items
        running = {p.spec.hostname: p.status.pod_ip for p in pods if p.status.phase == "Running"}
        return running if len(running) == 2 else None

    found: dict[str, str] = wait_for("the workers to run", ips, timeout=60)
    return found


def test_an_indexed_jobs_pods_resolve_by_hostname_under_their_headless_service(
    cluster: Cluster, rendezvous: dict[str, str]
) -> None:
    assert set(rendezvous) == {"workers-0", "workers-1"}
    fqdn = "workers-0.rdzv.default.svc.cluster.local"
    found = lookups(cluster, "dns-pods", fqdn, "workers-1.rdzv", "rdzv.default.svc.cluster.local")
    assert found[fqdn] == rendezvous["workers-0"]
    assert found["workers-1.rdzv"] == rendezvous["workers-1"]
    assert found["rdzv.default.svc.cluster.local"] in rendezvous.values()
    assert "writable" not in found


def test_a_service_name_resolves_to_its_cluster_ip(cluster: Cluster) -> None:
    kubectl(cluster, "create", "service", "clusterip", "named", "--tcp=80:8080")
    ip = cluster.core.read_namespaced_service("named", "default").spec.cluster_ip
    found = lookups(cluster, "dns-svc", "named", "named.default", "named.default.svc.cluster.local")
    assert found["named"] == found["named.default"] == ip
    assert found["named.default.svc.cluster.local"] == ip


def test_a_name_that_appears_later_resolves_without_a_restart(cluster: Cluster) -> None:
    """The hosts file is rewritten in place, and read on every lookup."""
    manifest = pod_manifest("dns-late", LOOKUP, container={"args": ["late.default.svc"]})
    cluster.core.create_namespaced_pod("default", manifest)
    wait_for("the pod to run", lambda: cluster.core.read_namespaced_pod(
        "dns-late", "default").status.phase == "Running")  # fmt: skip
    time.sleep(1)
    kubectl(cluster, "create", "service", "clusterip", "late", "--tcp=80:8080")
    ip = cluster.core.read_namespaced_service("late", "default").spec.cluster_ip

    def done() -> bool:
        return cluster.core.read_namespaced_pod("dns-late", "default").status.phase == "Succeeded"

    wait_for("the lookup", done, timeout=60)
    found = log_json(cluster, "dns-late")
    assert found == {"late.default.svc": ip}
