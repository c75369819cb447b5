"""The OpenAPI v3 documents: Kubernetes' own schemas, as kubectl explain reads them.

The expected texts are the Kubernetes API's documentation (the same words a real cluster's
``kubectl explain`` prints), not localcluster's output.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from tests.cluster_fixtures import Cluster, tool


def explain(cluster: Cluster, binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool(binary), "--kubeconfig", str(cluster.kubeconfig), "explain", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("binary", ["kubectl", "kubectl-1.35"])
def test_kubectl_explain_shows_the_apis_fields_types_and_descriptions(
    cluster: Cluster, binary: str
) -> None:
    pods = explain(cluster, binary, "pods")
    assert pods.returncode == 0, pods.stderr
    assert "KIND:       Pod\nVERSION:    v1" in pods.stdout
    assert "Pod is a collection of containers that can run on a host." in pods.stdout
    assert "spec\t<PodSpec>" in pods.stdout

    limits = explain(cluster, binary, "pods.spec.containers.resources.limits")
    assert limits.returncode == 0, limits.stderr
    assert "FIELD: limits <map[string]Quantity>" in limits.stdout
    assert "Limits describes the maximum amount of compute resources allowed." in limits.stdout

    surge = explain(cluster, binary, "deployments.spec.strategy.rollingUpdate.maxSurge")
    assert surge.returncode == 0, surge.stderr
    assert "GROUP:      apps" in surge.stdout
    assert "FIELD: maxSurge <IntOrString>" in surge.stdout

    job = explain(cluster, binary, "jobs.spec")
    assert re.search(r"^  template\t<PodTemplateSpec> -required-$", job.stdout, re.M), job.stdout

    wrong = explain(cluster, binary, "pods.spec.containerz")
    assert wrong.returncode != 0
    assert 'field "containerz" does not exist' in wrong.stderr

    # A kind with no upstream schema (a CRD's, as the Gateway API's are here) still explains.
    route = explain(cluster, binary, "httproutes")
    assert route.returncode == 0, route.stderr
    assert "GROUP:      gateway.networking.k8s.io\nKIND:       HTTPRoute" in route.stdout


def get(cluster: Cluster, path: str) -> tuple[int, dict[str, str], bytes]:
    access = cluster.access
    conn = access.connection()
    try:
        conn.request("GET", path, headers=access.headers())
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_every_document_is_whole_and_cached_by_its_hash(cluster: Cluster) -> None:
    status, _, body = get(cluster, "/openapi/v3")
    assert status == 200
    index: dict[str, Any] = json.loads(body)["paths"]
    assert {"api/v1", "apis/apps/v1", "apis/batch/v1"} <= set(index)
    for path, entry in index.items():
        url = entry["serverRelativeURL"]
        assert re.fullmatch(rf"/openapi/v3/{re.escape(path)}\?hash=[0-9A-F]{{128}}", url), url
        status, headers, body = get(cluster, url)
        assert status == 200, path
        assert headers["Cache-Control"] == "public, immutable"
        doc = json.loads(body)
        schemas = doc["components"]["schemas"]
        refs = set(re.findall(r'"#/components/schemas/([^"]+)"', body.decode()))
        assert refs <= set(schemas), f"{path}: refers to {sorted(refs - set(schemas))}"
        # Each path's kind has its schema in the same document.
        kinds = {
            json.dumps(op["x-kubernetes-group-version-kind"], sort_keys=True)
            for item in doc["paths"].values()
            for op in item.values()
        }
        published = {
            json.dumps(gvk, sort_keys=True)
            for schema in schemas.values()
            for gvk in schema.get("x-kubernetes-group-version-kind", [])
        }
        assert kinds <= published, f"{path}: no schema for {sorted(kinds - published)}"

    stale = index["api/v1"]["serverRelativeURL"].split("?")[0] + "?hash=" + "0" * 128
    status, headers, _ = get(cluster, stale)
    assert status == 301
    assert headers["Location"] == index["api/v1"]["serverRelativeURL"]
    for wrong in ("/openapi/v3/apis/nothing.example.com/v1", "/openapi/v3/apis", "/openapi/v3/x"):
        assert get(cluster, wrong)[0] == 404, wrong
    # Every kind keeps a PATCH that takes fieldValidation, even a create-only one: kubectl
    # looks for it before any write and has no other schema to fall back on here.
    reviews = json.loads(
        get(cluster, index["apis/authorization.k8s.io/v1"]["serverRelativeURL"])[2]
    )
    patched = {
        op["x-kubernetes-group-version-kind"]["kind"]
        for item in reviews["paths"].values()
        for method, op in item.items()
        if method == "patch" and any(p["name"] == "fieldValidation" for p in op["parameters"])
    }
    assert "SelfSubjectAccessReview" in patched
