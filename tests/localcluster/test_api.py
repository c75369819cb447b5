"""The API server through the real kubernetes client: CRUD, errors, selectors, patch, watch."""

from __future__ import annotations

import json
import threading

import pytest
from kubernetes import watch
from kubernetes.client.rest import ApiException

from tests.cluster_fixtures import Cluster, wait_for


def status_of(error: ApiException) -> dict:
    """The Status object an API error carries."""
    return json.loads(error.body)


def configmap(name: str, labels: dict[str, str], data: dict[str, str] | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels}, "data": data or {"k": "v"}}


@pytest.fixture(scope="module")
def labelled(cluster: Cluster) -> list[str]:
    names = []
    for name, labels in [
        ("a", {"app": "web", "tier": "front"}),
        ("b", {"app": "web", "tier": "back"}),
        ("c", {"app": "db"}),
        ("d", {"team": "ml"}),
    ]:
        cluster.core.create_namespaced_config_map("default", configmap(f"sel-{name}", labels))
        names.append(f"sel-{name}")
    return names


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", ["sel-a", "sel-b"]),
        ("app==web,tier=back", ["sel-b"]),
        ("app!=web", ["sel-c", "sel-d"]),
        ("app", ["sel-a", "sel-b", "sel-c"]),
        ("!app", ["sel-d"]),
        ("app in (db, web),tier notin (front)", ["sel-b", "sel-c"]),
    ],
)
def test_label_selectors(
    cluster: Cluster, labelled: list[str], selector: str, expected: list[str]
) -> None:
    items = cluster.core.list_namespaced_config_map("default", label_selector=selector).items
    assert sorted(i.metadata.name for i in items if i.metadata.name.startswith("sel-")) == expected


def test_field_selector_on_name(cluster: Cluster, labelled: list[str]) -> None:
    items = cluster.core.list_namespaced_config_map(
        "default", field_selector="metadata.name=sel-c"
    ).items
    assert [i.metadata.name for i in items] == ["sel-c"]


def test_object_metadata_is_filled_in(cluster: Cluster) -> None:
    created = cluster.core.create_namespaced_config_map("default", configmap("meta", {}))
    assert created.metadata.uid
    assert created.metadata.creation_timestamp is not None
    assert int(created.metadata.resource_version) > 0
    assert created.metadata.namespace == "default"


def test_errors_are_status_objects_with_the_right_codes(cluster: Cluster) -> None:
    with pytest.raises(ApiException) as missing:
        cluster.core.read_namespaced_config_map("nope", "default")
    assert missing.value.status == 404
    assert status_of(missing.value)["message"] == 'configmaps "nope" not found'
    assert status_of(missing.value)["reason"] == "NotFound"

    cluster.core.create_namespaced_config_map("default", configmap("dup", {}))
    with pytest.raises(ApiException) as duplicate:
        cluster.core.create_namespaced_config_map("default", configmap("dup", {}))
    assert duplicate.value.status == 409
    assert status_of(duplicate.value)["reason"] == "AlreadyExists"

    with pytest.raises(ApiException) as invalid:
        cluster.core.create_namespaced_config_map("default", configmap("Not_Valid", {}))
    assert invalid.value.status == 422
    assert status_of(invalid.value)["reason"] == "Invalid"
    assert "RFC 1123" in status_of(invalid.value)["message"]

    with pytest.raises(ApiException) as no_namespace:
        cluster.core.create_namespaced_config_map("ghost", configmap("x", {}))
    assert no_namespace.value.status == 404


