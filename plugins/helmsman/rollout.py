"""Rolling a model version out to the serving Deployment, and waiting for it properly.

The serving stack (Deployment, Service, PodDisruptionBudget) comes from
``manifests/serving.yaml``; :func:`render` fills in the names, the model version and the
lineage annotations, :func:`apply` creates what is absent and patches what exists, and
:func:`wait_for_rollout` waits the way ``kubectl rollout status`` does (observedGeneration,
updated / available replicas, the progress deadline). :func:`health_gate` checks a version
before it may serve, and the strategies (:class:`Rolling`, :class:`BlueGreen`,
:class:`Canary`) say where a new version starts, where the gate looks, how it is finished
and how it is undone.

Every strategy is declarative: starting the same version twice changes nothing, so a deploy
task re-run after a crash converges on the rollout already under way instead of starting a
second one. The state of the rollout in progress is kept in the ``helmsman.io/rollout``
annotation of the Service (who, which version, which phase), which is also the lock that
keeps two rollouts of one Service apart.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFESTS = Path(__file__).parent / "manifests" / "serving.yaml"
MODEL_ANNOTATION = "helmsman.io/model-version"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
REVISION = "deployment.kubernetes.io/revision"
SLOT_LABEL = "helmsman.io/slot"  # blue-green: which of the two Deployments a pod belongs to
TRACK_LABEL = "helmsman.io/track"  # canary: the canary pods' extra label
STATE_ANNOTATION = "helmsman.io/rollout"
SERVING_NAME = "helmsman-serving"


class RolloutFailed(Exception):
    """The Deployment did not become fully available with the new version."""


@dataclass(frozen=True)
class Target:
    """Which serving Deployment, serving which model version, from which image."""

    name: str
    namespace: str
    model_name: str
    model_version: str
    image: str = ""
    replicas: int = 2
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.model_version}"


def base_labels(target: Target) -> dict[str, str]:
    return {NAME_LABEL: SERVING_NAME, INSTANCE_LABEL: target.name}


MAIN_SLOT = "main"  # the Deployment named like the Service; blue-green adds "blue" and "green"


def deployment_name(service: str, slot: str) -> str:
    return service if slot == MAIN_SLOT else f"{service}-{slot}"


def render(
    target: Target,
    *,
    slot: str = MAIN_SLOT,
    name: str | None = None,
    extra_labels: dict[str, str] | None = None,
    replicas: int | None = None,
) -> list[dict[str, Any]]:
    """The serving objects for ``target``, from the manifests kept in the repo.

    Every serving pod carries a slot label and the Service selects one slot: ``main`` is the
    Deployment named like the Service; blue-green alternates ``blue`` and ``green``. The
    Deployment may take another ``name`` and ``extra_labels`` (the canary track) that go into
    its selector and pod labels; the Service and the PDB keep ``target.name``.
    """
    import yaml

    docs = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    labels = {INSTANCE_LABEL: target.name}
    pod_labels = {**labels, SLOT_LABEL: slot, **(extra_labels or {})}
    objects = []
    for doc in docs:
        obj = copy.deepcopy(doc)
        meta = obj["metadata"]
        meta["name"], meta["namespace"] = target.name, target.namespace
        meta.setdefault("labels", {}).update(labels)
        kind = obj["kind"]
        if kind == "Deployment":
            meta["name"] = name or deployment_name(target.name, slot)
            meta["labels"].update(pod_labels)
            spec = obj["spec"]
            spec["replicas"] = target.replicas if replicas is None else replicas
            spec["selector"]["matchLabels"].update(pod_labels)
            template = spec["template"]
            template["metadata"]["labels"].update(pod_labels)
            template["metadata"].setdefault("annotations", {})[MODEL_ANNOTATION] = (
                target.model_version
            )
            container = template["spec"]["containers"][0]
            args = container["args"]
            args[args.index("--model-uri") + 1] = target.model_uri
            if target.image:
                container["image"] = target.image
            meta.setdefault("annotations", {}).update(target.annotations)
        elif kind == "Service":
            obj["spec"]["selector"].update({**labels, SLOT_LABEL: slot})
        elif kind == "PodDisruptionBudget":
            obj["spec"]["selector"]["matchLabels"].update(labels)
        objects.append(obj)
    return objects


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind)


def apply(api_client: Any, objects: list[dict[str, Any]]) -> None:
    """Create each object that is absent; patch (strategic merge) each that exists."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    apps, core, policy = (
        client.AppsV1Api(api_client),
        client.CoreV1Api(api_client),
        client.PolicyV1Api(api_client),
    )
    verbs = {
        "Deployment": (
            apps.read_namespaced_deployment,
            apps.create_namespaced_deployment,
            apps.patch_namespaced_deployment,
        ),
        "Service": (
            core.read_namespaced_service,
            core.create_namespaced_service,
            core.patch_namespaced_service,
        ),
        "PodDisruptionBudget": (
            policy.read_namespaced_pod_disruption_budget,
            policy.create_namespaced_pod_disruption_budget,
            policy.patch_namespaced_pod_disruption_budget,
        ),
    }
    for obj in objects:
        read, create, patch = verbs[obj["kind"]]
        name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        try:
            read(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            create(namespace, obj)
            continue
        if obj["kind"] == "Service":
            # The rollout owns the whole selector: a label it no longer selects is removed.
            obj = copy.deepcopy(obj)
            selector = obj["spec"]["selector"]
            selector.update({k: None for k in (TRACK_LABEL,) if k not in selector})
        patch(name, namespace, obj)


@dataclass(frozen=True)
class Progress:
    done: bool
    failed: str | None
    summary: str


def progress(d: Any) -> Progress:
    """How far a Deployment (a client model, sync or asyncio) is through its rollout."""
    status, wanted = d.status, d.spec.replicas
    updated, available = status.updated_replicas or 0, status.available_replicas or 0
    summary = f"updated {updated}/{wanted}, available {available}/{wanted}"
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            name = f"{d.metadata.namespace}/{d.metadata.name}"
            return Progress(False, f"deployment {name}: {condition.message} ({summary})", summary)
    done = (
        (status.observed_generation or 0) >= d.metadata.generation
        and updated == wanted
        and (status.replicas or 0) == wanted
        and available == wanted
    )
    return Progress(done, None, summary)


def wait_for_rollout(api_client: Any, name: str, namespace: str, timeout: float = 600) -> None:
    """Return once every replica runs the current template and is available.

    Raises RolloutFailed when the Deployment reports ProgressDeadlineExceeded or ``timeout``
    passes, saying how far it got.
    """
    from kubernetes import client

    apps = client.AppsV1Api(api_client)
    deadline = time.monotonic() + timeout
    while True:
        state = progress(apps.read_namespaced_deployment(name, namespace))
        if state.failed:
            raise RolloutFailed(state.failed)
        if state.done:
            return
        if time.monotonic() > deadline:
            raise RolloutFailed(
                f"deployment {namespace}/{name} timed out after {timeout:.0f}s ({state.summary})"
            )
        time.sleep(1)


def served_version(api_client: Any, name: str, namespace: str) -> str | None:
    """The model version the Deployment's current template serves (None if it is absent or
    scaled to zero: then nothing serves)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        d = client.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    if not d.spec.replicas:
        return None
    annotations = d.spec.template.metadata.annotations or {}
    version: str | None = annotations.get(MODEL_ANNOTATION)
    return version


def rollback(api_client: Any, name: str, namespace: str, timeout: float = 600) -> str | None:
    """Return the Deployment to its previous revision (what ``kubectl rollout undo`` does).

    Returns the model version now served, or None when there was no earlier revision.
    """
    from kubernetes import client

    apps = client.AppsV1Api(api_client)
    deployment = apps.read_namespaced_deployment(name, namespace)
    owned = [
        rs
        for rs in apps.list_namespaced_replica_set(namespace).items
        if any(ref.uid == deployment.metadata.uid for ref in rs.metadata.owner_references or [])
    ]
    owned.sort(key=lambda rs: int((rs.metadata.annotations or {}).get(REVISION, "0")), reverse=True)
    if len(owned) < 2:
        return None
    previous = api_client.sanitize_for_serialization(owned[1].spec.template)
    previous["metadata"]["labels"].pop("pod-template-hash", None)
    apps.patch_namespaced_deployment(
        name, namespace, [{"op": "replace", "path": "/spec/template", "value": previous}]
    )
    wait_for_rollout(api_client, name, namespace, timeout)
    return served_version(api_client, name, namespace)


@dataclass
class GateResult:
    passed: bool
    reasons: list[str]
    p99_ms: float = 0.0
    error_rate: float = 0.0


def health_gate(
    api_client: Any,
    target: Target,
    service_url: str,
    golden: dict[str, Any],
    *,
    tolerance: float = 1e-4,
    probe_requests: int = 200,
    max_error_rate: float = 0.0,
    max_p99_ms: float = 250.0,
    pod_labels: dict[str, str] | None = None,
) -> GateResult:
    """Every check the new version must pass before it may serve: all reasons, not the first.

    1. Every pod of the new version (``pod_labels``) is Ready and has not restarted.
    2. ``/metadata`` through the Service reports exactly the expected version.
    3. The golden set's predictions match the offline evaluation within ``tolerance``.
    4. A probe load through the Service stays within the error rate and p99 thresholds.
    """
    import json
    import urllib.error
    import urllib.request

    from kubernetes import client

    reasons: list[str] = []
    core = client.CoreV1Api(api_client)
    selector = label_selector(pod_labels or base_labels(target))
    pods = [
        p
        for p in core.list_namespaced_pod(target.namespace, label_selector=selector).items
        if p.metadata.deletion_timestamp is None
    ]
    if not pods:
        reasons.append(f"no pods match {selector}")
    for pod in pods:
        statuses = pod.status.container_statuses or []
        if not all(s.ready for s in statuses):
            reasons.append(f"pod {pod.metadata.name} is not ready")
        restarts = sum(s.restart_count for s in statuses)
        if restarts:
            reasons.append(f"pod {pod.metadata.name} restarted {restarts} time(s)")

    def call(path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the Service's own http address
            service_url.rstrip("/") + path, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.load(response)

    try:
        seen = {call("/metadata")["model_version"] for _ in range(max(2 * target.replicas, 4))}
        if seen != {target.model_version}:
            reasons.append(
                f"/metadata reports versions {sorted(seen)}, expected {target.model_version}"
            )
        served = call("/predict", {"instances": golden["inputs"]})["predictions"]
        worst = max(abs(a - b) for a, b in zip(served, golden["predictions"], strict=True))
        if worst > tolerance:
            reasons.append(
                f"golden-set predictions differ from evaluation by up to {worst:.6f} "
                f"(tolerance {tolerance})"
            )
    except (OSError, KeyError, ValueError) as exc:
        reasons.append(f"the served model did not answer correctly: {exc}")

    latencies, errors = [], 0
    row = {"instances": golden["inputs"][:1]}
    for _ in range(probe_requests):
        started = time.perf_counter()
        try:
            call("/predict", row)
        except (OSError, ValueError):
            errors += 1
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    p99 = (
        1000 * latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)] if latencies else 0.0
    )
    error_rate = errors / max(probe_requests, 1)
    if error_rate > max_error_rate:
        reasons.append(f"probe load error rate {error_rate:.2%} over {max_error_rate:.2%}")
    if p99 > max_p99_ms:
        reasons.append(f"probe load p99 {p99:.1f} ms over {max_p99_ms:.1f} ms")
    return GateResult(not reasons, reasons, p99, error_rate)


def label_selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def service_url(api_client: Any, name: str, namespace: str) -> str:
    """The Service's cluster address; the deploy task runs where cluster IPs route."""
    from kubernetes import client

    svc = client.CoreV1Api(api_client).read_namespaced_service(name, namespace)
    port = svc.spec.ports[0].port
    return f"http://{svc.spec.cluster_ip}:{port}"


def _read_or_none(read: Any, name: str, namespace: str) -> Any:
    from kubernetes.client.rest import ApiException

    try:
        return read(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _scale(api_client: Any, name: str, namespace: str, replicas: int) -> None:
    from kubernetes import client

    apps = client.AppsV1Api(api_client)
    if _read_or_none(apps.read_namespaced_deployment, name, namespace) is not None:
        apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})


