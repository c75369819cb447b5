"""What every controller reads off objects: ownership, timestamps, pod readiness."""

from __future__ import annotations

import datetime as dt
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
