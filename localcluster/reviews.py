"""Requests the real API server answers without storing anything: access and rules reviews
(``kubectl auth can-i``), ``kubectl auth whoami``, and service account tokens.

localcluster authorizes nothing, so every review says allowed, and says why.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from typing import Any

from localcluster import errors
from localcluster.resources import SERVICE_ACCOUNTS
from localcluster.store import Obj, Store

REVIEWS = {"SelfSubjectAccessReview", "SelfSubjectRulesReview", "SelfSubjectReview"}
USER = {"username": "localcluster-admin", "groups": ["system:masters", "system:authenticated"]}
REASON = "localcluster does not authorize requests: every request is allowed"


def review(kind: str, api_version: str, body: Obj) -> Obj:
    answer: Obj = {
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"creationTimestamp": None},
        "spec": body.get("spec") or {},
    }
    if kind == "SelfSubjectAccessReview":
        answer["status"] = {"allowed": True, "reason": REASON}
    elif kind == "SelfSubjectRulesReview":
        answer["status"] = {
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": False,
        }
    else:
        answer.pop("spec")
        answer["status"] = {"userInfo": USER}
    return answer


def _segment(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(store: Store, namespace: str, name: str, body: Obj) -> Obj:
    """A TokenRequest answered: a JWT for the account (unsigned in substance: nothing here
    verifies it), valid for ``expirationSeconds`` (default one hour)."""
    account = store.find(SERVICE_ACCOUNTS, namespace, name)
    if account is None:
        raise errors.not_found("serviceaccounts", name)
    spec = body.get("spec") or {}
    seconds = int(spec.get("expirationSeconds") or 3600)
    if seconds < 600:
        raise errors.invalid(
            "TokenRequest", name, "spec.expirationSeconds: Invalid value: may not specify a "
            "duration less than 10 minutes"
        )  # fmt: skip
    issued = dt.datetime.now(dt.UTC).replace(microsecond=0)
    expires = issued + dt.timedelta(seconds=seconds)
    audiences = spec.get("audiences") or ["https://kubernetes.default.svc"]
    claims = {
        "aud": audiences,
        "exp": int(expires.timestamp()),
        "iat": int(issued.timestamp()),
        "iss": "https://kubernetes.default.svc",
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": account["metadata"]["uid"]},
        },
    }
    jwt = ".".join(
        [_segment({"alg": "RS256", "kid": "localcluster"}), _segment(claims),
         base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()]
    )  # fmt: skip
    return {
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
        "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": None},
        "status": {"token": jwt, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
    }
