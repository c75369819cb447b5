"""The scheduler: bind each pending pod to a node that fits it, or say why none does.

Filters, in the order the real scheduler reports them: node readiness and cordons (a pod that
tolerates ``node.kubernetes.io/unschedulable``, as a DaemonSet's do, ignores a cordon), node
selector and required node affinity (``matchExpressions`` on labels, ``matchFields`` on
``metadata.name``), taints against tolerations, and resource requests (cpu, memory,
nvidia.com/gpu, pod count) against what the node has left. A pod that fits nowhere stays
Pending with ``PodScheduled=False`` / ``Unschedulable`` and a ``FailedScheduling`` event whose
message has the same shape as the real one ("0/2 nodes are available: 1 Insufficient
nvidia.com/gpu, ...").
"""

from __future__ import annotations

import contextlib
from collections import Counter
from decimal import Decimal
from typing import Any

from localcluster import errors, events, quantity
from localcluster.resources import NODES, PODS
from localcluster.store import Obj, Store, now

TRACKED = ("cpu", "memory", "nvidia.com/gpu")


def requests_of(pod: Obj) -> dict[str, Decimal]:
    """A pod's effective requests: sum over containers, max with each init container."""

    def container_requests(c: dict[str, Any]) -> dict[str, Decimal]:
        res = c.get("resources") or {}
        req = {
            **(res.get("limits") or {}),
            **(res.get("requests") or {}),
        }  # limits default requests
        return {k: quantity.parse(v) for k, v in req.items() if k in TRACKED}

    total: dict[str, Decimal] = {k: Decimal(0) for k in TRACKED}
    for c in pod["spec"].get("containers", []):
        for k, v in container_requests(c).items():
            total[k] += v
    for c in pod["spec"].get("initContainers", []):
        for k, v in container_requests(c).items():
            total[k] = max(total[k], v)
    return total


def tolerates(taint: dict[str, str], tolerations: list[dict[str, Any]]) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t["key"] == taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and t.get("value", "") == taint.get("value", ""):
            return True
    return False


UNSCHEDULABLE = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}


def _requirement(expression: dict[str, Any], value: str | None) -> bool:
    op, values = expression.get("operator"), expression.get("values") or []
    if op == "In":
        return value in values
    if op == "NotIn":
        return value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and values:
        try:
            have, bound = int(value), int(values[0])
        except ValueError:  # not integers: no match, as the real scheduler decides
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def affinity_allows(pod: Obj, node: Obj) -> bool:
    """The pod's required node affinity: any one term, all of that term's requirements."""
    required = ((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True
    labels = node["metadata"].get("labels") or {}
    fields = {"metadata.name": node["metadata"]["name"]}
    return any(
        (term.get("matchExpressions") or term.get("matchFields"))
        and all(
            _requirement(e, labels.get(e.get("key", "")))
            for e in term.get("matchExpressions") or []
        )
        and all(
            _requirement(e, fields.get(e.get("key", ""))) for e in term.get("matchFields") or []
        )
        for term in terms
    )


def _active(pod: Obj) -> bool:
    return pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")


class Scheduler:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._reported: dict[str, str] = {}

    def fit(self, pod: Obj, nodes: list[Obj], pods: list[Obj]) -> tuple[Obj | None, str]:
        need = requests_of(pod)
        reasons: Counter[str] = Counter()
        selector = pod["spec"].get("nodeSelector") or {}
        tolerations = pod["spec"].get("tolerations") or []
        for node in nodes:
            labels = node["metadata"].get("labels") or {}
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node.get("status", {}).get("conditions", [])
            )
            if not ready:
                reasons["1 node(s) were not ready"] += 1
                continue
            if node["spec"].get("unschedulable") and not tolerates(UNSCHEDULABLE, tolerations):
                reasons["node(s) were unschedulable"] += 1
                continue
            if any(labels.get(k) != v for k, v in selector.items()) or not affinity_allows(
                pod, node
            ):
                reasons["node(s) didn't match Pod's node affinity/selector"] += 1
                continue
            blocking = [
                t
                for t in node["spec"].get("taints") or []
                if t.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(t, tolerations)
            ]
            if blocking:
                t = blocking[0]
                reasons[f"node(s) had untolerated taint {{{t['key']}: {t.get('value', '')}}}"] += 1
                continue
            allocatable = {
                k: quantity.parse(v) for k, v in node["status"].get("allocatable", {}).items()
            }
            on_node = [
                p
                for p in pods
                if p["spec"].get("nodeName") == node["metadata"]["name"] and _active(p)
            ]
            used = {k: sum((requests_of(p)[k] for p in on_node), Decimal(0)) for k in TRACKED}
            short = [
                k
                for k in TRACKED
                if need[k] > 0 and used[k] + need[k] > allocatable.get(k, Decimal(0))
            ]
            if len(on_node) + 1 > allocatable.get("pods", Decimal(110)):
                short.append("pods")
            if short:
                for k in short:
                    reasons[f"Insufficient {k}"] += 1
                continue
            return node, ""
        detail = ", ".join(
            f"{n} {r}" if not r[0].isdigit() else r for r, n in sorted(reasons.items())
        )
        return None, f"0/{len(nodes)} nodes are available: {detail}."

    def schedule_once(self) -> None:
        nodes = self.store.list(NODES)
        pods = self.store.list(PODS)
        for pod in pods:
            if (
                pod["spec"].get("nodeName")
                or pod["metadata"].get("deletionTimestamp")
                or not _active(pod)
            ):
                continue
            node, why = self.fit(pod, nodes, pods)
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            with contextlib.suppress(errors.ApiError):
                if node is not None:
                    self._bind(ns, name, node["metadata"]["name"])
                    pod["spec"]["nodeName"] = node["metadata"]["name"]  # counts for the next pod
                    events.record(
                        self.store,
                        pod,
                        "Normal",
                        "Scheduled",
                        f"Successfully assigned {ns}/{name} to {node['metadata']['name']}",
                        "default-scheduler",
                    )
                    self._reported.pop(pod["metadata"]["uid"], None)
                elif self._reported.get(pod["metadata"]["uid"]) != why:
                    self._reported[pod["metadata"]["uid"]] = why
                    self._unschedulable(ns, name, why)
                    events.record(
                        self.store, pod, "Warning", "FailedScheduling", why, "default-scheduler"
                    )

    def _bind(self, ns: str, name: str, node: str) -> None:
        def bind(pod: Obj) -> None:
            pod["spec"]["nodeName"] = node
            set_condition(pod, "PodScheduled", "True")

        self.store.update(PODS, ns, name, bind, "binding")

    def _unschedulable(self, ns: str, name: str, why: str) -> None:
        def mark(pod: Obj) -> None:
            pod.setdefault("status", {})["phase"] = "Pending"
            set_condition(pod, "PodScheduled", "False", "Unschedulable", why)

        self.store.update(PODS, ns, name, mark, "status")

    async def run(self) -> None:
        while True:
            seen = self.store.revision
            self.schedule_once()
            await self.store.changed_since(seen, 1.0)


def set_condition(obj: Obj, type_: str, status: str, reason: str = "", message: str = "") -> None:
    conditions = obj.setdefault("status", {}).setdefault("conditions", [])
    current = next((c for c in conditions if c["type"] == type_), None)
    if current is None:
        current = {"type": type_}
        conditions.append(current)
    if current.get("status") != status:
        current["lastTransitionTime"] = now()
    current["status"] = status
    current["lastProbeTime"] = None
    for key, value in (("reason", reason), ("message", message)):
        if value:
            current[key] = value
        else:
            current.pop(key, None)
