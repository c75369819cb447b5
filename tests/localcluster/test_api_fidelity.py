"""The API server as the real one answers: dry runs, WatchList and paged lists.

Checked with the clients people use against it: kubectl (server-side dry run, diff, chunked
get), the Python client (``dry_run="All"``, ``limit`` and ``_continue``) and raw HTTP for the
watch stream, whose events must arrive in the order the real server sends them.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.cluster_fixtures import Cluster, pod_manifest, wait_for

KUBECTL = shutil.which("kubectl")
PAGED = 1200


def status_of(error: ApiException) -> dict[str, Any]:
    return json.loads(error.body)


def configmap(name: str, data: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, **meta}, "data": data or {"k": "v"}}


def list_rv(cluster: Cluster, namespace: str = "default") -> str:
    return cluster.core.list_namespaced_config_map(namespace).metadata.resource_version


class Raw:
    """Plain HTTPS to the API server, as the admin: status, JSON body, and watch streams line
    by line."""

    def __init__(self, cluster: Cluster) -> None:
        self.access = cluster.access

    def request(
        self, method: str, path: str, body: Any = None, **query: str
    ) -> tuple[int, dict[str, Any]]:
        conn = self.access.connection()
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = self.access.headers()
            if data:
                headers["Content-Type"] = "application/json"
            conn.request(method, _url(path, query), body=data, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            conn.close()

    def watch(self, path: str, **query: str) -> Iterator[dict[str, Any]]:
        """Start a watch now; its events as they arrive, until the server ends the stream."""
        conn = self.access.connection()
        conn.request("GET", _url(path, {"watch": "true", **query}), headers=self.access.headers())
        response = conn.getresponse()
        if response.status != 200:
            raise AssertionError(f"watch answered {response.status}: {response.read()!r}")

        def events() -> Iterator[dict[str, Any]]:
            try:
                while line := response.readline():
                    if line.strip():
                        yield json.loads(line)
            finally:
                conn.close()

        return events()


def _url(path: str, query: dict[str, str]) -> str:
    return path + ("?" + urllib.parse.urlencode(query) if query else "")


@pytest.fixture(scope="module")
def raw(cluster: Cluster) -> Raw:
    return Raw(cluster)


@pytest.fixture
def kubectl(cluster: Cluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    assert KUBECTL, "kubectl is not on PATH; the workplace image ships one (see DESIGN.md)"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run


def namespace(cluster: Cluster, name: str) -> str:
    cluster.core.create_namespace({"metadata": {"name": name}})
    return name


# -- dry run ---------------------------------------------------------------------------------


def test_dry_run_create_answers_like_a_create_and_stores_nothing(
    cluster: Cluster, raw: Raw
) -> None:
    before = list_rv(cluster)
    created = cluster.core.create_namespaced_config_map(
        "default", {"metadata": {"generateName": "dry-"}, "data": {"k": "v"}}, dry_run="All"
    )
    assert created.metadata.name.startswith("dry-")
    assert len(created.metadata.name) > 4
    assert created.metadata.uid
    assert created.metadata.creation_timestamp
    assert created.metadata.resource_version is None  # not written, so never versioned
    with pytest.raises(ApiException) as missing:
        cluster.core.read_namespaced_config_map(created.metadata.name, "default")
    assert missing.value.status == 404
    assert list_rv(cluster) == before

    code, service = raw.request(
        "POST",
        "/api/v1/namespaces/default/services",
        {"metadata": {"name": "dry-svc"}, "spec": {"ports": [{"port": 80}]}},
        dryRun="All",
    )
    assert code == 201
    assert service["spec"]["clusterIP"]
    assert raw.request("GET", "/api/v1/namespaces/default/services/dry-svc")[0] == 404


def test_dry_run_create_still_validates_and_conflicts(cluster: Cluster) -> None:
    cluster.core.create_namespaced_config_map("default", configmap("dry-taken"))
    with pytest.raises(ApiException) as taken:
        cluster.core.create_namespaced_config_map("default", configmap("dry-taken"), dry_run="All")
    assert (taken.value.status, status_of(taken.value)["reason"]) == (409, "AlreadyExists")
    with pytest.raises(ApiException) as invalid:
        cluster.core.create_namespaced_config_map("default", configmap("Bad_Name"), dry_run="All")
    assert (invalid.value.status, status_of(invalid.value)["reason"]) == (422, "Invalid")


def test_dry_run_pod_is_never_started(cluster: Cluster, raw: Raw) -> None:
    pod = {
        "metadata": {"name": "dry-pod"},
        "spec": {"containers": [{"name": "c", "image": "python:3.11-slim", "command": ["true"]}]},
    }
    code, answer = raw.request("POST", "/api/v1/namespaces/default/pods", pod, dryRun="All")
    assert code == 201
    assert answer["metadata"]["name"] == "dry-pod"
    assert answer["spec"]["restartPolicy"] == "Always"  # defaulted as in a real create
    assert raw.request("GET", "/api/v1/namespaces/default/pods/dry-pod")[0] == 404


def test_dry_run_update_patch_and_scale_change_nothing(cluster: Cluster) -> None:
    cm = cluster.core.create_namespaced_config_map("default", configmap("dry-upd", {"k": "1"}))
    rv = cm.metadata.resource_version

    patched = cluster.core.patch_namespaced_config_map(
        "dry-upd", "default", {"data": {"k": "2"}}, dry_run="All"
    )
    assert patched.data == {"k": "2"}
    assert patched.metadata.resource_version == rv
    cm.data = {"k": "3"}
    replaced = cluster.core.replace_namespaced_config_map("dry-upd", "default", cm, dry_run="All")
    assert replaced.data == {"k": "3"}
    assert replaced.metadata.resource_version == rv
    live = cluster.core.read_namespaced_config_map("dry-upd", "default")
    assert live.data == {"k": "1"}
    assert live.metadata.resource_version == rv

    cm.metadata.resource_version = "1"  # stale: the conflict a real write would meet
    with pytest.raises(ApiException) as stale:
        cluster.core.replace_namespaced_config_map("dry-upd", "default", cm, dry_run="All")
    assert (stale.value.status, status_of(stale.value)["reason"]) == (409, "Conflict")

    deployment = {
        "metadata": {"name": "dry-scale"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "dry-scale"}},
            "template": {
                "metadata": {"labels": {"app": "dry-scale"}},
                "spec": {"containers": [{"name": "c", "image": "python:3.11-slim"}]},
            },
        },
    }
    cluster.apps.create_namespaced_deployment("default", deployment)
    scaled = cluster.apps.patch_namespaced_deployment_scale(
        "dry-scale", "default", {"spec": {"replicas": 3}}, dry_run="All"
    )
    assert scaled.spec.replicas == 3
    assert cluster.apps.read_namespaced_deployment("dry-scale", "default").spec.replicas == 0


def test_dry_run_delete_keeps_the_object_its_dependents_and_its_namespace(
    cluster: Cluster, raw: Raw
) -> None:
    owner = cluster.core.create_namespaced_config_map("default", configmap("dry-owner"))
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "dry-owner", "uid": owner.metadata.uid}
    cluster.core.create_namespaced_config_map(
        "default", configmap("dry-dependent", ownerReferences=[ref])
    )
    code, answer = raw.request(
        "DELETE", "/api/v1/namespaces/default/configmaps/dry-owner", dryRun="All"
    )
    assert code == 200
    assert answer["metadata"]["name"] == "dry-owner"
    assert cluster.core.read_namespaced_config_map("dry-owner", "default")
    assert cluster.core.read_namespaced_config_map("dry-dependent", "default")

    held = cluster.core.create_namespaced_config_map(
        "default", configmap("dry-held", finalizers=["example.com/hold"])
    )
    code, answer = raw.request(
        "DELETE", "/api/v1/namespaces/default/configmaps/dry-held", dryRun="All"
    )
    assert code == 200
    assert answer["metadata"]["deletionTimestamp"]  # what the deletion would do
    live = cluster.core.read_namespaced_config_map("dry-held", "default")
    assert live.metadata.deletion_timestamp is None
    assert live.metadata.resource_version == held.metadata.resource_version

    ns = namespace(cluster, "dry-ns")
    cluster.core.create_namespaced_config_map(ns, configmap("inside"))
    cluster.core.delete_namespace(ns, dry_run="All")
    cluster.core.delete_collection_namespaced_config_map(ns, dry_run="All")
    assert cluster.core.read_namespace(ns).metadata.deletion_timestamp is None
    assert [c.metadata.name for c in cluster.core.list_namespaced_config_map(ns).items] == [
        "inside"
    ]


def test_dry_run_eviction_and_delete_leave_a_running_pod_running(
    cluster: Cluster, raw: Raw
) -> None:
    cluster.core.create_namespaced_pod(
        "default", pod_manifest("dry-run-pod", "import time; time.sleep(600)")
    )
    path = "/api/v1/namespaces/default/pods/dry-run-pod"
    wait_for(
        "the pod to run", lambda: raw.request("GET", path)[1]["status"].get("phase") == "Running"
    )
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "dry-run-pod"},
        "deleteOptions": {"dryRun": ["All"]},
    }
    assert raw.request("POST", path + "/eviction", eviction)[0] == 201
    code, answer = raw.request("DELETE", path, dryRun="All")
    assert code == 200
    assert answer["metadata"]["deletionGracePeriodSeconds"] == 30  # graceful, as it would be
    pod = raw.request("GET", path)[1]
    assert "deletionTimestamp" not in pod["metadata"]
    assert pod["status"]["phase"] == "Running"
    cluster.core.delete_namespaced_pod("dry-run-pod", "default", grace_period_seconds=0)


def test_delete_options_in_the_body_win_over_the_query(cluster: Cluster, raw: Raw) -> None:
    cluster.core.create_namespaced_config_map("default", configmap("dry-body"))
    path = "/api/v1/namespaces/default/configmaps/dry-body"
    assert raw.request("DELETE", path, {"dryRun": ["All"]})[0] == 200
    assert raw.request("GET", path)[0] == 200
    # A body without dryRun is the whole of the options: the query's dryRun is not read.
    assert raw.request("DELETE", path, {"gracePeriodSeconds": 0}, dryRun="All")[0] == 200
    assert raw.request("GET", path)[0] == 404


def test_dry_run_writes_no_watch_event(cluster: Cluster, raw: Raw) -> None:
    since = list_rv(cluster)
    cluster.core.create_namespaced_config_map("default", configmap("dry-unseen"), dry_run="All")
    cluster.core.create_namespaced_config_map("default", configmap("dry-seen"))
    events = raw.watch(
        "/api/v1/namespaces/default/configmaps", resourceVersion=since, timeoutSeconds="5"
    )
    first = next(events)
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "dry-seen")


@pytest.fixture(scope="module")
def dry_mode(cluster: Cluster) -> client.CoreV1Api:
    cluster.core.create_namespaced_config_map("default", configmap("dry-mode"))
    return cluster.core


@pytest.mark.parametrize(
    ("method", "path", "options"),
    [
        ("POST", "/api/v1/namespaces/default/configmaps", "CreateOptions"),
        ("PUT", "/api/v1/namespaces/default/configmaps/dry-mode", "UpdateOptions"),
        ("PATCH", "/api/v1/namespaces/default/configmaps/dry-mode", "PatchOptions"),
        ("DELETE", "/api/v1/namespaces/default/configmaps/dry-mode", "DeleteOptions"),
    ],
)
def test_an_unknown_dry_run_mode_is_rejected(
    raw: Raw, dry_mode: client.CoreV1Api, method: str, path: str, options: str
) -> None:
    body = None if method == "DELETE" else configmap("dry-mode")
    code, status = raw.request(method, path, body, dryRun="Yes")
    assert (code, status["reason"]) == (422, "Invalid")
    assert status["message"] == (
        f'{options}.meta.k8s.io "" is invalid: '
        'dryRun: Unsupported value: []string{"Yes"}: supported values: "All"'
    )
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueNotSupported",
            "message": 'Unsupported value: []string{"Yes"}: supported values: "All"',
            "field": "dryRun",
        }
    ]
    assert dry_mode.read_namespaced_config_map("dry-mode", "default").data == {"k": "v"}


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_server_dry_run_and_diff(
    cluster: Cluster, kubectl: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    manifest = tmp_path / "cm.yaml"

    def write(value: str) -> str:
        manifest.write_text(
            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kdry\ndata:\n  k: {value!r}\n"
        )
        return str(manifest)

    out = kubectl("apply", "--dry-run=server", "-f", write("one"))
    assert out.returncode == 0, out.stderr
    assert "configmap/kdry created (server dry run)" in out.stdout
    out = kubectl("create", "--dry-run=server", "-f", write("one"))
    assert "configmap/kdry created (server dry run)" in out.stdout, out.stderr
    assert kubectl("get", "configmap", "kdry").returncode == 1  # still not there

    assert kubectl("apply", "-f", write("one")).returncode == 0
    rv = cluster.core.read_namespaced_config_map("kdry", "default").metadata.resource_version
    unchanged = kubectl("diff", "-f", write("one"))
    assert (unchanged.returncode, unchanged.stdout) == (0, ""), unchanged.stderr
    changed = kubectl("diff", "-f", write("two"))
    assert changed.returncode == 1, changed.stderr  # 1: differences found
    assert "-  k: one" in changed.stdout
    assert "+  k: two" in changed.stdout

    out = kubectl("apply", "--dry-run=server", "-f", write("two"))
    assert "configmap/kdry configured (server dry run)" in out.stdout, out.stderr
    out = kubectl("delete", "--dry-run=server", "configmap", "kdry")
    assert 'configmap "kdry" deleted (server dry run)' in out.stdout, out.stderr
    live = cluster.core.read_namespaced_config_map("kdry", "default")
    assert live.data == {"k": "one"}
    assert live.metadata.resource_version == rv


# -- watch with initial events (WatchList) ---------------------------------------------------


def test_watch_list_sends_initial_events_then_the_end_bookmark(cluster: Cluster, raw: Raw) -> None:
    for name in ("wl-a", "wl-b"):
        cluster.core.create_namespaced_config_map(
            "default", configmap(name, labels={"watchlist": "yes"})
        )
    events = raw.watch(
        "/api/v1/namespaces/default/configmaps",
        sendInitialEvents="true",
        resourceVersionMatch="NotOlderThan",
        allowWatchBookmarks="true",
        labelSelector="watchlist=yes",
        timeoutSeconds="10",
    )
    initial = [next(events), next(events)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in initial] == [
        ("ADDED", "wl-a"),
        ("ADDED", "wl-b"),
    ]
    bookmark = next(events)
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["object"]["kind"] == "ConfigMap"
    meta = bookmark["object"]["metadata"]
    assert meta["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert all(
        int(meta["resourceVersion"]) >= int(e["object"]["metadata"]["resourceVersion"])
        for e in initial
    )
    cluster.core.create_namespaced_config_map(
        "default", configmap("wl-c", labels={"watchlist": "yes"})
    )
    after = next(events)
    assert (after["type"], after["object"]["metadata"]["name"]) == ("ADDED", "wl-c")
    assert int(after["object"]["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])


def test_watch_list_without_bookmarks_sends_no_end_marker(cluster: Cluster, raw: Raw) -> None:
    cluster.core.create_namespaced_config_map(
        "default", configmap("wl-nobm", labels={"watchlist-nobm": "yes"})
    )
    events = list(
        raw.watch(
            "/api/v1/namespaces/default/configmaps",
            sendInitialEvents="true",
            resourceVersionMatch="NotOlderThan",
            labelSelector="watchlist-nobm=yes",
            timeoutSeconds="2",
        )
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "wl-nobm")]


def test_watch_without_initial_events_starts_now(cluster: Cluster, raw: Raw) -> None:
    cluster.core.create_namespaced_config_map(
        "default", configmap("wl-old", labels={"watchlist-now": "yes"})
    )
    events = raw.watch(
        "/api/v1/namespaces/default/configmaps",
        sendInitialEvents="false",
        resourceVersionMatch="NotOlderThan",
        labelSelector="watchlist-now=yes",
        timeoutSeconds="10",
    )
    # No initial event for wl-old: the first to come is the change made after the watch began.
    cluster.core.create_namespaced_config_map(
        "default", configmap("wl-new", labels={"watchlist-now": "yes"})
    )
    first = next(events)
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "wl-new")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            {"watch": "true", "sendInitialEvents": "true"},
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
            "resourceVersionMatch to NotOlderThan",
        ),
        (
            {"watch": "true", "resourceVersionMatch": "NotOlderThan"},
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch "
            "unless sendInitialEvents is provided",
        ),
        (
            {"watch": "true", "sendInitialEvents": "true", "resourceVersionMatch": "Exact"},
            "[resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
            "resourceVersionMatch to NotOlderThan, resourceVersionMatch: Unsupported value: "
            '"Exact": supported values: "NotOlderThan"]',
        ),
        (
            {"sendInitialEvents": "true"},
            "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list",
        ),
    ],
)
def test_watch_list_options_are_validated(
    cluster: Cluster, raw: Raw, query: dict[str, str], message: str
) -> None:
    code, status = raw.request("GET", "/api/v1/namespaces/default/configmaps", **query)
    assert (code, status["reason"]) == (422, "Invalid")
    assert status["message"] == f'ListOptions.meta.k8s.io "" is invalid: {message}'
    assert status["details"]["kind"] == "ListOptions"


# -- paged lists -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paged(cluster: Cluster) -> str:
    """A namespace of PAGED ConfigMaps, named so that key order is easy to predict."""
    ns = namespace(cluster, "paged")
    for i in range(PAGED):
        cluster.core.create_namespaced_config_map(
            ns, configmap(f"cm-{i:04d}", labels={"parity": "even" if i % 2 == 0 else "odd"})
        )
    return ns


def test_python_client_pages_through_a_consistent_snapshot(cluster: Cluster, paged: str) -> None:
    first = cluster.core.list_namespaced_config_map(paged, limit=500)
    assert len(first.items) == 500
    assert first.metadata.remaining_item_count == 700
    assert first.metadata._continue
    # Writes between pages: the rest of the list still shows the revision of the first page.
    cluster.core.delete_namespaced_config_map("cm-0700", paged)
    cluster.core.create_namespaced_config_map(paged, configmap("cm-9999"))
    second = cluster.core.list_namespaced_config_map(
        paged, limit=500, _continue=first.metadata._continue
    )
    assert len(second.items) == 500
    assert second.metadata.remaining_item_count == 200
    third = cluster.core.list_namespaced_config_map(
        paged, limit=500, _continue=second.metadata._continue
    )
    assert len(third.items) == 200
    assert third.metadata._continue is None
    assert third.metadata.remaining_item_count is None
    revisions = {page.metadata.resource_version for page in (first, second, third)}
    assert revisions == {first.metadata.resource_version}
    names = [c.metadata.name for page in (first, second, third) for c in page.items]
    assert names == [f"cm-{i:04d}" for i in range(PAGED)]

    latest = [c.metadata.name for c in cluster.core.list_namespaced_config_map(paged).items]
    assert "cm-0700" not in latest
    assert "cm-9999" in latest
    cluster.core.create_namespaced_config_map(paged, configmap("cm-0700"))
    cluster.core.delete_namespaced_config_map("cm-9999", paged)


def test_paging_with_a_selector_leaves_out_the_remaining_count(
    cluster: Cluster, paged: str
) -> None:
    names: list[str] = []
    token = None
    while True:
        page = cluster.core.list_namespaced_config_map(
            paged, limit=400, label_selector="parity=odd", _continue=token
        )
        assert page.metadata.remaining_item_count is None
        names += [c.metadata.name for c in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert names == [f"cm-{i:04d}" for i in range(1, PAGED, 2)]


def test_a_continue_token_past_its_revision_is_410_with_a_token_to_go_on(
    cluster: Cluster, raw: Raw, paged: str
) -> None:
    first = cluster.core.list_namespaced_config_map(paged, limit=500)
    last = first.items[-1].metadata.name
    # A well-formed token for a revision that was never kept (what compaction leaves).
    stale = _token({"v": "meta.k8s.io/v1", "rv": 1, "start": last + "\x00"})
    code, status = raw.request(
        "GET", f"/api/v1/namespaces/{paged}/configmaps", limit="500", **{"continue": stale}
    )
    assert (code, status["reason"]) == (410, "Expired")
    assert "continue parameter is too old" in status["message"]
    retry = status["metadata"]["continue"]
    rest = cluster.core.list_namespaced_config_map(paged, limit=1000, _continue=retry)
    assert [c.metadata.name for c in rest.items] == [f"cm-{i:04d}" for i in range(500, PAGED)]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"continue": "not-a-token"}, "invalid continue token: continue key is not valid"),
        (
            {"continue": "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6NSwic3RhcnQiOiJhIn0"},
            "specifying resource version is not allowed when using continue",
        ),
    ],
)
def test_bad_continue_requests_are_400(
    cluster: Cluster, raw: Raw, query: dict[str, str], message: str
) -> None:
    if "specifying" in message:
        query = {**query, "resourceVersion": "5"}
    code, status = raw.request("GET", "/api/v1/namespaces/default/configmaps", **query)
    assert (code, status["reason"]) == (400, "BadRequest")
    assert status["message"].startswith(message)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_gets_every_chunk(
    cluster: Cluster, kubectl: Callable[..., subprocess.CompletedProcess[str]], paged: str
) -> None:
    expected = len(cluster.core.list_namespaced_config_map(paged).items)
    assert expected >= PAGED
    out = kubectl("get", "configmaps", "-n", paged, "--chunk-size=500", "-o", "name")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == expected
    table = kubectl("get", "configmaps", "-n", paged, "--chunk-size=500")
    assert table.returncode == 0, table.stderr
    assert len(table.stdout.splitlines()) == expected + 1  # the header row


def _token(content: dict[str, Any]) -> str:
    raw = json.dumps(content, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
