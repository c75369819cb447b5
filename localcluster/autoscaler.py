"""The HorizontalPodAutoscaler controller (autoscaling/v2), on the kubelet's resource metrics.

Every sync period it follows the real algorithm for ``Resource`` metrics (cpu, memory; targets
``Utilization`` of the pods' requests or ``AverageValue``): the ratio of usage to target over
the pods that report metrics, a 10 % tolerance, ``desired = ceil(ratio * pods)`` and the
largest proposal across metrics; then ``behavior``: the stabilization windows (scale-down keeps
the highest recommendation of its window, 300 s by default; scale-up the lowest of its, 0 s)
and the rate policies (``Pods``/``Percent`` with ``selectPolicy``; by default up to double or
+4 pods, down to the floor), clamped to min/maxReplicas. It writes the target's replicas, the
status (``currentMetrics``, the AbleToScale, ScalingActive and ScalingLimited conditions,
``lastScaleTime``) and ``SuccessfulRescale`` events. Pods, Object and External metrics are not
served (ScalingActive False says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import time
from collections.abc import Callable

from localcluster import errors, events
from localcluster.quantity import parse as parse_quantity
from localcluster.resources import BY_KIND, HPAS, PODS
from localcluster.selectors import match_label_selector
from localcluster.store import Obj, Store, now

TOLERANCE = 0.1
DEFAULT_UP = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [{"type": "Percent", "value": 100}, {"type": "Pods", "value": 4}],
}
DEFAULT_DOWN = {
    "stabilizationWindowSeconds": 300,
    "selectPolicy": "Max",
    "policies": [{"type": "Percent", "value": 100}],
}
PodMetrics = Callable[[str], list[Obj]]


class Autoscaler:
    def __init__(self, store: Store, pod_metrics: PodMetrics, sync_seconds: float = 15.0) -> None:
        self.store, self.pod_metrics, self.sync_seconds = store, pod_metrics, sync_seconds
        self.recommendations: dict[str, list[tuple[float, int]]] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.sync_seconds)
            self.reconcile()

    def reconcile(self) -> None:
        for hpa in self.store.list(HPAS):
            with contextlib.suppress(errors.ApiError):
                self.autoscale(hpa)

    def autoscale(self, hpa: Obj) -> None:
        ns, spec = hpa["metadata"]["namespace"], hpa["spec"]
        ref = spec["scaleTargetRef"]
        kind = BY_KIND.get((ref.get("apiVersion", ""), ref.get("kind", "")))
        target = self.store.find(kind, ns, ref["name"]) if kind else None
        status = copy.deepcopy(hpa.get("status") or {})
        conditions: list[Obj] = status.get("conditions") or []
        if kind is None or target is None:
            _condition(
                conditions,
                "AbleToScale",
                "False",
                "FailedGetScale",
                f"the HPA controller was unable to get the target's current scale: "
                f'{(ref.get("kind") or "").lower()}s "{ref["name"]}" not found',
            )
            return self._write(hpa, status, conditions)
        current = int(target["spec"].get("replicas", 1))
        status["currentReplicas"] = target.get("status", {}).get("replicas", current)
        _condition(
            conditions,
            "AbleToScale",
            "True",
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        )
        if current == 0:
            disabled = "scaling is disabled since the replica count of the target is zero"
            _condition(conditions, "ScalingActive", "False", "ScalingDisabled", disabled)
            status["desiredReplicas"] = 0
            return self._write(hpa, status, conditions)

        selector = target["spec"].get("selector")
        pods = [
            p
            for p in self.store.list(PODS, ns)
            if match_label_selector(selector, p["metadata"].get("labels") or {})
            and not p["metadata"].get("deletionTimestamp")
            and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
        ]
        usage = {m["metadata"]["name"]: m for m in self.pod_metrics(ns)}
        proposals, current_metrics, problem = [], [], None
        for metric in spec.get("metrics") or [_default_cpu()]:
            try:
                proposal, observed = self._proposal(metric, pods, usage, current)
            except ValueError as exc:
                problem = str(exc)
                continue
            proposals.append(proposal)
            current_metrics.append(observed)
        if problem is not None and not proposals:
            _condition(conditions, "ScalingActive", "False", "FailedGetResourceMetric", problem)
            return self._write(hpa, status, conditions)
        _condition(
            conditions,
            "ScalingActive",
            "True",
            "ValidMetricFound",
            "the HPA was able to successfully calculate a replica count from resource metrics",
        )
        status["currentMetrics"] = current_metrics
        desired = self._behave(hpa, current, max(proposals))
        floor, ceiling = spec.get("minReplicas", 1), spec["maxReplicas"]
        bounded = min(max(desired, floor), ceiling)
        if bounded != desired:
            above = desired > ceiling
            reason = "TooManyReplicas" if above else "TooFewReplicas"
            bound = "more than the maximum" if above else "less than the minimum"
            _condition(
                conditions,
                "ScalingLimited",
                "True",
                reason,
                f"the desired replica count is {bound} replica count",
            )
        else:
            _condition(
                conditions,
                "ScalingLimited",
                "False",
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            )
        status["desiredReplicas"] = bounded
        if bounded != current:
            self.store.update(
                kind, ns, ref["name"], lambda o: o["spec"].__setitem__("replicas", bounded)
            )
            status["lastScaleTime"] = now()
            metric_name = _describe(spec.get("metrics") or [_default_cpu()])
            direction = "above" if bounded > current else "below"
            events.record(
                self.store,
                hpa,
                "Normal",
                "SuccessfulRescale",
                f"New size: {bounded}; reason: {metric_name} {direction} target",
                "horizontal-pod-autoscaler",
            )
            done = f"the HPA controller was able to update the target scale to {bounded}"
            _condition(conditions, "AbleToScale", "True", "SucceededRescale", done)
        else:
            _condition(
                conditions,
                "AbleToScale",
                "True",
                "ReadyForNewScale",
                "recommended size matches current size",
            )
        self._write(hpa, status, conditions)

    def _proposal(
        self, metric: Obj, pods: list[Obj], usage: dict[str, Obj], current: int
    ) -> tuple[int, Obj]:
        if metric.get("type") != "Resource":
            raise ValueError(f"localcluster serves Resource metrics only, not {metric.get('type')}")
        resource = metric["resource"]
        name, target = resource["name"], resource["target"]
        measured = [p for p in pods if p["metadata"]["name"] in usage]
        if not measured:
            raise ValueError(
                f"unable to get metrics for resource {name}: no metrics returned from resource "
                "metrics API"
            )
        used = sum(_pod_usage(usage[p["metadata"]["name"]], name) for p in measured)
        observed: Obj = {"type": "Resource", "resource": {"name": name, "current": {}}}
        if target.get("type", "Utilization") == "Utilization":
            requested = 0.0
            for pod in measured:
                for c in pod["spec"].get("containers", []):
                    request = ((c.get("resources") or {}).get("requests") or {}).get(name)
                    if request is None:
                        raise ValueError(
                            f"failed to get {name} utilization: missing request for {name} in "
                            f"container {c['name']} of Pod {pod['metadata']['name']}"
                        )
                    requested += float(parse_quantity(str(request)))
            utilization = 100 * used / requested
            ratio = utilization / target["averageUtilization"]
            observed["resource"]["current"] = {
                "averageUtilization": round(utilization),
                "averageValue": _quantity(name, used / len(measured)),
            }
        else:
            average = used / len(measured)
            ratio = average / float(parse_quantity(str(target["averageValue"])))
            observed["resource"]["current"] = {"averageValue": _quantity(name, average)}
        if abs(ratio - 1.0) <= TOLERANCE:
            return current, observed
        return math.ceil(ratio * len(measured)), observed

    def _behave(self, hpa: Obj, current: int, proposal: int) -> int:
        """Stabilization windows, then the rate policies."""
        behavior = hpa["spec"].get("behavior") or {}
        up = {**DEFAULT_UP, **(behavior.get("scaleUp") or {})}
        down = {**DEFAULT_DOWN, **(behavior.get("scaleDown") or {})}
        at = time.monotonic()
        history = self.recommendations.setdefault(hpa["metadata"]["uid"], [])
        history.append((at, proposal))
        longest = max(up["stabilizationWindowSeconds"], down["stabilizationWindowSeconds"])
        history[:] = [(t, r) for t, r in history if at - t <= longest]
        in_up = [r for t, r in history if at - t <= up["stabilizationWindowSeconds"]]
        in_down = [r for t, r in history if at - t <= down["stabilizationWindowSeconds"]]
        desired = proposal
        if proposal > current:
            desired = max(min(in_up or [proposal]), current)
            return min(desired, _limit(up, current, +1))
        if proposal < current:
            desired = min(max(in_down or [proposal]), current)
            return max(desired, _limit(down, current, -1))
        return desired

    def _write(self, hpa: Obj, status: Obj, conditions: list[Obj]) -> None:
        status["conditions"] = conditions
        status.setdefault("currentReplicas", 0)
        status.setdefault("desiredReplicas", status["currentReplicas"])
        status["observedGeneration"] = hpa["metadata"].get("generation", 1)
        if status != hpa.get("status"):
            self.store.update(
                HPAS,
                hpa["metadata"]["namespace"],
                hpa["metadata"]["name"],
                lambda o: o.__setitem__("status", status),
                "status",
            )


def _limit(rules: Obj, current: int, sign: int) -> int:
    """The furthest the policies let one sync go from ``current`` (up: +1, down: -1)."""
    select = rules.get("selectPolicy", "Max")
    if select == "Disabled":
        return current
    steps: list[int] = [
        int(policy["value"])
        if policy["type"] == "Pods"
        else math.ceil(current * policy["value"] / 100)
        for policy in rules.get("policies") or []
    ]
    if not steps:
        return current + sign * 10**9
    step: int = max(steps) if select == "Max" else min(steps)
    return current + sign * step


def _pod_usage(metrics: Obj, resource: str) -> float:
    return sum(
        float(parse_quantity(c["usage"][resource]))
        for c in metrics.get("containers", [])
        if resource in c.get("usage", {})
    )


def _quantity(resource: str, value: float) -> str:
    return f"{round(value * 1000)}m" if resource == "cpu" else str(round(value))


def _describe(metrics: list[Obj]) -> str:
    names = [m.get("resource", {}).get("name", m.get("type", "")) for m in metrics]
    return " and ".join(f"{n} resource utilization (percentage of request)" for n in names)


def _default_cpu() -> Obj:
    """autoscaling/v2's default when ``metrics`` is empty: 80 % of the CPU request."""
    return {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
    }


def _condition(conditions: list[Obj], type_: str, status: str, reason: str, message: str) -> None:
    found = next((c for c in conditions if c["type"] == type_), None)
    if found is None:
        conditions.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now(),
            }
        )
        return
    if found["status"] != status:
        found["lastTransitionTime"] = now()
    found.update(status=status, reason=reason, message=message)
