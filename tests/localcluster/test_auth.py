"""Who may call localcluster: TLS only, bearer tokens (the admin's, service accounts'), and RBAC
enforced from Role/ClusterRole objects and their bindings, with the real server's answers."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.cluster_fixtures import Cluster, kubectl, pod_manifest
from tests.localcluster.test_pods import finished, log_of
from tests.localcluster.test_volumes_and_faults import needs_root
from tools.kubeaccess import Access

RBAC = "rbac.authorization.k8s.io/v1"


def status(access: Access, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    """(HTTP status, parsed body) of one request as ``access``."""
    data = json.dumps(body).encode() if body is not None else None
    request = access.request(path, data=data, method=method, **{"Content-Type": "application/json"})
    try:
        with access.open(request) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw.startswith(b"{") else raw.decode()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw.startswith(b"{") else raw.decode()


def as_token(cluster: Cluster, token: str) -> Access:
    admin = cluster.access
    return Access(admin.server, admin.ca_pem, token)


def token_for(cluster: Cluster, namespace: str, name: str, **spec: Any) -> str:
    answer = cluster.core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600, **spec}}
    )
    token: str = answer.status.token
    return token


def apply(cluster: Cluster, *objects: dict[str, Any]) -> None:
    for obj in objects:
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(cluster.kubeconfig), "apply", "-f", "-"],
            input=json.dumps(obj), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def team(cluster: Cluster) -> str:
    """Namespace ``team-a`` with service account ``reader``, which a Role lets get and list
    ConfigMaps there, read one pod's log, and nothing else."""
    apply(
        cluster,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "reader", "namespace": "team-a"}},
        {"apiVersion": RBAC, "kind": "Role", "metadata": {"name": "reader", "namespace": "team-a"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]},
                   {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"],
                    "resourceNames": ["web-0"]}]},
        {"apiVersion": RBAC, "kind": "RoleBinding",
         "metadata": {"name": "reader", "namespace": "team-a"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "team-a"}]},
    )  # fmt: skip
    return "team-a"


def test_the_api_speaks_tls_only_and_clients_trust_it_by_the_kubeconfig_ca(
    cluster: Cluster,
) -> None:
    admin = cluster.access
    assert admin.server.startswith("https://127.0.0.1:")
    with pytest.raises((ConnectionError, urllib.error.URLError)):  # plain HTTP: closed
        urllib.request.urlopen(admin.server.replace("https:", "http:") + "/readyz", timeout=5)  # noqa: S310
    with pytest.raises(urllib.error.URLError) as untrusted:  # a CA the system does not know
        urllib.request.urlopen(admin.server + "/readyz", timeout=5)  # noqa: S310
    assert isinstance(untrusted.value.reason, ssl.SSLCertVerificationError)
    assert status(admin, "/readyz") == (200, "ok")


def test_anonymous_callers_may_read_health_and_version_only(cluster: Cluster) -> None:
    anonymous = as_token(cluster, "")
    assert status(anonymous, "/readyz")[0] == 200
    assert status(anonymous, "/version")[0] == 200
    code, body = status(anonymous, "/api")
    assert (code, body["reason"]) == (403, "Forbidden")
    assert body["message"] == 'forbidden: User "system:anonymous" cannot get path "/api"'
    code, body = status(anonymous, "/api/v1/namespaces/default/secrets")
    assert code == 403
    assert body["message"] == (
        'secrets is forbidden: User "system:anonymous" cannot list resource "secrets" in API '
        'group "" in the namespace "default"'
    )
    # Nor can anyone but the admin reach the fault endpoint (this cluster serves it).
    assert status(cluster.access, "/localcluster/faults")[0] == 200
    assert status(anonymous, "/localcluster/faults")[0] == 403