def _delete(api_client: Any, name: str, namespace: str, kind: str) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    delete = {
        "Deployment": apps.delete_namespaced_deployment,
        "Service": core.delete_namespaced_service,
    }[kind]
    try:
        delete(name, namespace, propagation_policy="Foreground")
    except ApiException as exc:
        if exc.status != 404:
            raise


# --- the state of a rollout in progress, kept on the Service -----------------------------------

STALE_AFTER_SECONDS = 3600


class RolloutBusy(Exception):
    """Another DAG run's rollout of this Service is still in progress."""


def read_state(api_client: Any, name: str, namespace: str) -> dict[str, Any]:
    import json

    from kubernetes import client

    svc = _read_or_none(client.CoreV1Api(api_client).read_namespaced_service, name, namespace)
    raw = ((svc.metadata.annotations or {}) if svc else {}).get(STATE_ANNOTATION)
    return dict(json.loads(raw)) if raw else {}


def write_state(api_client: Any, name: str, namespace: str, state: dict[str, Any]) -> None:
    import json

    from kubernetes import client

    body = {"metadata": {"annotations": {STATE_ANNOTATION: json.dumps(state, sort_keys=True)}}}
    client.CoreV1Api(api_client).patch_namespaced_service(name, namespace, body)


def claim(api_client: Any, target: Target, owner: str, strategy: str) -> dict[str, Any]:
    """Take the Service's rollout lock for ``owner`` (a DAG run), or join ``owner``'s own.

    Refuses while another owner's rollout is in progress (phase ``rolling`` or ``gating``)
    and younger than an hour; a finished or stale one is taken over.
    """
    state = read_state(api_client, target.name, target.namespace)
    busy = state.get("phase") in ("rolling", "gating")
    if busy and state.get("owner") != owner:
        age = time.time() - float(state.get("since", 0))
        if age < STALE_AFTER_SECONDS:
            raise RolloutBusy(
                f"service {target.namespace}/{target.name} is being rolled out to version "
                f"{state.get('version')} by {state.get('owner')} (phase {state.get('phase')}, "
                f"{age:.0f}s ago); wait for it or fail that run"
            )
    if state.get("owner") == owner and state.get("version") == target.model_version:
        return state  # a re-run of the same task: converge on the rollout under way
    return {
        "owner": owner,
        "version": target.model_version,
        "strategy": strategy,
        "phase": "rolling",
        "since": time.time(),
    }


