"""The DaemonSet controller: one pod of the template on every node the template may run on.

As the real controller does, it decides the nodes itself (the template's node selector,
required node affinity and taints) and leaves the binding to the scheduler: each pod gets a
required node affinity on its node's ``metadata.name`` and the tolerations every daemon pod
gets (not-ready and unreachable nodes, pressure conditions, cordons). Pods carry
``controller-revision-hash`` (of the template) and ``pod-template-generation``; a failed pod
is deleted and replaced; a pod on a node it may no longer run on is deleted.

Updates: ``RollingUpdate`` (the default) replaces pods of an older template node by node,
never leaving more than ``maxUnavailable`` (default 1) of the desired nodes without an
available pod; ``OnDelete`` replaces a pod only once someone deletes it. The status has the
fields ``kubectl rollout status ds`` reads. A NotReady node gets no new pod and keeps its old
one through a rollout; a new NoSchedule taint leaves a running pod be, a NoExecute one evicts
it; a pod still terminating holds its node until it is gone. Not modelled: ``maxSurge`` (a
new pod beside the old one), ControllerRevision objects (so ``kubectl rollout history/undo
ds`` have nothing to show), and the real controller's backoff before replacing a failed pod.
"""

from __future__ import annotations

import contextlib
import copy
import uuid
from typing import Any

from localcluster import errors, events
from localcluster.objects import (
    owned_by,
    owner_ref,
    pod_available,
    pod_ready,
    resolve_count,
    template_hash,
)
from localcluster.resources import DAEMONSETS, NODES, PODS
from localcluster.scheduler import affinity_allows, tolerates
from localcluster.store import Obj, Store

ENDED = ("Succeeded", "Failed")
HASH_LABEL = "controller-revision-hash"
GENERATION_LABEL = "pod-template-generation"
SOURCE = "daemonset-controller"
# What the real controller adds to every daemon pod (pkg/controller/daemon/util).
TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]