def test_a_token_that_is_not_valid_gets_401(cluster: Cluster, team: str) -> None:
    good = token_for(cluster, team, "reader")
    header, claims, signature = good.split(".")
    forged_claims = json.loads(base64.urlsafe_b64decode(claims + "=="))
    forged_claims["sub"] = "system:serviceaccount:kube-system:admin"
    forged = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=").decode()
    other_audience = token_for(cluster, team, "reader", audiences=["vault"])
    for token in ("garbage", f"{header}.{forged}.{signature}", other_audience):
        code, body = status(as_token(cluster, token), f"/api/v1/namespaces/{team}/configmaps")
        assert (code, body["reason"], body["message"]) == (401, "Unauthorized", "Unauthorized")
    assert status(as_token(cluster, good), f"/api/v1/namespaces/{team}/configmaps")[0] == 200


def test_a_service_account_may_do_what_its_role_grants_and_nothing_else(
    cluster: Cluster, team: str
) -> None:
    reader = as_token(cluster, token_for(cluster, team, "reader"))
    user = f'User "system:serviceaccount:{team}:reader"'
    assert status(reader, f"/api/v1/namespaces/{team}/configmaps")[0] == 200
    cases = [
        ("GET", f"/api/v1/namespaces/{team}/secrets",
         f'secrets is forbidden: {user} cannot list resource "secrets" in API group "" in the '
         f'namespace "{team}"'),
        ("GET", "/api/v1/namespaces/default/configmaps",
         f'configmaps is forbidden: {user} cannot list resource "configmaps" in API group "" '
         'in the namespace "default"'),
        ("POST", f"/api/v1/namespaces/{team}/configmaps",
         f'configmaps is forbidden: {user} cannot create resource "configmaps" in API group "" '
         f'in the namespace "{team}"'),
        ("GET", "/api/v1/namespaces",
         f'namespaces is forbidden: {user} cannot list resource "namespaces" in API group "" '
         "at the cluster scope"),
        ("DELETE", f"/apis/apps/v1/namespaces/{team}/deployments/web",
         f'deployments.apps "web" is forbidden: {user} cannot delete resource "deployments" in '
         f'API group "apps" in the namespace "{team}"'),
        ("GET", f"/api/v1/namespaces/{team}/pods/web-1/log",
         f'pods "web-1" is forbidden: {user} cannot get resource "pods/log" in API group "" in '
         f'the namespace "{team}"'),
    ]  # fmt: skip
    for method, path, message in cases:
        body = {"metadata": {"name": "x"}} if method == "POST" else None
        code, answer = status(reader, path, method, body)
        assert (code, answer["message"]) == (403, message), path
        assert answer["details"]["kind"] in path
    # The one log the Role names is allowed through RBAC (and then not found: no such pod).
    assert status(reader, f"/api/v1/namespaces/{team}/pods/web-0/log")[0] == 404


def test_kubectl_auth_reports_what_rbac_decides(cluster: Cluster, team: str) -> None:
    token = token_for(cluster, team, "reader")
    base = ["kubectl", "--kubeconfig", str(cluster.kubeconfig), "--token", token, "-n", team]

    def can(*args: str) -> str:
        done = subprocess.run(
            [*base, "auth", "can-i", *args], capture_output=True, text=True, timeout=60, check=False
        )
        return done.stdout.strip()

    assert can("list", "configmaps") == "yes"
    assert can("get", "pods/web-0", "--subresource=log") == "yes"
    assert can("get", "pods/web-1", "--subresource=log") == "no"
    assert can("list", "secrets") == "no"
    assert can("create", "pods", "--subresource=exec") == "no"
    whoami = subprocess.run(
        [*base, "auth", "whoami", "-o", "json"], capture_output=True, text=True, timeout=60,
        check=True,
    ).stdout  # fmt: skip
    info = json.loads(whoami)["status"]["userInfo"]
    assert info["username"] == f"system:serviceaccount:{team}:reader"
    assert info["groups"] == [
        "system:serviceaccounts",
        f"system:serviceaccounts:{team}",
        "system:authenticated",
    ]
    listed = subprocess.run(
        [*base, "get", "secrets"], capture_output=True, text=True, timeout=60, check=False
    )
    assert listed.returncode == 1
    assert "Error from server (Forbidden): secrets is forbidden" in listed.stderr


