"""Requests the real API server answers without storing anything: access and rules reviews
(``kubectl auth can-i``), ``kubectl auth whoami``, and service account tokens; each answered
for the user who asks, by the same RBAC authorizer that guards every request."""

from __future__ import annotations

import datetime as dt
from typing import Any

from localcluster import auth, errors
from localcluster.resources import SERVICE_ACCOUNTS
from localcluster.store import Obj, Store

REVIEWS = {"SelfSubjectAccessReview", "SelfSubjectRulesReview", "SelfSubjectReview"}
MAX_SECONDS = 2**32  # the real server's bound on a TokenRequest's expirationSeconds


def review(
    kind: str, api_version: str, body: Obj, user: auth.User, authorizer: auth.Authorizer
) -> Obj:
    spec = body.get("spec") or {}
    answer: Obj = {
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"creationTimestamp": None},
        "spec": spec,
    }
    if kind == "SelfSubjectAccessReview":
        decision = authorizer.decide(user, _attributes(spec))
        answer["status"] = {"allowed": decision.allowed}
        if decision.reason:
            answer["status"]["reason"] = decision.reason
    elif kind == "SelfSubjectRulesReview":
        resource_rules: list[dict[str, Any]] = []
        other_rules: list[dict[str, Any]] = []
        for _origin, rule in authorizer.rules(user, spec.get("namespace") or ""):
            (other_rules if "nonResourceURLs" in rule else resource_rules).append(rule)
        answer["status"] = {
            "resourceRules": resource_rules,
            "nonResourceRules": other_rules,
            "incomplete": False,
        }
    else:
        answer.pop("spec")
        answer["status"] = {"userInfo": user.info()}
    return answer


def _attributes(spec: dict[str, Any]) -> auth.Attributes:
    if "nonResourceAttributes" in spec:
        other = spec["nonResourceAttributes"]
        return auth.Attributes(verb=other.get("verb", ""), path=other.get("path", ""))
    attrs = spec.get("resourceAttributes") or {}
    return auth.Attributes(
        verb=attrs.get("verb", ""),
        group=attrs.get("group", ""),
        resource=attrs.get("resource", ""),
        subresource=attrs.get("subresource", ""),
        namespace=attrs.get("namespace", ""),
        name=attrs.get("name", ""),
    )


def token(
    store: Store, authenticator: auth.Authenticator, namespace: str, name: str, body: Obj
) -> Obj:
    """A TokenRequest answered: a token for the account that this server honours while the
    account exists, valid for ``expirationSeconds`` (default one hour)."""
    account = store.find(SERVICE_ACCOUNTS, namespace, name)
    if account is None:
        raise errors.not_found("serviceaccounts", name)
    spec = body.get("spec") or {}
    seconds = int(spec.get("expirationSeconds") or 3600)
    if seconds > MAX_SECONDS:
        raise errors.invalid(
            "TokenRequest", name, f"spec.expirationSeconds: Invalid value: may not specify a "
            f"duration longer than {MAX_SECONDS} seconds"
        )  # fmt: skip
    if seconds < 600:
        raise errors.invalid(
            "TokenRequest", name, "spec.expirationSeconds: Invalid value: may not specify a "
            "duration less than 10 minutes"
        )  # fmt: skip
    issued = dt.datetime.now(dt.UTC).replace(microsecond=0)
    expires = issued + dt.timedelta(seconds=seconds)
    audiences = spec.get("audiences") or [auth.API_AUDIENCE]
    jwt = authenticator.issue(namespace, account, audiences, issued, expires)
    return {
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
        "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": None},
        "status": {"token": jwt, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
    }
