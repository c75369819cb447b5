"""Who is asking, and may they: bearer-token authentication and RBAC authorization, as the
real API server does them (``--anonymous-auth``, service account tokens, the RBAC authorizer).

Authentication:

- the kubeconfig's token (random per start) is the cluster admin, in ``system:masters``;
- service account tokens (``serviceaccounts/token``, the projected token volume) are JWTs this
  server signs (HS256 with a key made at start); one is honoured while it has not expired, its
  audience is the API's, and the account it names still exists with the same uid;
- no token: ``system:anonymous``, which RBAC lets read the health and version endpoints only;
  a token that is not valid is refused with 401 (as the real server does).

Authorization reads the Role, ClusterRole, RoleBinding and ClusterRoleBinding objects at every
request (``system:masters`` is allowed everything first, as in the real authorizer), so a
binding takes effect at once. Not modelled: aggregated ClusterRoles, impersonation, the Node
authorizer, and ServiceAccount-token Secrets.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from localcluster import errors
from localcluster.resources import (
    CLUSTER_ROLE_BINDINGS,
    CLUSTER_ROLES,
    ROLE_BINDINGS,
    ROLES,
    SERVICE_ACCOUNTS,
)
from localcluster.store import Obj, Store

RBAC = "rbac.authorization.k8s.io"
API_AUDIENCE = "https://kubernetes.default.svc"
ISSUER = "https://kubernetes.default.svc"
ADMIN = "localcluster-admin"
MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]
    uid: str = ""
    extra: dict[str, list[str]] = field(default_factory=dict, hash=False, compare=False)

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"username": self.name, "groups": list(self.groups)}
        if self.uid:
            info["uid"] = self.uid
        if self.extra:
            info["extra"] = self.extra
        return info


ANONYMOUS = User("system:anonymous", (UNAUTHENTICATED,))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    """Tells the user a bearer token stands for."""

    def __init__(self, store: Store, admin_token: str | None = None) -> None:
        self.store = store
        self.admin_token = admin_token or secrets.token_urlsafe(32)
        self._key = secrets.token_bytes(32)

    def issue(
        self,
        namespace: str,
        account: Obj,
        audiences: list[str],
        issued: dt.datetime,
        expires: dt.datetime,
    ) -> str:
        """A signed token for the service account (what TokenRequest answers)."""
        name, uid = account["metadata"]["name"], account["metadata"]["uid"]
        claims = {
            "aud": audiences,
            "exp": int(expires.timestamp()),
            "iat": int(issued.timestamp()),
            "iss": ISSUER,
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": uid},
            },
        }
        header = _b64(json.dumps({"alg": "HS256", "kid": "localcluster"}).encode())
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._key, f"{header}.{body}".encode(), hashlib.sha256).digest()
        return f"{header}.{body}.{_b64(signature)}"

    def authenticate(self, authorization: str | None) -> User:
        """The user of an ``Authorization`` header; raises 401 for a token that is not valid.
        A header that is not a bearer token (Basic, say) is no credential: anonymous, as the
        real token authenticator passes it on."""
        parts = (authorization or "").split(" ")
        if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
            return ANONYMOUS
        try:
            token = parts[1].encode("ascii")
        except UnicodeEncodeError:
            raise unauthorized() from None
        if hmac.compare_digest(token, self.admin_token.encode()):
            return User(ADMIN, (MASTERS, AUTHENTICATED))
        user = self._service_account(token.decode())
        if user is None:
            raise unauthorized()
        return user

    def _service_account(self, token: str) -> User | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            expected = hmac.new(
                self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256
            ).digest()
            if not hmac.compare_digest(expected, _unb64(parts[2])):
                return None
            claims = json.loads(_unb64(parts[1]))
            bound = claims["kubernetes.io"]
            namespace, name = bound["namespace"], bound["serviceaccount"]["name"]
            uid = bound["serviceaccount"]["uid"]
        except (binascii.Error, ValueError, KeyError, TypeError):
            return None
        if claims.get("exp", 0) <= dt.datetime.now(dt.UTC).timestamp():
            return None
        if API_AUDIENCE not in (claims.get("aud") or []):
            return None
        account = self.store.find(SERVICE_ACCOUNTS, namespace, name)
        if account is None or account["metadata"]["uid"] != uid:
            return None  # deleted (or deleted and made again): the token died with it
        groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED)
        return User(f"system:serviceaccount:{namespace}:{name}", groups, uid)


def unauthorized() -> errors.ApiError:
    return errors.ApiError(401, "Unauthorized", "Unauthorized")


@dataclass(frozen=True)
class Attributes:
    """What a request does, in the authorizer's terms."""

    verb: str
    path: str = ""  # a non-resource request's path
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def is_resource(self) -> bool:
        return bool(self.resource)

    def describe(self) -> str:
        """The part of a 403 after ``User "..." cannot``, worded as the real server's."""
        if not self.is_resource:
            return f'{self.verb} path "{self.path}"'
        resource = self.resource + (f"/{self.subresource}" if self.subresource else "")
        where = f'in the namespace "{self.namespace}"' if self.namespace else "at the cluster scope"
        return f'{self.verb} resource "{resource}" in API group "{self.group}" {where}'


