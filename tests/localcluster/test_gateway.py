"""The Gateway API on localcluster: a Gateway gets an address, an HTTPRoute splits requests by
its backendRefs' weights and mirrors them with RequestMirror, through real HTTP and kubectl."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import pytest
from kubernetes import client

from localcluster.gateway import Backend, modify_headers, path_match, pick, rewrite_path
from tests.cluster_fixtures import Cluster, wait_for

KUBECTL = shutil.which("kubectl")
GROUP, VERSION = "gateway.networking.k8s.io", "v1"
# Answers with its version and the request id it saw; remembers every id (GET /seen lists them).
SERVER = (
    "import http.server, json, os\n"
    "seen = []\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    protocol_version = 'HTTP/1.1'\n"
    "    def answer(self, payload):\n"
    "        body = json.dumps(payload).encode()\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    def do_GET(self):\n"
    "        if self.path == '/seen':\n"
    "            return self.answer(seen)\n"
    "        seen.append(self.headers.get('x-request-id'))\n"
    "        self.answer({'version': os.environ['VERSION'], 'path': self.path,\n"
    "                     'id': self.headers.get('x-request-id')})\n"
    "    def log_message(self, *args):\n"
    "        pass\n"
    "http.server.ThreadingHTTPServer((os.environ['POD_IP'], 8080), H).serve_forever()\n"
)


def backend(name: str) -> list[dict[str, Any]]:
    labels = {"app": name}
    container = {
        "name": "web",
        "image": "python:3.11-slim",
        "command": ["python", "-c", SERVER],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "VERSION", "value": name},
        ],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    pod = {
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [container]},
    }
    service = {
        "metadata": {"name": name},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    return [pod, service]


def route(weights: dict[str, int], mirror: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [{"name": n, "port": 80, "weight": w} for n, w in weights.items()],
    }
    if mirror:
        rule["filters"] = [
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": mirror, "port": 80}}}
        ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"name": "edge"}], "rules": [rule]},
    }


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a local address
        return json.load(response)


@pytest.fixture(scope="module")
def gateway(cluster: Cluster) -> str:
    for name in ("stable", "canary"):
        pod, service = backend(name)
        cluster.core.create_namespaced_pod("default", pod)
        cluster.core.create_namespaced_service("default", service)
    custom = client.CustomObjectsApi(cluster.api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", "gateways",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Gateway", "metadata": {"name": "edge"},
         "spec": {"gatewayClassName": "local",
                  "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]}},
    )  # fmt: skip

    def address() -> str | None:
        gw = custom.get_namespaced_custom_object(GROUP, VERSION, "default", "gateways", "edge")
        addresses = (gw.get("status") or {}).get("addresses") or []
        return addresses[0]["value"] if addresses else None

    ip = wait_for("the Gateway's address", address)
    for name in ("stable", "canary"):
        wait_for(
            f"{name} endpoints",
            lambda n=name: cluster.core.read_namespaced_endpoints(n, "default").subsets,
        )
    return f"http://{ip}"


def test_weights_split_requests_and_every_answer_carries_a_request_id(
    cluster: Cluster, gateway: str
) -> None:
    custom = client.CustomObjectsApi(cluster.api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", "httproutes", route({"stable": 80, "canary": 20})
    )
    wait_for("the route", lambda: _answers(gateway + "/"))
    answers = [get(gateway + "/predict") for _ in range(400)]
    shares = Counter(a["version"] for a in answers)
    assert 0.13 < shares["canary"] / 400 < 0.27, shares  # 20% +- sampling noise (p < 1e-4)
    assert all(a["id"] for a in answers)
    assert len({a["id"] for a in answers}) == 400  # one new id per request

    # All weight on one side: no request reaches the other.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", "httproutes", "web",
        {"spec": {"rules": route({"stable": 0, "canary": 1})["spec"]["rules"]}},
    )  # fmt: skip
    wait_for("the new weights", lambda: get(gateway + "/")["version"] == "canary")
    assert {get(gateway + "/")["version"] for _ in range(50)} == {"canary"}

    status = custom.get_namespaced_custom_object(GROUP, VERSION, "default", "httproutes", "web")
    conditions = {c["type"]: c["status"] for c in status["status"]["parents"][0]["conditions"]}
    assert conditions == {"Accepted": "True", "ResolvedRefs": "True"}


def test_a_mirror_gets_a_copy_with_the_same_id_and_its_answer_is_discarded(
    cluster: Cluster, gateway: str
) -> None:
    custom = client.CustomObjectsApi(cluster.api)
    rules = route({"stable": 1}, mirror="canary")["spec"]["rules"]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", "httproutes", "web", {"spec": {"rules": rules}}
    )
    wait_for("the mirror route", lambda: get(gateway + "/")["version"] == "stable")
    sent = [get(gateway + "/x") for _ in range(30)]
    assert {a["version"] for a in sent} == {"stable"}  # clients only ever see the primary
    ids = {a["id"] for a in sent}
    canary = cluster.core.read_namespaced_service("canary", "default").spec.cluster_ip
    wait_for("the mirrored copies", lambda: ids <= set(get(f"http://{canary}/seen")))


def test_a_route_to_a_missing_service_answers_500_and_says_so(
    cluster: Cluster, gateway: str
) -> None:
    custom = client.CustomObjectsApi(cluster.api)
    rules = route({"gone": 1})["spec"]["rules"]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", "httproutes", "web", {"spec": {"rules": rules}}
    )

    def status() -> int | None:
        try:
            get(gateway + "/")
        except urllib.error.HTTPError as exc:
            return exc.code
        return None

    assert wait_for("a 500", lambda: status() == 500)
    route_status = custom.get_namespaced_custom_object(
        GROUP, VERSION, "default", "httproutes", "web"
    )
    resolved = next(
        c for c in route_status["status"]["parents"][0]["conditions"] if c["type"] == "ResolvedRefs"
    )
    assert (resolved["status"], resolved["reason"]) == ("False", "BackendNotFound")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_lists_gateways_and_routes_with_their_weights(
    cluster: Cluster, gateway: str
) -> None:
    def kubectl(*args: str) -> str:
        cmd = [str(KUBECTL), "--kubeconfig", str(cluster.kubeconfig), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    assert "edge" in kubectl("get", "gateways")
    rules = route({"stable": 95, "canary": 5})["spec"]["rules"]
    patch = json.dumps({"spec": {"rules": rules}})
    kubectl("patch", "httproute", "web", "--type", "merge", "-p", patch)
    weights = kubectl(
        "get", "httproute", "web", "-o", "jsonpath={.spec.rules[0].backendRefs[*].weight}"
    )
    assert weights.split() == ["95", "5"]


def test_pick_follows_the_weights_and_path_match_prefers_the_longest() -> None:
    a, b = Backend("ns", "a", 80, 95), Backend("ns", "b", 80, 5)
    assert pick([a, b], 0.0) == a
    assert pick([a, b], 0.949) == a
    assert pick([a, b], 0.95) == b
    assert pick([a, b], 0.999) == b
    assert pick([Backend("ns", "a", 80, 0)], 0.5) is None
    rule = {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}]}
    assert path_match(rule, "/v2/models") == 3
    assert path_match(rule, "/v20") == -1
    assert path_match({}, "/anything") == 1
    exact = {"matches": [{"path": {"type": "Exact", "value": "/predict"}}]}
    assert path_match(exact, "/predict") > path_match({}, "/predict")


def test_url_rewrite_replaces_the_matched_prefix_or_the_whole_path() -> None:
    rule = {"matches": [{"path": {"type": "PathPrefix", "value": "/models/churn"}}],
            "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {
                "type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]}  # fmt: skip
    # The Gateway API's examples: the prefix goes, the rest of the path stays.
    assert rewrite_path(rule, "/models/churn/predict") == "/predict"
    assert rewrite_path(rule, "/models/churn") == "/"
    assert rewrite_path(rule, "/models/churn/") == "/"
    assert rewrite_path(rule, "/models/churn/a%2Fb") == "/a%2Fb"  # the path as sent
    rule["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"] = "/v2"
    assert rewrite_path(rule, "/models/churn/predict") == "/v2/predict"
    assert rewrite_path(rule, "/models/churn/") == "/v2/"  # a trailing slash stays
    assert rewrite_path(rule, "/models/churn") == "/v2"
    rule["filters"][0]["urlRewrite"]["path"] = {"type": "ReplaceFullPath", "replaceFullPath": "/x"}
    assert rewrite_path(rule, "/models/churn/predict") == "/x"
    assert rewrite_path({"filters": []}, "/models/churn/predict") == "/models/churn/predict"


def test_two_routes_on_one_gateway_each_get_their_prefix_rewritten_away(
    cluster: Cluster, gateway: str
) -> None:
    custom = client.CustomObjectsApi(cluster.api)
    for name in ("stable", "canary"):
        obj = route({name: 1})
        rule = obj["spec"]["rules"][0]
        rule["matches"] = [{"path": {"type": "PathPrefix", "value": f"/models/{name}"}}]
        rule["filters"] = [{"type": "URLRewrite", "urlRewrite": {"path": {
            "type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]  # fmt: skip
        obj["metadata"]["name"] = f"model-{name}"
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", "httproutes", obj)
    wait_for("the routes", lambda: _answers(gateway + "/models/canary/predict?x=1"))
    answer = get(gateway + "/models/canary/predict?x=1")
    assert (answer["version"], answer["path"]) == ("canary", "/predict?x=1")
    answer = get(gateway + "/models/stable/metadata")
    assert (answer["version"], answer["path"]) == ("stable", "/metadata")
    for name in ("stable", "canary"):
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, "default", "httproutes", f"model-{name}"
        )


def test_header_modifiers_set_add_and_remove_in_order() -> None:
    headers = {"X-Keep": "1", "X-Drop": "2", "x-list": "a"}
    rule = {"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
        "set": [{"name": "x-keep", "value": "set"}],
        "add": [{"name": "X-List", "value": "b"}, {"name": "x-new", "value": "n"}],
        "remove": ["x-drop"]}}]}  # fmt: skip
    modify_headers(rule, headers)
    assert headers == {"x-keep": "set", "x-list": "a,b", "x-new": "n"}


def _answers(url: str) -> bool:
    try:
        get(url)
    except (OSError, ValueError):
        return False
    return True
