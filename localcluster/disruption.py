"""PodDisruptionBudgets: the disruption controller's status, and the eviction check that
reads it (``kubectl drain`` and the eviction API refuse with 429 what would break a budget)."""

from __future__ import annotations

import contextlib
import math
from typing import Any

from localcluster import errors
from localcluster.objects import pod_ready
from localcluster.resources import PDBS, PODS
from localcluster.selectors import match_label_selector
from localcluster.store import Obj, Store, now


def _count(value: Any, total: int) -> int:
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(total * int(value[:-1]) / 100)
    return int(value)


def _pods(store: Store, pdb: Obj) -> list[Obj]:
    selector = pdb["spec"].get("selector")
    if not selector:
        return []
    return [
        p
        for p in store.list(PODS, pdb["metadata"]["namespace"])
        if match_label_selector(selector, p["metadata"].get("labels") or {})
        and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
    ]


def status(store: Store, pdb: Obj) -> Obj:
    """What the disruption controller writes: expected, healthy, desired and allowed."""
    pods = _pods(store, pdb)
    expected = len([p for p in pods if not p["metadata"].get("deletionTimestamp")])
    healthy = sum(pod_ready(p) for p in pods)
    spec = pdb["spec"]
    if "maxUnavailable" in spec:
        desired = max(expected - _count(spec["maxUnavailable"], expected), 0)
    else:
        desired = _count(spec.get("minAvailable", 1), expected)
    allowed = max(healthy - desired, 0)
    previous = pdb.get("status", {})
    conditions = [
        c for c in previous.get("conditions") or [] if c.get("type") != "DisruptionAllowed"
    ]
    reason = "SufficientPods" if allowed > 0 else "InsufficientPods"
    old = next(
        (c for c in previous.get("conditions") or [] if c.get("type") == "DisruptionAllowed"),
        None,
    )
    changed = old is None or old.get("reason") != reason
    conditions.append(
        {
            "type": "DisruptionAllowed",
            "status": "True" if allowed > 0 else "False",
            "reason": reason,
            "message": "",
            "observedGeneration": pdb["metadata"].get("generation", 1),
            "lastTransitionTime": now() if changed or old is None else old["lastTransitionTime"],
        }
    )
    return {
        "observedGeneration": pdb["metadata"].get("generation", 1),
        "expectedPods": expected,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "disruptionsAllowed": allowed,
        "conditions": conditions,
    }


def reconcile(store: Store) -> None:
    for pdb in store.list(PDBS):
        new = status(store, pdb)
        if {k: pdb.get("status", {}).get(k) for k in new} != new:
            with contextlib.suppress(errors.ApiError):
                store.update(
                    PDBS, pdb["metadata"]["namespace"], pdb["metadata"]["name"],
                    _setter(new), "status",
                )  # fmt: skip


def _setter(status: Obj) -> Any:
    def write(obj: Obj) -> None:
        obj["status"] = status

    return write


def check_eviction(store: Store, pod: Obj) -> None:
    """Raise the real server's answer when evicting ``pod`` would break its budget."""
    labels = pod["metadata"].get("labels") or {}
    budgets = [
        b
        for b in store.list(PDBS, pod["metadata"]["namespace"])
        if b["spec"].get("selector") and match_label_selector(b["spec"]["selector"], labels)
    ]
    if not budgets:
        return
    if len(budgets) > 1:
        raise errors.ApiError(
            500,
            "InternalError",
            "This pod has more than one PodDisruptionBudget, which the eviction subresource "
            "does not support.",
        )
    if not pod_ready(pod):
        return  # an unhealthy pod serves nothing: evicting it costs the budget nothing
    budget = budgets[0]
    current = status(store, budget)
    if current["disruptionsAllowed"] <= 0:
        name = budget["metadata"]["name"]
        raise errors.ApiError(
            429,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.",
            {
                "causes": [
                    {
                        "reason": "DisruptionBudget",
                        "message": f"The disruption budget {name} needs "
                        f"{current['desiredHealthy']} healthy pods and has "
                        f"{current['currentHealthy']} currently",
                    }
                ]
            },
        )