def resource_verb(method: str, name: str, watch: bool) -> str:
    """The RBAC verb of a resource request, as the real API server's RequestInfo names it
    (a Kubernetes 1.32 server: a WebSocket exec or port-forward is a GET, so ``get``)."""
    if method in ("GET", "HEAD"):
        return "get" if name else ("watch" if watch else "list")
    if method == "DELETE":
        return "delete" if name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def _subject_matches(subject: dict[str, Any], user: User, binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return name == user.name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user.name == f"system:serviceaccount:{namespace}:{name}"
    return False


def _covers(values: Iterable[str], wanted: str) -> bool:
    values = list(values)
    return "*" in values or wanted in values


def _resource_covered(resources: list[str], resource: str, subresource: str) -> bool:
    if "*" in resources:
        return True
    if not subresource:
        return resource in resources
    # Exact, or ``*/sub`` (RBAC's ResourceMatches: there is no ``pods/*``).
    return f"{resource}/{subresource}" in resources or f"*/{subresource}" in resources


def rule_allows(rule: dict[str, Any], attrs: Attributes) -> bool:
    if not _covers(rule.get("verbs") or [], attrs.verb):
        return False
    if not attrs.is_resource:
        urls = rule.get("nonResourceURLs") or []
        return any(
            u == "*" or u == attrs.path or (u.endswith("*") and attrs.path.startswith(u[:-1]))
            for u in urls
        )
    if not _covers(rule.get("apiGroups") or [], attrs.group):
        return False
    if not _resource_covered(rule.get("resources") or [], attrs.resource, attrs.subresource):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


class Authorizer:
    """RBAC over the store's Roles, ClusterRoles and their bindings."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def rules(self, user: User, namespace: str) -> list[tuple[str, dict[str, Any]]]:
        """(where it comes from, rule) for every rule bound to the user: cluster-wide ones,
        and those bound in ``namespace`` (when given)."""
        found: list[tuple[str, dict[str, Any]]] = []
        for binding in self.store.list(CLUSTER_ROLE_BINDINGS):
            if any(_subject_matches(s, user, "") for s in binding.get("subjects") or []):
                role = self.store.find(CLUSTER_ROLES, "", binding["roleRef"]["name"])
                origin = (
                    f'ClusterRoleBinding "{binding["metadata"]["name"]}" of ClusterRole '
                    f'"{binding["roleRef"]["name"]}"'
                )
                found += [(origin, r) for r in (role or {}).get("rules") or []]
        if namespace:
            for binding in self.store.list(ROLE_BINDINGS, namespace):
                if not any(
                    _subject_matches(s, user, namespace) for s in binding.get("subjects") or []
                ):
                    continue
                ref = binding["roleRef"]
                if ref["kind"] == "ClusterRole":
                    role = self.store.find(CLUSTER_ROLES, "", ref["name"])
                else:
                    role = self.store.find(ROLES, namespace, ref["name"])
                origin = (
                    f'RoleBinding "{binding["metadata"]["name"]}/{namespace}" of '
                    f'{ref["kind"]} "{ref["name"]}"'
                )
                found += [(origin, r) for r in (role or {}).get("rules") or []]
        return found

    def decide(self, user: User, attrs: Attributes) -> Decision:
        if MASTERS in user.groups:
            return Decision(True, "")  # the real authorizer gives no reason here either
        for origin, rule in self.rules(user, attrs.namespace):
            if rule_allows(rule, attrs):
                return Decision(True, f'RBAC: allowed by {origin} to User "{user.name}"')
        return Decision(False, "")

    def check(self, user: User, attrs: Attributes) -> None:
        """Raise the real server's 403 unless RBAC allows the request."""
        if self.decide(user, attrs).allowed:
            return
        message = f'User "{user.name}" cannot {attrs.describe()}'
        if not attrs.is_resource:
            raise errors.ApiError(403, "Forbidden", f"forbidden: {message}")
        qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
        subject = f'{qualified} "{attrs.name}"' if attrs.name else qualified
        details = {"name": attrs.name, "group": attrs.group, "kind": attrs.resource}
        raise errors.ApiError(
            403,
            "Forbidden",
            f"{subject} is forbidden: {message}",
            {k: v for k, v in details.items() if v},
        )


# The bootstrap policy every real cluster starts with (the subset a client meets): discovery
# and health for everyone, self reviews for the authenticated, everything for system:masters.
BOOTSTRAP_ROLES: list[tuple[str, list[dict[str, Any]], list[str]]] = [
    ("cluster-admin", [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
        {"nonResourceURLs": ["*"], "verbs": ["*"]},
    ], [MASTERS]),
    ("system:discovery", [{"nonResourceURLs": [
        "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*",
        "/readyz", "/version", "/version/",
    ], "verbs": ["get"]}], [AUTHENTICATED]),
    ("system:public-info-viewer", [{"nonResourceURLs": [
        "/healthz", "/livez", "/readyz", "/version", "/version/",
    ], "verbs": ["get"]}], [AUTHENTICATED, UNAUTHENTICATED]),
    ("system:basic-user", [{"apiGroups": ["authorization.k8s.io"], "resources": [
        "selfsubjectaccessreviews", "selfsubjectrulesreviews",
    ], "verbs": ["create"]}, {"apiGroups": ["authentication.k8s.io"], "resources": [
        "selfsubjectreviews"
    ], "verbs": ["create"]}], [AUTHENTICATED]),
]  # fmt: skip


def bootstrap_policy() -> list[tuple[Any, Obj]]:
    """(kind, object) pairs for ``store.ensure``: the bootstrap ClusterRoles and bindings."""
    labels = {"kubernetes.io/bootstrapping": "rbac-defaults"}
    objects: list[tuple[Any, Obj]] = []
    for name, rules, groups in BOOTSTRAP_ROLES:
        objects.append(
            (CLUSTER_ROLES, {"metadata": {"name": name, "labels": labels}, "rules": rules})
        )
        objects.append((
            CLUSTER_ROLE_BINDINGS,
            {
                "metadata": {"name": name, "labels": labels},
                "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name},
                "subjects": [
                    {"apiGroup": RBAC, "kind": "Group", "name": g}
                    for g in groups
                ],
            },
        ))  # fmt: skip
    return objects