def runs_on(template: Obj, node: Obj, *, staying: bool = False) -> bool:
    """Whether the template's pod belongs on ``node``: its ``nodeName``, selector, affinity
    and taints. A new pod needs a Ready node and every NoSchedule and NoExecute taint
    tolerated (a NotReady node counts as tainted ``not-ready:NoSchedule``, as the node
    lifecycle controller taints it); a pod already there (``staying``) is evicted only by an
    untolerated NoExecute taint, as the real controller decides."""
    spec = template.get("spec") or {}
    labels = node["metadata"].get("labels") or {}
    if spec.get("nodeName") and spec["nodeName"] != node["metadata"]["name"]:
        return False
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    if not affinity_allows({"spec": spec}, node):
        return False
    taints = list(node["spec"].get("taints") or [])
    ready = any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in node.get("status", {}).get("conditions") or []
    )
    if not ready:
        taints.append({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"})
    effects = ("NoExecute",) if staying else ("NoSchedule", "NoExecute")
    tolerations = [*(spec.get("tolerations") or []), *TOLERATIONS]
    return all(tolerates(t, tolerations) for t in taints if t.get("effect") in effects)


def _pinned(spec: Obj, node: str) -> Obj:
    """The template's spec with a required affinity to ``node`` on every term, as the real
    controller writes it, and the daemon tolerations."""
    spec = copy.deepcopy(spec)
    required = (
        spec.setdefault("affinity", {})
        .setdefault("nodeAffinity", {})
        .setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    )
    field = {"key": "metadata.name", "operator": "In", "values": [node]}
    terms = required.get("nodeSelectorTerms") or [{}]
    for term in terms:
        term["matchFields"] = [field]
    required["nodeSelectorTerms"] = terms
    present = spec.setdefault("tolerations", [])
    present.extend(t for t in TOLERATIONS if t not in present)
    return spec


def _node_of(pod: Obj) -> str:
    if pod["spec"].get("nodeName"):
        return str(pod["spec"]["nodeName"])
    required = ((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for field in term.get("matchFields") or []:
            if field.get("key") == "metadata.name" and field.get("values"):
                return str(field["values"][0])
    return ""


class DaemonSetController:
    def __init__(self, store: Store) -> None:
        self.store = store

    def reconcile(self) -> None:
        nodes = self.store.list(NODES)
        for ds in self.store.list(DAEMONSETS):
            # A malformed object is skipped, never the end of the controller.
            with contextlib.suppress(errors.ApiError, ValueError, KeyError, TypeError):
                self.daemonset(ds, nodes)

    def daemonset(self, ds: Obj, nodes: list[Obj]) -> None:
        if ds["metadata"].get("deletionTimestamp"):
            return
        ns, template = ds["metadata"]["namespace"], ds["spec"]["template"]
        digest = template_hash(template)
        owned = [p for p in self.store.list(PODS, ns) if owned_by(p, ds)]
        # A pod still terminating holds its node: a new one waits (host ports, one agent).
        leaving = {_node_of(p) for p in owned if p["metadata"].get("deletionTimestamp")}
        pods = [p for p in owned if not p["metadata"].get("deletionTimestamp")]
        for pod in [p for p in pods if p.get("status", {}).get("phase") in ENDED]:
            self._delete(ds, pod, "Deleted pod that ended")  # daemons run until deleted
            pods.remove(pod)
            leaving.add(_node_of(pod))
        by_node: dict[str, list[Obj]] = {}
        for pod in sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"]):
            by_node.setdefault(_node_of(pod), []).append(pod)
        named = {n["metadata"]["name"]: n for n in nodes}
        fresh = {name for name, node in named.items() if runs_on(template, node)}
        kept = {
            name
            for name in by_node
            if name in named and runs_on(template, named[name], staying=True)
        }
        wanted = fresh | kept
        for node, on_node in by_node.items():
            extra = on_node if node not in wanted else on_node[1:]  # the oldest one stays
            for pod in extra:
                self._delete(ds, pod, "Deleted pod")
        current = {node: by_node[node][0] for node in wanted if by_node.get(node)}
        for node in sorted(wanted - current.keys() - leaving):
            self._create(ds, node, digest)
        if (ds["spec"].get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate":
            # Only where a new pod can start: an old pod on a NotReady node stays.
            rollable = {node: pod for node, pod in current.items() if node in fresh}
            self._roll(ds, rollable, current, len(wanted), digest)
        self._status(ds, current, len(wanted), digest, misscheduled=len(by_node.keys() - wanted))

    def _roll(
        self,
        ds: Obj,
        rollable: dict[str, Obj],
        current: dict[str, Obj],
        desired: int,
        digest: str,
    ) -> None:
        """Replace pods of an older template, keeping ``maxUnavailable`` of the nodes at most
        without an available pod (an old pod that is not available anyway goes first)."""
        rolling = (ds["spec"].get("updateStrategy") or {}).get("rollingUpdate") or {}
        try:
            wanted = resolve_count(rolling.get("maxUnavailable", 1), desired, round_up=True)
        except ValueError:  # not an int or a percentage: the API server's validation would say
            wanted = 1
        budget = max(wanted, 1)
        min_ready = ds["spec"].get("minReadySeconds", 0)
        old = [p for p in rollable.values() if p["metadata"]["labels"].get(HASH_LABEL) != digest]
        unavailable = desired - sum(pod_available(p, min_ready) for p in current.values())
        for pod in sorted(old, key=lambda p: pod_available(p, min_ready)):
            if pod_available(pod, min_ready):
                if unavailable >= budget:
                    break
                unavailable += 1
            self._delete(ds, pod, "Deleted pod")

    def _create(self, ds: Obj, node: str, digest: str) -> None:
        template = ds["spec"]["template"]
        meta = template.get("metadata") or {}
        name = f"{ds['metadata']['name']}-{uuid.uuid4().hex[:5]}"
        labels = {
            **(meta.get("labels") or {}),
            HASH_LABEL: digest,
            GENERATION_LABEL: str(ds["metadata"].get("generation", 1)),
        }
        pod = {
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": meta.get("annotations") or {},
                "ownerReferences": [owner_ref(ds)],
            },
            "spec": _pinned(template["spec"], node),
        }
        self.store.create(PODS, ds["metadata"]["namespace"], pod)
        events.record(self.store, ds, "Normal", "SuccessfulCreate", f"Created pod: {name}", SOURCE)

    def _delete(self, ds: Obj, pod: Obj, what: str) -> None:
        name = pod["metadata"]["name"]
        with contextlib.suppress(errors.ApiError):
            self.store.delete(PODS, pod["metadata"]["namespace"], name)
        events.record(self.store, ds, "Normal", "SuccessfulDelete", f"{what}: {name}", SOURCE)

    def _status(
        self, ds: Obj, current: dict[str, Obj], desired: int, digest: str, misscheduled: int
    ) -> None:
        min_ready = ds["spec"].get("minReadySeconds", 0)
        live = [p for p in current.values() if not p["metadata"].get("deletionTimestamp")]
        available = sum(pod_available(p, min_ready) for p in live)
        status: dict[str, Any] = {
            "currentNumberScheduled": len(live),
            "desiredNumberScheduled": desired,
            "numberMisscheduled": misscheduled,
            "numberReady": sum(pod_ready(p) for p in live),
            "numberAvailable": available,
            "numberUnavailable": desired - available,
            "updatedNumberScheduled": sum(
                p["metadata"]["labels"].get(HASH_LABEL) == digest for p in live
            ),
            "observedGeneration": ds["metadata"].get("generation", 1),
        }
        if {k: ds.get("status", {}).get(k) for k in status} != status:
            self.store.update(
                DAEMONSETS,
                ds["metadata"]["namespace"],
                ds["metadata"]["name"],
                lambda o: o.setdefault("status", {}).update(status),
                "status",
            )
