"""What every controller reads off objects: ownership, timestamps, pod readiness."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from typing import Any

Obj = dict[str, Any]


def owned_by(obj: Obj, owner: Obj) -> bool:
    """Whether ``owner`` is ``obj``'s controlling owner."""
    return any(
        r.get("uid") == owner["metadata"]["uid"] and r.get("controller")
        for r in obj["metadata"].get("ownerReferences") or []
    )


def owner_ref(owner: Obj) -> dict[str, Any]:
    """The ownerReference a controller puts on what it creates."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def pod_ready(pod: Obj) -> bool:
    """Ready, and not on its way out."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def pod_available(pod: Obj, min_ready_seconds: int) -> bool:
    if not pod_ready(pod):
        return False
    if not min_ready_seconds:
        return True
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    since = parse_time(ready["lastTransitionTime"])
    return (dt.datetime.now(dt.UTC) - since).total_seconds() >= min_ready_seconds


def significant(value: Any) -> Any:
    """Drop nulls and empty maps/lists, as Go's omitempty does before the real hash sees them."""
    if isinstance(value, dict):
        kept = {k: significant(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [significant(v) for v in value]
    return value


def template_hash(template: Obj) -> str:
    """A stable short hash of a pod template (the real one is FNV; the shape is what matters).

    ``kubectl rollout undo`` copies a ReplicaSet's template back into the Deployment, so the
    same template must hash the same after a round trip through the client (which adds
    ``creationTimestamp: null`` and the like).
    """
    body = json.dumps(significant(template), sort_keys=True).encode()
    digest = hashlib.sha256(body).hexdigest()
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # the real controller's safe alphabet
    value = int(digest[:15], 16)
    out = ""
    for _ in range(10):
        value, rem = divmod(value, len(alphabet))
        out += alphabet[rem]
    return out


def resolve_count(value: Any, total: int, round_up: bool) -> int:
    """An int-or-percent field (maxSurge, maxUnavailable) as a count of ``total``."""
    if isinstance(value, str) and value.endswith("%"):
        fraction = total * int(value[:-1]) / 100
        return math.ceil(fraction) if round_up else math.floor(fraction)
    return int(value)