# --- strategies ----------------------------------------------------------------------------------


class Strategy:
    """How a new version starts, where the gate looks, how it finishes and how it is undone.

    ``begin`` applies the new version and returns the plan: the Deployment to wait for, the
    Service the gate goes through, the new pods' labels, and what ``finish`` / ``undo`` need
    later. The plan is plain JSON, so the wait can happen in the triggerer and the task resume
    with ``resume(plan)`` in another process. Strategies may follow one another on the same
    Service: each starts from whichever slot serves now.
    """

    name = ""

    def __init__(self, api_client: Any, target: Target, timeout: float = 600) -> None:
        self.api, self.target, self.timeout = api_client, target, timeout
        self.plan: dict[str, Any] = {}

    def live_slot(self) -> str | None:
        """The slot the Service sends traffic to now (None: no Service yet)."""
        svc = _read_or_none_service(self.api, self.target)
        if svc is None:
            return None
        return str((svc.spec.selector or {}).get(SLOT_LABEL, MAIN_SLOT))

    def live_deployment(self) -> str:
        return deployment_name(self.target.name, self.live_slot() or MAIN_SLOT)

    def live_version(self) -> str | None:
        return served_version(self.api, self.live_deployment(), self.target.namespace)

    def begin(self) -> dict[str, Any]:
        raise NotImplementedError

    def resume(self, plan: dict[str, Any]) -> None:
        self.plan = plan

    def finish(self) -> None:
        """After a passed gate: make the new version the only one serving."""

    def undo(self) -> str | None:
        """After a failed gate: serve what served before; return the version serving now."""
        raise NotImplementedError