def test_cluster_roles_apply_where_they_are_bound(cluster: Cluster) -> None:
    apply(
        cluster,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-b"}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "ops", "namespace": "team-b"}},
        {"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": "pod-reader"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
        {"apiVersion": RBAC, "kind": "RoleBinding",
         "metadata": {"name": "ops-pods", "namespace": "team-b"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "pod-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "ops", "namespace": "team-b"}]},
    )  # fmt: skip
    ops = as_token(cluster, token_for(cluster, "team-b", "ops"))
    # Bound in one namespace: allowed there only.
    assert status(ops, "/api/v1/namespaces/team-b/pods")[0] == 200
    assert status(ops, "/api/v1/namespaces/default/pods")[0] == 403
    assert status(ops, "/api/v1/pods")[0] == 403
    # Bound cluster-wide, to the group of every service account in team-b: everywhere.
    apply(
        cluster,
        {"apiVersion": RBAC, "kind": "ClusterRoleBinding", "metadata": {"name": "team-b-pods"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "pod-reader"},
         "subjects": [{"kind": "Group", "name": "system:serviceaccounts:team-b"}]},
    )  # fmt: skip
    assert status(ops, "/api/v1/namespaces/default/pods")[0] == 200
    assert status(ops, "/api/v1/pods")[0] == 200
    kubectl(cluster, "delete", "clusterrolebinding", "team-b-pods")
    assert status(ops, "/api/v1/pods")[0] == 403  # takes effect at once


def test_a_token_dies_with_its_service_account(cluster: Cluster) -> None:
    kubectl(cluster, "-n", "default", "create", "serviceaccount", "short-lived")
    token = token_for(cluster, "default", "short-lived")
    caller = as_token(cluster, token)
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    whoami = status(caller, "/apis/authentication.k8s.io/v1/selfsubjectreviews", "POST", review)
    assert whoami[1]["status"]["userInfo"]["username"] == (
        "system:serviceaccount:default:short-lived"
    )
    kubectl(cluster, "-n", "default", "delete", "serviceaccount", "short-lived")
    assert status(caller, "/api/v1/namespaces/default/configmaps")[0] == 401
    # A new account of the same name is another account: the old token stays dead.
    kubectl(cluster, "-n", "default", "create", "serviceaccount", "short-lived")
    assert status(caller, "/api/v1/namespaces/default/configmaps")[0] == 401


def test_the_kubeconfig_holds_the_admin_token_for_its_owner_only(cluster: Cluster) -> None:
    assert cluster.kubeconfig.stat().st_mode & 0o077 == 0
    assert cluster.access.token
    assert cluster.access.token not in cluster.server.log_path.read_text()


IN_POD = """
import json, os, ssl, urllib.error, urllib.request
folder = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(f"{folder}/token").read()
namespace = open(f"{folder}/namespace").read()
context = ssl.create_default_context(cafile=f"{folder}/ca.crt")
api = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
for resource in ("configmaps", "secrets"):
    request = urllib.request.Request(
        f"{api}/api/v1/namespaces/{namespace}/{resource}",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        print(resource, urllib.request.urlopen(request, context=context, timeout=10).status)
    except urllib.error.HTTPError as exc:
        print(resource, exc.code)
"""


@needs_root
def test_a_pod_calls_the_api_with_its_projected_service_account_token(cluster: Cluster) -> None:
    """The volume the real ServiceAccount admission adds (token, CA, namespace), declared by
    hand: the pod's own account may list ConfigMaps, not Secrets, and the token says so."""
    apply(
        cluster,
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "in-pod", "namespace": "default"}},
        {"apiVersion": RBAC, "kind": "Role", "metadata": {"name": "in-pod", "namespace": "default"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]},
        {"apiVersion": RBAC, "kind": "RoleBinding",
         "metadata": {"name": "in-pod", "namespace": "default"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "in-pod"},
         "subjects": [{"kind": "ServiceAccount", "name": "in-pod"}]},
    )  # fmt: skip
    volume = {
        "name": "kube-api-access",
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt",
                               "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                    "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }  # fmt: skip
    mount = {"name": "kube-api-access", "readOnly": True,
             "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}  # fmt: skip
    manifest = pod_manifest(
        "in-pod", IN_POD, serviceAccountName="in-pod", volumes=[volume],
        container={"volumeMounts": [mount]},
    )  # fmt: skip
    cluster.core.create_namespaced_pod("default", manifest)
    assert finished(cluster, "in-pod") == "Succeeded", log_of(cluster, "in-pod")
    assert log_of(cluster, "in-pod") == "configmaps 200\nsecrets 403\n"


def test_tokens_expire_and_must_be_bearer_tokens() -> None:
    """The authenticator alone (a store, no server): an expired token is refused, a header
    that is not a bearer token is anonymous, bytes that are not ASCII are refused."""
    import datetime as dt

    from localcluster.auth import ANONYMOUS, Authenticator
    from localcluster.errors import ApiError
    from localcluster.resources import NAMESPACES, SERVICE_ACCOUNTS
    from localcluster.store import Store

    store = Store((10, 11))
    store.create(NAMESPACES, "", {"metadata": {"name": "default"}})
    account = store.create(SERVICE_ACCOUNTS, "default", {"metadata": {"name": "bot"}})
    authn = Authenticator(store)
    now = dt.datetime.now(dt.UTC)
    audience = ["https://kubernetes.default.svc"]
    fresh = authn.issue("default", account, audience, now, now + dt.timedelta(minutes=10))
    stale = authn.issue(
        "default", account, audience, now - dt.timedelta(hours=2), now - dt.timedelta(seconds=1)
    )
    assert authn.authenticate(f"Bearer {fresh}").name == "system:serviceaccount:default:bot"
    with pytest.raises(ApiError) as refused:
        authn.authenticate(f"Bearer {stale}")
    assert refused.value.code == 401
    assert authn.authenticate("Basic dXNlcjpwYXNz") == ANONYMOUS
    assert authn.authenticate(None) == ANONYMOUS
    with pytest.raises(ApiError):
        authn.authenticate("Bearer caf\udcc3")  # how aiohttp hands over undecodable bytes


def test_exec_needs_what_its_websocket_get_is_granted(cluster: Cluster) -> None:
    """kubectl exec is a WebSocket GET of pods/exec: a 1.32 server authorizes ``get`` on it
    (``create`` only for the SPDY POST), so a Role with ``get pods/exec`` lets an account exec
    and one without it is refused."""
    from tests.localcluster.test_exec import running

    rule = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
    execs = {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get"]}
    for name, rules in (("execer", [rule, execs]), ("looker", [rule])):
        apply(
            cluster,
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": name, "namespace": "default"}},
            {"apiVersion": RBAC, "kind": "Role",
             "metadata": {"name": name, "namespace": "default"}, "rules": rules},
            {"apiVersion": RBAC, "kind": "RoleBinding",
             "metadata": {"name": name, "namespace": "default"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
             "subjects": [{"kind": "ServiceAccount", "name": name}]},
        )  # fmt: skip
    cluster.core.create_namespaced_pod(
        "default", pod_manifest("sleeper", "import time; time.sleep(600)")
    )
    running(cluster, "sleeper")

    def exec_as(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(cluster.kubeconfig),
             "--token", token_for(cluster, "default", name),
             "exec", "sleeper", "--", "python", "-c", "print('inside')"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    allowed = exec_as("execer")
    assert (allowed.returncode, allowed.stdout) == (0, "inside\n"), allowed.stderr
    refused = exec_as("looker")
    assert refused.returncode == 1
    assert "Forbidden" in refused.stderr, refused.stderr
    assert 'resource "pods/exec"' in refused.stderr
    cluster.core.delete_namespaced_pod("sleeper", "default", grace_period_seconds=0)