def test_replace_with_a_stale_resource_version_conflicts(cluster: Cluster) -> None:
    first = cluster.core.create_namespaced_config_map("default", configmap("occ", {}))
    first.data = {"k": "new"}
    updated = cluster.core.replace_namespaced_config_map("occ", "default", first)
    assert updated.data == {"k": "new"}
    first.data = {"k": "stale"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as stale:
        cluster.core.replace_namespaced_config_map("occ", "default", first)
    assert stale.value.status == 409
    assert status_of(stale.value)["reason"] == "Conflict"
    assert "the object has been modified" in status_of(stale.value)["message"]


def test_strategic_merge_patch_of_one_container_keeps_the_others(cluster: Cluster) -> None:
    body = {
        "metadata": {"name": "smp"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"nowhere": "true"},  # stays Pending: only the spec matters here
            "containers": [
                {"name": "app", "image": "python:3.11-slim", "env": [{"name": "A", "value": "1"}]},
                {"name": "sidecar", "image": "python:3.11-slim"},
            ],
        },
    }
    cluster.core.create_namespaced_pod("default", body)
    patched = cluster.core.patch_namespaced_pod(
        "smp",
        "default",
        {
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": "python:3.12-slim",
                        "env": [{"name": "B", "value": "2"}],
                    }
                ]
            }
        },
    )
    containers = {c.name: c for c in patched.spec.containers}
    assert containers["app"].image == "python:3.12-slim"
    assert containers["sidecar"].image == "python:3.11-slim"
    assert [(e.name, e.value) for e in containers["app"].env] == [("A", "1"), ("B", "2")]
    cluster.core.delete_namespaced_pod("smp", "default", grace_period_seconds=0)


def test_json_merge_and_json_patch(cluster: Cluster) -> None:
    cluster.core.create_namespaced_config_map(
        "default", configmap("mp", {"x": "1"}, {"a": "1", "b": "2"})
    )
    merged = cluster.core.patch_namespaced_config_map(
        "mp",
        "default",
        {"data": {"a": None, "c": "3"}},
        _content_type="application/merge-patch+json",
    )
    assert merged.data == {"b": "2", "c": "3"}
    patched = cluster.core.patch_namespaced_config_map(
        "mp",
        "default",
        [
            {"op": "replace", "path": "/data/b", "value": "20"},
            {"op": "add", "path": "/metadata/labels/y", "value": "2"},
        ],
    )
    assert patched.data["b"] == "20"
    assert patched.metadata.labels == {"x": "1", "y": "2"}


def test_watch_sees_added_modified_deleted(cluster: Cluster) -> None:
    start = cluster.core.list_namespaced_config_map("default").metadata.resource_version
    seen: list[tuple[str, str]] = []

    def follow() -> None:
        w = watch.Watch()
        for event in w.stream(
            cluster.core.list_namespaced_config_map,
            "default",
            resource_version=start,
            timeout_seconds=10,
            label_selector="watched=yes",
        ):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                w.stop()

    thread = threading.Thread(target=follow)
    thread.start()
    cluster.core.create_namespaced_config_map("default", configmap("w1", {"watched": "yes"}))
    cluster.core.patch_namespaced_config_map("w1", "default", {"data": {"k": "2"}})
    cluster.core.create_namespaced_config_map("default", configmap("w2", {"watched": "no"}))
    cluster.core.delete_namespaced_config_map("w1", "default")
    thread.join(15)
    assert seen == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]


def test_deleting_an_owner_collects_its_dependents(cluster: Cluster) -> None:
    owner = cluster.core.create_namespaced_config_map("default", configmap("owner", {}))
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    cluster.core.create_namespaced_config_map(
        "default", {"metadata": {"name": "dependent", "ownerReferences": [ref]}}
    )
    cluster.core.delete_namespaced_config_map("owner", "default")
    wait_for(
        "the dependent to be collected",
        lambda: (
            not cluster.core.list_namespaced_config_map(
                "default", field_selector="metadata.name=dependent"
            ).items
        ),
    )


def test_finalizers_hold_deletion_until_removed(cluster: Cluster) -> None:
    cluster.core.create_namespaced_config_map(
        "default", {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}
    )
    cluster.core.delete_namespaced_config_map("held", "default")
    held = cluster.core.read_namespaced_config_map("held", "default")
    assert held.metadata.deletion_timestamp is not None
    cluster.core.patch_namespaced_config_map("held", "default", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        cluster.core.read_namespaced_config_map("held", "default")
    assert gone.value.status == 404