class Rolling(Strategy):
    """Update the live Deployment in place (maxSurge 1, maxUnavailable 0); undo = its previous
    revision (or, for the very first version, scale to zero: nothing served before)."""

    name = "rolling"

    def begin(self) -> dict[str, Any]:
        slot = self.live_slot() or MAIN_SLOT
        apply(self.api, render(self.target, slot=slot))
        name = deployment_name(self.target.name, slot)
        self.plan = {
            "deployment": name,
            "gate_service": self.target.name,
            "pod_labels": {**base_labels(self.target), SLOT_LABEL: slot},
        }
        return self.plan

    def undo(self) -> str | None:
        name = self.plan["deployment"]
        if served_version(self.api, name, self.target.namespace) == self.target.model_version:
            restored = rollback(self.api, name, self.target.namespace, self.timeout)
            if restored is None:  # the first version ever: nothing to go back to, stop it
                _scale(self.api, name, self.target.namespace, 0)
        return self.live_version()


class BlueGreen(Strategy):
    """The new version gets the idle slot's Deployment and a preview Service; after the gate
    the Service's selector switches to it and the old slot scales to zero. Undo (the switch
    has not happened yet) scales the idle slot down: the Service never left the old slot."""

    name = "blue-green"

    def begin(self) -> dict[str, Any]:
        live = self.live_slot()
        idle = "green" if live == "blue" else "blue"
        objects = render(self.target, slot=idle)
        deployment, service = of_kind(objects, "Deployment"), of_kind(objects, "Service")
        preview = copy.deepcopy(service)
        preview["metadata"]["name"] = f"{self.target.name}-preview"
        if live is None:  # nothing serves yet: the Service points at the first slot at once
            apply(self.api, [deployment, service, of_kind(objects, "PodDisruptionBudget"), preview])
        else:
            apply(self.api, [deployment, preview])
        self.plan = {
            "deployment": deployment["metadata"]["name"],
            "gate_service": preview["metadata"]["name"],
            "pod_labels": {**base_labels(self.target), SLOT_LABEL: idle},
            "old": deployment_name(self.target.name, live) if live else None,
            "idle": idle,
        }
        return self.plan

    def finish(self) -> None:
        from kubernetes import client

        body = {"spec": {"selector": {**base_labels(self.target), SLOT_LABEL: self.plan["idle"]}}}
        client.CoreV1Api(self.api).patch_namespaced_service(
            self.target.name, self.target.namespace, body
        )
        if self.plan["old"]:
            _scale(self.api, self.plan["old"], self.target.namespace, 0)

    def undo(self) -> str | None:
        _scale(self.api, self.plan["deployment"], self.target.namespace, 0)
        return self.live_version()


