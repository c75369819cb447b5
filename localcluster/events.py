"""Kubernetes Events, recorded the way components record them (repeats bump ``count``)."""

from __future__ import annotations

import contextlib
import uuid

from localcluster import errors
from localcluster.resources import EVENTS
from localcluster.store import Obj, Store, now


def record(store: Store, obj: Obj, type_: str, reason: str, message: str, component: str) -> None:
    meta = obj["metadata"]
    ns = meta.get("namespace") or "default"
    for existing in store.list(
        EVENTS,
        ns,
        lambda e: (
            e["involvedObject"].get("uid") == meta.get("uid")
            and e["reason"] == reason
            and e["message"] == message
        ),
    ):

        def bump(e: Obj) -> None:
            e["count"] = e.get("count", 1) + 1
            e["lastTimestamp"] = now()

        with contextlib.suppress(errors.ApiError):
            store.update(EVENTS, ns, existing["metadata"]["name"], bump)
        return
    stamp = now()
    with contextlib.suppress(errors.ApiError):
        store.create(
            EVENTS,
            ns,
            {
                "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": ns},
                "involvedObject": {
                    "kind": obj.get("kind"),
                    "namespace": ns,
                    "name": meta["name"],
                    "uid": meta.get("uid"),
                    "apiVersion": obj.get("apiVersion"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "reason": reason,
                "message": message,
                "type": type_,
                "source": {"component": component},
                "reportingComponent": component,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "eventTime": None,
                "count": 1,
            },
        )
