"""Volumes at their mountPaths, init containers, memory limits, and injected faults."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.faults import FaultClient
from tests.cluster_fixtures import Cluster, events_of, pod_manifest, wait_for
from tests.localcluster.test_pods import finished, log_of, phase

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="volume bind mounts need root (CAP_SYS_ADMIN), see ADR 0004"
)


@pytest.fixture
def mount_point() -> Iterator[str]:
    """A host path for a pod to mount over; the empty folder the launcher creates is removed."""
    path = Path(tempfile.gettempdir()) / f"localcluster-mount-{uuid.uuid4().hex[:8]}"
    yield str(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def faults(cluster: Cluster) -> FaultClient:
    return cluster.access.faults()


@needs_root
def test_volumes_appear_at_their_mount_paths(cluster: Cluster, mount_point: str) -> None:
    mount = mount_point
    cluster.core.create_namespaced_config_map(
        "default",
        {"metadata": {"name": "app-config"}, "data": {"settings.ini": "[app]\nmode=fast\n"}},
    )
    cluster.core.create_namespaced_secret(
        "default",
        {
            "metadata": {"name": "app-secret"},
            "data": {"token": base64.b64encode(b"s3cret").decode()},
        },
    )
    cluster.core.create_namespaced_persistent_volume_claim(
        "default",
        {
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    volumes = [
        {"name": "config", "configMap": {"name": "app-config"}},
        {"name": "secret", "secret": {"secretName": "app-secret"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
    ]
    mounts = [
        {"name": n, "mountPath": f"{mount}/{n}"} for n in ("config", "secret", "scratch", "data")
    ]
    script = (
        f"import os\nm = {mount!r}\n"
        "print(open(m + '/config/settings.ini').read().split()[1])\n"
        "print(open(m + '/secret/token').read())\n"
        "open(m + '/scratch/x', 'w').write('tmp')\n"
        "n = len(os.listdir(m + '/data'))\n"
        "open(m + f'/data/run-{n}', 'w').write('kept')\n"
        "print('runs', n + 1)\n"
        "try:\n    open(m + '/secret/new', 'w')\n"
        "except OSError as e:\n    print('read-only', e.errno)\n"
    )
    for name in ("vol-1", "vol-2"):
        cluster.core.create_namespaced_pod(
            "default",
            pod_manifest(name, script, volumes=volumes, container={"volumeMounts": mounts}),
        )
        assert finished(cluster, name) == "Succeeded", log_of(cluster, name)
    assert log_of(cluster, "vol-1").split("\n")[:3] == ["mode=fast", "s3cret", "runs 1"]
    # The claim's folder outlives the pod; the mounts stayed private to the pods.
    assert "runs 2" in log_of(cluster, "vol-2")
    assert "read-only 30" in log_of(cluster, "vol-2")  # EROFS
    claim = cluster.core.read_namespaced_persistent_volume_claim("data", "default")
    assert claim.status.phase == "Bound"


@needs_root
def test_items_modes_and_optional_keys_alike_in_a_volume_and_a_projected_one(
    cluster: Cluster, mount_point: str
) -> None:
    """Items pick keys and paths, an item's mode beats the default, and an optional reference
    to a key that is not there is skipped: the same for a configMap or secret volume as for
    the same source of a projected volume (one kubelet code path for both)."""
    cluster.core.create_namespaced_config_map(
        "default", {"metadata": {"name": "keyed"}, "data": {"a": "alpha", "b": "beta"}}
    )
    cluster.core.create_namespaced_secret(
        "default", {"metadata": {"name": "keyed"}, "data": {"s": base64.b64encode(b"sig").decode()}}
    )
    items = [{"key": "a", "path": "sub/a.txt", "mode": 0o400}, {"key": "b", "path": "b.txt"},
             {"key": "absent", "path": "absent.txt"}]  # fmt: skip
    config = {"name": "keyed", "items": items, "optional": True}
    secret_items = [{"key": "s", "path": "s.txt"}]
    sealed = {"secretName": "keyed", "items": secret_items, "defaultMode": 0o440}
    sources = [{"configMap": config}, {"secret": {"name": "keyed", "items": secret_items}}]
    volumes = [
        {"name": "plain", "configMap": {**config, "defaultMode": 0o440}},
        {"name": "sealed", "secret": sealed},
        {"name": "proj", "projected": {"defaultMode": 0o440, "sources": sources}},
    ]
    mounts = [{"name": n, "mountPath": f"{mount_point}/{n}"} for n in ("plain", "sealed", "proj")]
    script = (
        f"import os\nm = {mount_point!r}\n"
        "for v in ('plain', 'sealed', 'proj'):\n"
        "    for root, _, names in sorted(os.walk(m + '/' + v)):\n"
        "        for n in sorted(names):\n"
        "            p = os.path.join(root, n)\n"
        "            print(v, os.path.relpath(p, m + '/' + v), oct(os.stat(p).st_mode & 0o777),"
        " open(p).read())\n"
    )
    cluster.core.create_namespaced_pod(
        "default",
        pod_manifest("keyed", script, volumes=volumes, container={"volumeMounts": mounts}),
    )
    assert finished(cluster, "keyed") == "Succeeded", log_of(cluster, "keyed")
    lines = set(log_of(cluster, "keyed").splitlines())
    for volume in ("plain", "proj"):
        assert {f"{volume} sub/a.txt 0o400 alpha", f"{volume} b.txt 0o440 beta"} <= lines
        assert not any(line.startswith(f"{volume} absent") for line in lines)
    assert {"sealed s.txt 0o440 sig", "proj s.txt 0o440 sig"} <= lines
    # Not optional: the missing key is a refused pod start, named.
    required = {"name": "missing", "configMap": {"name": "keyed", "items": items}}
    cluster.core.create_namespaced_pod(
        "default",
        pod_manifest("keyed-required", "print('started')", volumes=[required],
                     container={"volumeMounts": [{"name": "missing",
                                                  "mountPath": f"{mount_point}/missing"}]}),
    )  # fmt: skip
    wait_for("the missing key's event", lambda: [e for e in events_of(cluster, "keyed-required")
                                                 if "configMap keyed has no key absent"
                                                 in (e.message or "")])  # fmt: skip
    status = cluster.core.read_namespaced_pod("keyed-required", "default").status
    assert status.container_statuses[0].state.waiting.reason == "CreateContainerConfigError"
    cluster.core.delete_namespaced_pod("keyed-required", "default", grace_period_seconds=0)


@needs_root
def test_a_secrets_string_data_is_merged_into_its_data_on_write(cluster: Cluster) -> None:
    """stringData is write-only, as on a real API server: stored as base64 data (its keys win
    over data's), so a reader of the object and a pod's environment see one map."""
    cluster.core.create_namespaced_secret("default", {
        "metadata": {"name": "string-data"},
        "data": {"kept": base64.b64encode(b"from-data").decode(),
                 "both": base64.b64encode(b"old").decode()},
        "stringData": {"both": "new", "added": "plain text"},
    })  # fmt: skip
    stored = cluster.core.read_namespaced_secret("string-data", "default")
    assert stored.string_data is None
    assert stored.type == "Opaque"
    decoded = {k: base64.b64decode(v).decode() for k, v in stored.data.items()}
    assert decoded == {"kept": "from-data", "both": "new", "added": "plain text"}
    script = "import os; print(os.environ['both'], os.environ['added'], sep='|')"
    pod = pod_manifest("string-data", script,
                       container={"envFrom": [{"secretRef": {"name": "string-data"}}]})  # fmt: skip
    cluster.core.create_namespaced_pod("default", pod)
    assert finished(cluster, "string-data") == "Succeeded"
    assert log_of(cluster, "string-data").strip() == "new|plain text"


def test_init_containers_run_first_and_in_order(cluster: Cluster, mount_point: str) -> None:
    volumes = [{"name": "shared", "emptyDir": {}}]
    mount = [{"name": "shared", "mountPath": mount_point}]
    path = mount[0]["mountPath"]
    init = [
        {
            "name": f"init-{i}",
            "image": "python:3.11-slim",
            "volumeMounts": mount,
            "command": ["python", "-c", f"open('{path}/order', 'a').write('{i}')"],
        }
        for i in (1, 2)
    ]
    cluster.core.create_namespaced_pod(
        "default",
        pod_manifest(
            "inits",
            f"print(open('{path}/order').read())",
            volumes=volumes,
            initContainers=init,
            container={"volumeMounts": mount},
        ),
    )
    assert finished(cluster, "inits") == "Succeeded"
    assert log_of(cluster, "inits") == "12\n"
    statuses = cluster.core.read_namespaced_pod("inits", "default").status.init_container_statuses
    assert [s.state.terminated.reason for s in statuses] == ["Completed", "Completed"]


def test_exceeding_the_memory_limit_is_oomkilled(cluster: Cluster) -> None:
    script = (
        "import time\nblocks = []\n"
        "while True:\n    blocks.append(bytearray(20_000_000))\n    time.sleep(0.05)\n"
    )
    limits = {"resources": {"limits": {"memory": "120Mi"}}}
    cluster.core.create_namespaced_pod("default", pod_manifest("hog", script, container=limits))
    assert finished(cluster, "hog") == "Failed"
    state = cluster.core.read_namespaced_pod("hog", "default").status.container_statuses[0].state
    assert (state.terminated.reason, state.terminated.exit_code) == ("OOMKilled", 137)


def test_kill_container_fault_restarts_it(cluster: Cluster, faults: FaultClient) -> None:
    cluster.core.create_namespaced_pod(
        "default",
        pod_manifest(
            "victim",
            "import time; print('up', flush=True); time.sleep(600)",
            restartPolicy="Always",
        ),
    )
    wait_for("the container to run", lambda: phase(cluster, "victim") == "Running")
    faults.kill_container("default", "victim")

    def restarted() -> bool:
        status = cluster.core.read_namespaced_pod("victim", "default").status.container_statuses[0]
        return status.restart_count == 1 and status.state.running is not None

    wait_for("the restart", restarted)
    status = cluster.core.read_namespaced_pod("victim", "default").status.container_statuses[0]
    assert status.last_state.terminated.exit_code == 137
    cluster.core.delete_namespaced_pod("victim", "default", grace_period_seconds=0)


def test_evicted_pods_fail_and_their_replicaset_replaces_them(
    cluster: Cluster, faults: FaultClient
) -> None:
    from kubernetes.utils import create_from_dict

    labels = {"app": "evictee"}
    create_from_dict(
        cluster.api,
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "evictee"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": "python:3.11-slim",
                                "command": ["python", "-c", "import time; time.sleep(600)"],
                            }
                        ]
                    },
                },
            },
        },
    )

    def running_pods() -> list[str]:
        pods = cluster.core.list_namespaced_pod("default", label_selector="app=evictee").items
        return [p.metadata.name for p in pods if p.status.phase == "Running"]

    first = wait_for("the first pod", running_pods)[0]
    faults.evict("default", first)
    evicted = cluster.core.read_namespaced_pod(first, "default")
    assert (evicted.status.phase, evicted.status.reason) == ("Failed", "Evicted")
    wait_for("a replacement", lambda: [n for n in running_pods() if n != first])


def test_image_pull_and_node_faults(cluster: Cluster, faults: FaultClient) -> None:
    faults.fail_image_pulls("python:3.11-*")
    try:
        cluster.core.create_namespaced_pod("default", pod_manifest("no-pull", "pass"))
        wait_for(
            "ErrImagePull",
            lambda: any(e.message == "Error: ErrImagePull" for e in events_of(cluster, "no-pull")),
        )
    finally:
        faults.fail_image_pulls("python:3.11-*", fail=False)
    assert finished(cluster, "no-pull") == "Succeeded"  # pulls work again: it starts

    node = cluster.core.list_node().items[0].metadata.name
    faults.node_ready(node, ready=False)
    try:
        cluster.core.create_namespaced_pod("default", pod_manifest("no-node", "pass"))
        wait_for(
            "FailedScheduling",
            lambda: [
                e
                for e in events_of(cluster, "no-node", "FailedScheduling")
                if "not ready" in e.message
            ],
        )
    finally:
        faults.node_ready(node, ready=True)
    assert finished(cluster, "no-node") == "Succeeded"


@pytest.mark.parametrize(("mode", "status"), [("429", 429), ("500", 500)])
def test_api_error_faults_hit_the_given_share(
    cluster: Cluster, faults: FaultClient, mode: str, status: int
) -> None:
    # A bare HTTP client: the kubernetes client would retry 429s after their Retry-After.
    access = cluster.access
    faults.api_errors(0.5, mode, seed=7)
    codes, retry_after = [], set()
    try:
        for _ in range(40):
            try:
                with access.open("/api/v1/namespaces/default/configmaps", 5) as response:
                    codes.append(response.status)
            except urllib.error.HTTPError as exc:
                codes.append(exc.code)
                retry_after.add(exc.headers.get("Retry-After"))
    finally:
        faults.api_errors(0)
    assert set(codes) == {200, status}
    assert retry_after == ({"1"} if status == 429 else {None})
    assert 10 <= codes.count(status) <= 30


@needs_root
def test_a_volume_over_the_folder_the_cluster_runs_from_hides_nothing_it_needs(
    cluster: Cluster,
) -> None:
    """An emptyDir at /tmp is common; a checkout (and its venv) may live in /tmp too.

    The volume is mounted at the top folder of this repository's path (/tmp in a clone made
    there): the container still starts from its interpreter and code, and sees the volume.
    """
    top = "/" + Path(__file__).resolve().parts[1]
    script = (
        "import os, sys\n"
        f"open(os.path.join({top!r}, 'written-in-volume'), 'w').write('x')\n"
        f"print(sorted(os.listdir({top!r}))[:50].count('written-in-volume'), flush=True)\n"
    )
    volumes = [{"name": "scratch", "emptyDir": {}}]
    cluster.core.create_namespaced_pod(
        "default",
        pod_manifest(
            "over-top",
            script,
            volumes=volumes,
            container={"volumeMounts": [{"name": "scratch", "mountPath": top}]},
        ),
    )
    assert finished(cluster, "over-top") == "Succeeded", log_of(cluster, "over-top")
    assert log_of(cluster, "over-top") == "1\n"
    assert not Path(top, "written-in-volume").exists()  # it went to the volume, not the machine


@needs_root
def test_a_folder_the_environment_names_stays_visible_under_a_volume(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A dataset store given as a local path under /tmp (a test's or a clone's), or a raw feed
    given as a file:// URI, stays visible to a pod that mounts an emptyDir at /tmp, the way the
    pipeline's pods do."""
    store, feed = tmp_path / "datasets", tmp_path / "raw"
    store.mkdir()
    feed.mkdir()
    (store / "day.txt").write_text("rows")
    (feed / "2026-02-01.csv").write_text("files")
    script = (
        "import os\nprint(open(os.path.join(os.environ['STORE'], 'day.txt')).read())\n"
        "print(open(os.environ['FEED'][len('file://'):] + '/2026-02-01.csv').read())\n"
    )
    cluster.core.create_namespaced_pod(
        "default",
        pod_manifest(
            "env-folder",
            script,
            volumes=[{"name": "tmp", "emptyDir": {}}],
            container={
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                "env": [
                    {"name": "STORE", "value": str(store)},
                    {"name": "FEED", "value": feed.as_uri()},
                ],
            },
        ),
    )
    assert finished(cluster, "env-folder") == "Succeeded", log_of(cluster, "env-folder")
    assert log_of(cluster, "env-folder") == "rows\nfiles\n"


def test_without_the_faults_flag_no_one_can_break_the_cluster(tmp_path: Path) -> None:
    """The local stack starts localcluster without ``--faults``: the endpoint does not exist
    (404 for reading and for breaking), while the API itself answers."""
    from tools.kubeaccess import Access
    from tools.procs import free_port, localcluster

    server = localcluster(tmp_path, free_port(), faults=False).start(timeout=60)
    try:
        admin = Access.from_kubeconfig(tmp_path / "kubeconfig")
        for method, body in (("GET", None), ("POST", b'{"action": "api-errors", "share": 1}')):
            request = admin.request("/localcluster/faults", data=body, method=method)
            with pytest.raises(urllib.error.HTTPError) as refused:
                admin.open(request)
            assert refused.value.code == 404, method
        with admin.open("/api/v1/namespaces") as answer:
            assert answer.status == 200
    finally:
        server.stop()
    assert "--faults" not in " ".join(server.cmd)