class Canary(Strategy):
    """One canary replica of the new version joins the live pods behind the Service (its
    share of traffic is 1 / (replicas + 1)); the gate checks it through the canary Service.
    After the gate the live Deployment rolls to the new version and the canary goes; undo
    deletes the canary. The very first version has nothing to be a canary of: it rolls out."""

    name = "canary"

    def canary(self) -> str:
        return f"{self.target.name}-canary"

    def begin(self) -> dict[str, Any]:
        slot = self.live_slot()
        if slot is None or self.live_version() is None:
            self.plan = {**Rolling(self.api, self.target, self.timeout).begin(), "first": True}
            return self.plan
        labels = {TRACK_LABEL: "canary"}
        objects = render(
            self.target, slot=slot, name=self.canary(), extra_labels=labels, replicas=1
        )
        service = copy.deepcopy(of_kind(objects, "Service"))
        service["metadata"]["name"] = self.canary()
        service["spec"]["selector"].update(labels)
        apply(self.api, [of_kind(objects, "Deployment"), service])
        self.plan = {
            "deployment": self.canary(),
            "gate_service": self.canary(),
            "pod_labels": {**base_labels(self.target), SLOT_LABEL: slot, **labels},
            "first": False,
            "slot": slot,
        }
        return self.plan

    def finish(self) -> None:
        if self.plan["first"]:
            return
        slot = self.plan["slot"]
        apply(self.api, [of_kind(render(self.target, slot=slot), "Deployment")])
        wait_for_rollout(
            self.api, deployment_name(self.target.name, slot), self.target.namespace, self.timeout
        )
        self._remove_canary()

    def _remove_canary(self) -> None:
        _delete(self.api, self.canary(), self.target.namespace, "Deployment")
        _delete(self.api, self.canary(), self.target.namespace, "Service")

    def undo(self) -> str | None:
        if self.plan["first"]:
            rolling = Rolling(self.api, self.target, self.timeout)
            rolling.resume(self.plan)
            return rolling.undo()
        self._remove_canary()
        return self.live_version()


def _read_or_none_service(api_client: Any, target: Target) -> Any:
    from kubernetes import client

    return _read_or_none(
        client.CoreV1Api(api_client).read_namespaced_service, target.name, target.namespace
    )


STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (Rolling, BlueGreen, Canary)}


def strategy(name: str, api_client: Any, target: Target, timeout: float = 600) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {name!r}")
    return STRATEGIES[name](api_client, target, timeout)
