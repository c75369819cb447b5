"""Controllers: ReplicaSet, Deployment and Endpoints, reconciling through the store (and the
Job and CronJob controllers of ``localcluster.jobs``, on the same loop).

They follow the real controllers' rules where clients can see them: ``pod-template-hash``
labels and ReplicaSet names, the ``deployment.kubernetes.io/revision`` annotation (so that
``kubectl rollout undo`` finds earlier templates), RollingUpdate bounded by maxSurge and
maxUnavailable, Recreate, paused, minReadySeconds, revisionHistoryLimit, the Available and
Progressing conditions with ``ProgressDeadlineExceeded``, and Endpoints listing only ready,
non-terminating pods.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import uuid
from typing import Any

from localcluster import disruption, errors, events
from localcluster.daemonsets import DaemonSetController
from localcluster.jobs import CronJobController, JobController
from localcluster.objects import (
    owned_by,
    owner_ref,
    parse_time,
    pod_available,
    pod_ready,
    resolve_count,
    template_hash,
)
from localcluster.resources import (
    DEPLOYMENTS,
    ENDPOINTS,
    NAMESPACES,
    PODS,
    PVCS,
    REPLICASETS,
    REPLICATION_CONTROLLERS,
    SERVICE_ACCOUNTS,
    SERVICES,
    Kind,
)
from localcluster.selectors import match_label_selector
from localcluster.store import Obj, Store, now

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"


class Controllers:
    def __init__(self, store: Store, backoff_seconds: float = 10.0) -> None:
        self.store = store
        self.jobs = JobController(store, backoff_seconds)
        self.cronjobs = CronJobController(store)
        self.daemonsets = DaemonSetController(store)

    async def run(self) -> None:
        while True:
            seen = self.store.revision
            self.reconcile()
            await self.store.changed_since(seen, 0.5)

    def reconcile(self) -> None:
        for deployment in self.store.list(DEPLOYMENTS):
            with contextlib.suppress(errors.ApiError):
                self.deployment(deployment)
        for rs in self.store.list(REPLICASETS):
            with contextlib.suppress(errors.ApiError):
                self.replicaset(rs)
        for rc in self.store.list(REPLICATION_CONTROLLERS):
            with contextlib.suppress(errors.ApiError):
                self.replicaset(rc, REPLICATION_CONTROLLERS, "replication-controller")
        self.daemonsets.reconcile()
        for service in self.store.list(SERVICES):
            with contextlib.suppress(errors.ApiError):
                self.endpoints(service)
        self.cronjobs.reconcile()
        self.jobs.reconcile()
        self.default_service_accounts()
        disruption.reconcile(self.store)
        self.store.finish_foreground()
        for claim in self.store.list(PVCS):
            if claim.get("status", {}).get("phase") != "Bound":
                with contextlib.suppress(errors.ApiError):
                    self.bind_claim(claim)

    def default_service_accounts(self) -> None:
        """The ServiceAccount controller's one job here: a ``default`` account per namespace."""
        for namespace in self.store.list(NAMESPACES):
            name = namespace["metadata"]["name"]
            if namespace.get("status", {}).get("phase") == "Terminating":
                continue
            if self.store.find(SERVICE_ACCOUNTS, name, "default") is None:
                with contextlib.suppress(errors.ApiError):
                    self.store.create(SERVICE_ACCOUNTS, name, {"metadata": {"name": "default"}})

    def bind_claim(self, claim: Obj) -> None:
        """A local-path provisioner: every claim binds at once to a folder on this machine."""
        requested = claim["spec"].get("resources", {}).get("requests", {}).get("storage", "1Gi")

        def bind(o: Obj) -> None:
            o["status"] = {
                "phase": "Bound",
                "accessModes": o["spec"].get("accessModes", []),
                "capacity": {"storage": requested},
            }

        self.store.update(
            PVCS, claim["metadata"]["namespace"], claim["metadata"]["name"], bind, "status"
        )

    # -- ReplicaSet (and the ReplicationController, its older form) ------------------------
    def replicaset(
        self, rs: Obj, kind: Kind = REPLICASETS, source: str = "replicaset-controller"
    ) -> None:
        ns = rs["metadata"]["namespace"]
        if rs["metadata"].get("deletionTimestamp"):
            return
        pods = [p for p in self.store.list(PODS, ns) if owned_by(p, rs)]
        live = [
            p
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
        ]
        desired = rs["spec"].get("replicas", 1)
        if len(live) < desired:
            for _ in range(desired - len(live)):
                self._create_pod(rs, source)
        elif len(live) > desired:
            # Delete not-ready pods first, then the newest: what the real controller prefers.
            order = sorted(
                live,
                key=lambda p: (pod_ready(p), p["metadata"]["creationTimestamp"]),
                reverse=False,
            )
            victims = order[: len(live) - desired]
            for pod in victims:
                with contextlib.suppress(errors.ApiError):
                    self.store.delete(PODS, ns, pod["metadata"]["name"])
                events.record(
                    self.store,
                    rs,
                    "Normal",
                    "SuccessfulDelete",
                    f"Deleted pod: {pod['metadata']['name']}",
                    source,
                )
        min_ready = rs["spec"].get("minReadySeconds", 0)
        current = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        status = {
            "replicas": len(current),
            "fullyLabeledReplicas": len(current),
            "readyReplicas": sum(pod_ready(p) for p in current),
            "availableReplicas": sum(pod_available(p, min_ready) for p in current),
            "observedGeneration": rs["metadata"].get("generation", 1),
        }
        if {k: rs.get("status", {}).get(k) for k in status} != status:
            self.store.update(
                kind,
                ns,
                rs["metadata"]["name"],
                lambda o: o.setdefault("status", {}).update(status),
                "status",
            )

    def _create_pod(self, rs: Obj, source: str) -> None:
        template = copy.deepcopy(rs["spec"]["template"])
        meta = template.setdefault("metadata", {})
        name = f"{rs['metadata']['name']}-{uuid.uuid4().hex[:5]}"
        pod = {
            "metadata": {
                "name": name,
                "labels": meta.get("labels", {}),
                "annotations": meta.get("annotations", {}),
                "ownerReferences": [owner_ref(rs)],
            },
            "spec": template["spec"],
        }
        self.store.create(PODS, rs["metadata"]["namespace"], pod)
        events.record(
            self.store,
            rs,
            "Normal",
            "SuccessfulCreate",
            f"Created pod: {name}",
            source,
        )

    # -- Deployment ------------------------------------------------------------------------
    def deployment(self, d: Obj) -> None:
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        if d["metadata"].get("deletionTimestamp"):
            return
        spec = d["spec"]
        replicas = spec.get("replicas", 1)
        owned = [rs for rs in self.store.list(REPLICASETS, ns) if owned_by(rs, d)]
        template = copy.deepcopy(spec["template"])
        digest = template_hash(template)
        new = next((rs for rs in owned if rs["metadata"]["labels"].get(HASH_LABEL) == digest), None)
        revisions = [int(rs["metadata"].get("annotations", {}).get(REVISION, "0")) for rs in owned]
        top = max(revisions, default=0)
        if spec.get("paused"):
            self._deployment_status(d, owned, new, replicas)
            return
        if new is None:
            new = self._create_rs(d, template, digest, top + 1, 0)
            owned.append(new)
            events.record(
                self.store,
                d,
                "Normal",
                "ScalingReplicaSet",
                f"Scaled up replica set {new['metadata']['name']} from 0 to 0",
                "deployment-controller",
            )
        elif int(new["metadata"].get("annotations", {}).get(REVISION, "0")) < top:
            new = self.store.update(
                REPLICASETS,
                ns,
                new["metadata"]["name"],
                lambda o: (
                    o["metadata"].setdefault("annotations", {}).__setitem__(REVISION, str(top + 1))
                ),
            )
        old = [rs for rs in owned if rs["metadata"]["uid"] != new["metadata"]["uid"]]
        strategy = spec.get("strategy") or {"type": "RollingUpdate"}
        if strategy.get("type") == "Recreate":
            self._recreate(d, new, old, replicas)
        else:
            self._rolling(d, new, old, replicas, strategy.get("rollingUpdate") or {})
        self._cleanup(d, old)
        owned = [rs for rs in self.store.list(REPLICASETS, ns) if owned_by(rs, d)]
        new = next(rs for rs in owned if rs["metadata"]["uid"] == new["metadata"]["uid"])
        self._deployment_status(self.store.get(DEPLOYMENTS, ns, name), owned, new, replicas)

    def _create_rs(self, d: Obj, template: Obj, digest: str, revision: int, size: int) -> Obj:
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = digest
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = digest
        rs = {
            "metadata": {
                "name": f"{d['metadata']['name']}-{digest}",
                "labels": {**template["metadata"]["labels"]},
                "annotations": {
                    REVISION: str(revision),
                    "deployment.kubernetes.io/desired-replicas": str(d["spec"].get("replicas", 1)),
                },
                "ownerReferences": [owner_ref(d)],
            },
            "spec": {
                "replicas": size,
                "selector": selector,
                "template": template,
                "minReadySeconds": d["spec"].get("minReadySeconds", 0),
            },
        }
        return self.store.create(REPLICASETS, d["metadata"]["namespace"], rs)

    def _scale(self, d: Obj, rs: Obj, size: int) -> None:
        before = rs["spec"].get("replicas", 0)
        if before == size:
            return
        self.store.update(
            REPLICASETS,
            rs["metadata"]["namespace"],
            rs["metadata"]["name"],
            lambda o: o["spec"].__setitem__("replicas", size),
        )
        rs["spec"]["replicas"] = size
        verb = "up" if size > before else "down"
        events.record(
            self.store,
            d,
            "Normal",
            "ScalingReplicaSet",
            f"Scaled {verb} replica set {rs['metadata']['name']} from {before} to {size}",
            "deployment-controller",
        )

    def _recreate(self, d: Obj, new: Obj, old: list[Obj], replicas: int) -> None:
        for rs in old:
            self._scale(d, rs, 0)
        ns = d["metadata"]["namespace"]
        old_pods = [p for p in self.store.list(PODS, ns) if any(owned_by(p, rs) for rs in old)]
        if not old_pods:
            self._scale(d, new, replicas)

    def _rolling(self, d: Obj, new: Obj, old: list[Obj], replicas: int, params: Obj) -> None:
        surge = resolve_count(params.get("maxSurge", "25%"), replicas, round_up=True)
        unavailable = resolve_count(params.get("maxUnavailable", "25%"), replicas, round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        min_ready = d["spec"].get("minReadySeconds", 0)
        ns = d["metadata"]["namespace"]
        # A terminating pod may still be Ready, but it is on its way out: it counts for nothing.
        pods = [p for p in self.store.list(PODS, ns) if not p["metadata"].get("deletionTimestamp")]

        def available(rs: Obj) -> int:
            return sum(pod_available(p, min_ready) for p in pods if owned_by(p, rs))

        total = sum(rs["spec"].get("replicas", 0) for rs in [new, *old])
        # Scale up the new ReplicaSet within maxSurge.
        room = replicas + surge - total
        target = min(replicas, new["spec"].get("replicas", 0) + max(room, 0))
        if new["spec"].get("replicas", 0) > replicas:
            target = replicas
        self._scale(d, new, target)
        # Scale down old ReplicaSets while keeping replicas - maxUnavailable available.
        total_available = available(new) + sum(available(rs) for rs in old)
        can_remove = total_available - (replicas - unavailable)
        for rs in sorted(old, key=lambda r: r["metadata"]["creationTimestamp"]):
            size = rs["spec"].get("replicas", 0)
            unready = size - available(rs)
            # Unavailable old pods can go at once: they serve nothing.
            drop = min(size, max(unready, 0) + max(can_remove, 0))
            if drop > 0:
                self._scale(d, rs, size - drop)
                can_remove -= max(drop - max(unready, 0), 0)

    def _cleanup(self, d: Obj, old: list[Obj]) -> None:
        limit = d["spec"].get("revisionHistoryLimit", 10)
        idle = [
            rs
            for rs in old
            if rs["spec"].get("replicas", 0) == 0 and rs.get("status", {}).get("replicas", 0) == 0
        ]
        idle.sort(key=lambda r: int(r["metadata"].get("annotations", {}).get(REVISION, "0")))
        for rs in idle[: max(len(idle) - limit, 0)]:
            with contextlib.suppress(errors.ApiError):
                self.store.delete(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"])

    def _deployment_status(self, d: Obj, owned: list[Obj], new: Obj | None, replicas: int) -> None:
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        pods = [p for p in self.store.list(PODS, ns) if any(owned_by(p, rs) for rs in owned)]
        pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        min_ready = d["spec"].get("minReadySeconds", 0)
        new_pods = [p for p in pods if new is not None and owned_by(p, new)]
        status: dict[str, Any] = {
            "observedGeneration": d["metadata"].get("generation", 1),
            "replicas": len(pods),
            "updatedReplicas": len(new_pods),
            "readyReplicas": sum(pod_ready(p) for p in pods),
            "availableReplicas": sum(pod_available(p, min_ready) for p in pods),
        }
        status["unavailableReplicas"] = max(replicas - status["availableReplicas"], 0)
        strategy = d["spec"].get("strategy") or {}
        unavailable = resolve_count(
            (strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%"),
            replicas,
            round_up=False,
        )
        if strategy.get("type") == "Recreate":
            unavailable = replicas
        previous = d.get("status", {})
        conditions = copy.deepcopy(previous.get("conditions", []))
        is_available = status["availableReplicas"] >= replicas - unavailable
        _set(
            conditions,
            "Available",
            "True" if is_available else "False",
            "MinimumReplicasAvailable" if is_available else "MinimumReplicasUnavailable",
            "Deployment has minimum availability."
            if is_available
            else "Deployment does not have minimum availability.",
        )
        complete = (
            status["updatedReplicas"] == replicas
            and status["replicas"] == replicas
            and status["availableReplicas"] == replicas
        )
        progress = next((c for c in conditions if c["type"] == "Progressing"), None)
        changed = {
            k: previous.get(k) for k in ("updatedReplicas", "availableReplicas", "replicas")
        } != {k: status[k] for k in ("updatedReplicas", "availableReplicas", "replicas")}
        rs_name = new["metadata"]["name"] if new else name
        deadline = d["spec"].get("progressDeadlineSeconds", 600)
        if complete:
            _set(
                conditions,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{rs_name}" has successfully progressed.',
            )
        elif d["spec"].get("paused"):
            _set(conditions, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused")
        elif (
            progress is None
            or changed
            or progress.get("reason") in ("NewReplicaSetAvailable", "DeploymentPaused")
            or (d["metadata"].get("generation", 1) != previous.get("observedGeneration"))
        ):
            _set(
                conditions,
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                f'ReplicaSet "{rs_name}" is progressing.',
                touch=True,
            )
        elif progress.get("reason") != "ProgressDeadlineExceeded":
            since = parse_time(progress.get("lastUpdateTime") or progress["lastTransitionTime"])
            if (dt.datetime.now(dt.UTC) - since).total_seconds() > deadline:
                _set(
                    conditions,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    f'ReplicaSet "{rs_name}" has timed out progressing.',
                )
                events.record(
                    self.store,
                    d,
                    "Warning",
                    "ProgressDeadlineExceeded",
                    f'Deployment "{name}" has timed out progressing.',
                    "deployment-controller",
                )
        status["conditions"] = conditions
        if {k: previous.get(k) for k in status} != status:
            self.store.update(
                DEPLOYMENTS,
                ns,
                name,
                lambda o: o.__setitem__("status", {**o.get("status", {}), **status}),
                "status",
            )

    # -- Endpoints -------------------------------------------------------------------------
    def endpoints(self, service: Obj) -> None:
        selector = service["spec"].get("selector")
        if not selector:
            return
        ns, name = service["metadata"]["namespace"], service["metadata"]["name"]
        pods = [
            p
            for p in self.store.list(PODS, ns)
            if match_label_selector({"matchLabels": selector}, p["metadata"].get("labels") or {})
            and p.get("status", {}).get("podIP")
        ]
        # publishNotReadyAddresses: every live pod is an address (a rendezvous needs its peers'
        # names before any of them is ready).
        publish_all = bool(service["spec"].get("publishNotReadyAddresses"))
        ready = [
            p
            for p in pods
            if pod_ready(p)
            or (
                publish_all
                and not p["metadata"].get("deletionTimestamp")
                and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
            )
        ]
        not_ready = [
            p
            for p in pods
            if p not in ready
            and not p["metadata"].get("deletionTimestamp")
            and p.get("status", {}).get("phase") == "Running"
        ]

        def address(p: Obj) -> dict[str, Any]:
            found = {
                "ip": p["status"]["podIP"],
                "nodeName": p["spec"].get("nodeName"),
                "targetRef": {
                    "kind": "Pod",
                    "namespace": ns,
                    "name": p["metadata"]["name"],
                    "uid": p["metadata"]["uid"],
                },
            }
            # A pod whose subdomain names this Service gets a DNS name under it.
            if p["spec"].get("hostname") and p["spec"].get("subdomain") == name:
                found["hostname"] = p["spec"]["hostname"]
            return found

        ports = []
        for port in service["spec"].get("ports", []):
            ports.append(
                {
                    "name": port.get("name", ""),
                    "protocol": port.get("protocol", "TCP"),
                    "port": resolve_target_port(port, ready[0] if ready else None),
                }
            )
        subsets = []
        if ready or not_ready:
            subset: dict[str, Any] = {"ports": ports}
            if ready:
                subset["addresses"] = [address(p) for p in ready]
            if not_ready:
                subset["notReadyAddresses"] = [address(p) for p in not_ready]
            subsets.append(subset)
        current = self.store.find(ENDPOINTS, ns, name)
        if current is None:
            self.store.create(
                ENDPOINTS,
                ns,
                {
                    "metadata": {"name": name, "labels": service["metadata"].get("labels", {})},
                    "subsets": subsets,
                },
            )
        elif current.get("subsets", []) != subsets:
            self.store.update(ENDPOINTS, ns, name, lambda o: o.__setitem__("subsets", subsets))


def resolve_target_port(port: Obj, pod: Obj | None) -> int:
    target: Any = port.get("targetPort", port["port"])
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    if pod is not None:
        for container in pod["spec"].get("containers", []):
            for p in container.get("ports", []):
                if p.get("name") == target:
                    return int(p["containerPort"])
    return int(port["port"])


def _set(
    conditions: list[Obj], type_: str, status: str, reason: str, message: str, touch: bool = False
) -> None:
    stamp = now()
    current = next((c for c in conditions if c["type"] == type_), None)
    if current is None:
        conditions.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastUpdateTime": stamp,
                "lastTransitionTime": stamp,
            }
        )
        return
    if current["status"] != status:
        current["lastTransitionTime"] = stamp
    if current.get("reason") != reason or current.get("message") != message or touch:
        current["lastUpdateTime"] = stamp
    current.update(status=status, reason=reason, message=message)
