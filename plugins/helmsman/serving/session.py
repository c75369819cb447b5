"""The rollout session: one model version from nothing to serving everyone, or to nothing.

The session owns the instance's rollout lock and every phase change:

    preview ──> step 1 ──> ... ──> step n ──> registering ──> promoting ──> done
       │           │                  │             (any failed check)
       └───────────┴──────────────────┴──> aborting ──> aborted

- **preview**: the new version starts in the idle slot behind the preview Service, which no
  user reaches; it must become available within the ready timeout, then pass identity,
  golden-set parity and a probe load (:mod:`helmsman.serving.verify`).
- **steps**: the router gives the new version its weight (a shadow step mirrors every request
  to it instead), waits one analysis interval and judges the step on that interval's live
  traffic from Prometheus (:mod:`helmsman.serving.analysis`).
- **registering**: every check passed; what the promotion needs is put in place and checked
  (the replica router's full-size slot), then the registry is told (``register``: the
  version's rollout tag and ``@champion``) *before* users get the version, so the registry
  never names a champion that does not serve nor misses one that does. If the registry cannot
  be written, the session fails like any interrupted one: traffic back to the stable version;
  the next try registers and promotes. Once it was written, the session only goes forward.
- **promoting**: the new slot becomes the stable one, the autoscaler follows it, the old slot
  scales to zero.
- **aborting**: every request back to the stable version, the new slot to zero.

The lock and the record are one ``coordination.k8s.io/v1`` Lease per instance
(``<instance>-rollout``): created, or replaced with the resourceVersion just read, so two
sessions can never both win; the record of the rollout is its annotation. The session writes
what it is about to do before it does it, so a session that dies anywhere is resumed by its
task's next try (same owner: the DAG run) from the record: the phase's desired state is
applied again, and a step's interval starts over. A session that stops renewing its Lease is
abandoned: the next rollout of the instance first aborts what it left (traffic back to the
stable version), then starts its own.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from helmsman.serving import objects
from helmsman.serving.analysis import (
    Offline,
    Prediction,
    Prometheus,
    StepReport,
    Thresholds,
    jensen_shannon,
    judge,
    pair,
    parse_prediction_log,
)
from helmsman.serving.kube import Conflict, Kube, Obj, progress
from helmsman.serving.objects import GatewayRef, Target
from helmsman.serving.traffic import GatewayRouter, ReplicaRouter, Router
from helmsman.serving.verify import Checks, Rejected, verify, wait_available

RECORD_ANNOTATION = "helmsman.io/rollout"
STRATEGIES = ("canary", "blue-green", "rolling")
FINAL = ("done", "aborted")
DEFAULT_GATEWAY = GatewayRef("helmsman-gateway")  # deploy/serving-gateway.yaml


class RolloutBusy(Exception):
    """Another run's rollout of this instance holds the lock and is alive."""


class LostLock(Exception):
    """Another session took the instance's lock from this one; this one changes nothing more."""


@dataclass(frozen=True)
class Step:
    weight: int
    mirror: bool = False

    @property
    def name(self) -> str:
        return "shadow" if self.mirror else f"{self.weight}%"


@dataclass(frozen=True)
class Settings:
    """How a rollout goes: strategy, steps, timing, thresholds, and where traffic is split."""

    strategy: str = "canary"
    steps: tuple[int, ...] = (5, 25, 50)  # canary weights in percent, before 100
    interval_s: float = 30.0  # analysis interval of each step
    shadow: bool = True  # a mirrored step before the first weighted one (needs a Gateway)
    ready_timeout_s: float = 120.0  # how long the new pods get to become available
    lease_s: int = 120  # a session that has not renewed its lock for this long is abandoned
    settle_s: float = 1.5  # after a window, for the last scrape to land in Prometheus
    gateway: GatewayRef | None = DEFAULT_GATEWAY  # None: no Gateway, the replica ratio
    thresholds: Thresholds = field(default_factory=Thresholds)
    checks: Checks = field(default_factory=Checks)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}"
            )
        if any(not 0 < w < 100 for w in self.steps) or list(self.steps) != sorted(set(self.steps)):
            raise ValueError(
                f"canary steps must rise strictly between 0 and 100 percent, not {list(self.steps)}"
            )
        if self.interval_s <= 0 or self.ready_timeout_s <= 0:
            raise ValueError("the analysis interval and the ready timeout must be positive")


def plan(settings: Settings, can_mirror: bool, replicas: int, first: bool) -> list[Step]:
    """The steps between the preview and the promotion."""
    if first:
        return []  # nothing serves: no traffic to split, no version to compare with
    shadow = [Step(0, mirror=True)] if settings.shadow and can_mirror else []
    if settings.strategy == "canary":
        return shadow + [Step(w) for w in settings.steps]
    if settings.strategy == "blue-green":
        return [*shadow, Step(100)]  # the switch, then a live window before promoting
    return [Step(round(100 * k / replicas)) for k in range(1, replicas)]  # rolling: pod by pod


def _stamp(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_stamp(value: str | None) -> float:
    if not value:
        return 0.0
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def slot_version(kube: Kube, instance: str, slot: str) -> str | None:
    """The model version a slot's Deployment runs (None: no such slot, or scaled to zero)."""
    d = kube.read("Deployment", objects.deployment_name(instance, slot))
    if d is None or not d["spec"].get("replicas"):
        return None
    annotations = d["spec"]["template"]["metadata"].get("annotations") or {}
    version = annotations.get(objects.MODEL_ANNOTATION)
    return str(version) if version else None


def serving_version(kube: Kube, instance: str) -> str | None:
    """The version the instance's stable Service sends traffic to now (None: nothing serves)."""
    svc = kube.read("Service", instance)
    if svc is None:
        return None
    selector = svc["spec"].get("selector") or {}
    return slot_version(kube, instance, selector.get(objects.SLOT_LABEL, objects.LEGACY_SLOT))


class RolloutSession:
    def __init__(
        self,
        kube: Kube,
        target: Target,
        owner: str,
        settings: Settings,
        *,
        golden: Callable[[], dict[str, Any]],
        prometheus: Prometheus | None,
        log: logging.Logger | Any = None,
        register: Callable[[], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube, self.target, self.owner, self.settings = kube, target, owner, settings
        # What the registry must say before users get the version (the registering phase);
        # idempotent: a resumed session calls it again. None: nothing to tell.
        self.register = register
        self.golden, self.prometheus = functools.cache(golden), prometheus
        self.log = log or logging.getLogger(__name__)
        self.sleep, self.clock = sleep, clock
        self.lease_name = f"{target.name}-rollout"
        self.record: dict[str, Any] = {}
        # Called with (deployment, seconds left) when the new pods are not available yet, to
        # wait elsewhere (the triggerer); it raises Airflow's TaskDeferred, and the task's
        # next call of run() resumes the preview from the record. None: wait here.
        self.defer_ready: Callable[[str, float], None] | None = None
        self._deferring = False
        self._registered = False  # the registry names the version: only forward from here
        self._lease: Obj | None = None
        self._renewed = 0.0

    # -- the lock and the record ------------------------------------------------------------

    def _write(self, **changes: Any) -> None:
        """Record ``changes`` and renew the lock, atomically (resourceVersion-guarded)."""
        now = self.clock()
        record = {**self.record, **changes, "write_id": uuid.uuid4().hex}
        lease = self._lease or {}
        version = (lease.get("metadata") or {}).get("resourceVersion")
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.lease_name,
                "namespace": self.kube.namespace,
                "labels": {**objects.instance_labels(self.target),
                           objects.MANAGED_BY_LABEL: objects.MANAGER},
                "annotations": {RECORD_ANNOTATION: json.dumps(record, sort_keys=True)},
                **({"resourceVersion": version} if version else {}),
            },
            "spec": {
                "holderIdentity": self.owner,
                "leaseDurationSeconds": self.settings.lease_s,
                "acquireTime": (lease.get("spec") or {}).get("acquireTime") or _stamp(now),
                "renewTime": _stamp(now),
            },
        }  # fmt: skip
        try:
            self._lease = self.kube.write_lease(body)
        except Conflict:
            # A write whose answer was lost and then retried conflicts with itself: ours if the
            # Lease now holds exactly what we wrote.
            current = self.kube.lease(self.lease_name)
            if current is None or _record_of(current).get("write_id") != record["write_id"]:
                raise LostLock(
                    f"the rollout lock of {self.target.namespace}/{self.target.name} was taken "
                    f"by {(current or {}).get('spec', {}).get('holderIdentity')}"
                ) from None
            self._lease = current
        self.record, self._renewed = record, now

    def heartbeat(self) -> None:
        if self.clock() - self._renewed > self.settings.lease_s / 4:
            self._write()

    def _acquire(self) -> None:
        lease = self.kube.lease(self.lease_name)
        self._lease = lease
        previous = _record_of(lease) if lease else {}
        if (
            previous.get("owner") == self.owner
            and previous.get("version") == self.target.model_version
        ):
            self.record = previous
            self.log.info(
                "resuming the rollout of version %s at phase %s (step %s)",
                self.target.model_version, previous.get("phase"), previous.get("index"),
            )  # fmt: skip
            if previous.get("phase") not in FINAL:
                self._write()
            return
        if lease is not None and previous.get("phase") not in FINAL and previous:
            renewed = _parse_stamp(lease["spec"].get("renewTime"))
            duration = lease["spec"].get("leaseDurationSeconds") or self.settings.lease_s
            age = self.clock() - renewed
            if age < duration:
                raise RolloutBusy(
                    f"{self.target.namespace}/{self.target.name} is being rolled out to version "
                    f"{previous.get('version')} by {previous.get('owner')} (phase "
                    f"{previous.get('phase')}, lock renewed {age:.0f}s ago); wait for it, or "
                    f"stop that run: its lock expires {duration - age:.0f}s after its last renewal"
                )
            self._abandon(previous)
        self._start()

    def _abandon(self, previous: dict[str, Any]) -> None:
        """Abort what a session that stopped renewing its lock left: traffic back to the
        stable version, its new slot to zero. Its version is not judged: it never finished."""
        self.log.warning(
            "taking over an abandoned rollout of version %s by %s (phase %s)",
            previous.get("version"), previous.get("owner"), previous.get("phase"),
        )  # fmt: skip
        self.record = previous
        reason = f"abandoned by {previous.get('owner')}; taken over by {self.owner}"
        self._write(phase="aborting", reasons=[reason])
        self._restore(previous)
        self._write(phase="aborted")

    def _start(self) -> None:
        stable_svc = self.kube.read("Service", self.target.name)
        stable: str | None = None
        if stable_svc is not None:
            stable = (stable_svc["spec"].get("selector") or {}).get(
                objects.SLOT_LABEL, objects.LEGACY_SLOT
            )
        previous = self._serving_version(stable) if stable else None
        # The new version never goes to the slot the stable Service selects, even when that
        # slot serves nothing now: its pods would take user traffic before their preview.
        new = objects.other_slot(stable)
        if previous is None:
            stable = None  # a Service with nothing behind it: start as if first
        router = self._router_kind()
        steps = plan(self.settings, router == "gateway", self.target.replicas, first=stable is None)
        self.record = {}
        self._write(
            owner=self.owner, version=self.target.model_version, previous=previous,
            strategy=self.settings.strategy, router=router, stable=stable, new=new,
            steps=[[s.weight, s.mirror] for s in steps], index=0, phase="preview",
            started=self.clock(), reports=[], reasons=[],
        )  # fmt: skip

    def _router_kind(self) -> str:
        return (
            "gateway"
            if self.settings.gateway is not None and self.settings.strategy != "rolling"
            else "replicas"
        )

    def _serving_version(self, slot: str) -> str | None:
        return slot_version(self.kube, self.target.name, slot)

    # -- the phases -------------------------------------------------------------------------

    def router(self, record: dict[str, Any] | None = None) -> Router:
        r = record or self.record
        if r["router"] == "gateway" and self.settings.gateway is not None:
            return GatewayRouter(
                self.kube, self.target, self.settings.gateway, r["stable"], r["new"]
            )
        return ReplicaRouter(self.kube, self.target, r["stable"], r["new"], self._wait_slot)

    def _wait_slot(self, deployment: str) -> list[str]:
        slot = (
            self.record["new"] if deployment.endswith(self.record["new"]) else self.record["stable"]
        )
        return wait_available(
            self.kube, deployment, objects.slot_labels(self.target, slot),
            self.settings.ready_timeout_s, self.heartbeat, self.sleep,
        )  # fmt: skip

    def run(self) -> dict[str, Any]:
        """Take the lock (or resume), then go through every phase; return the outcome.

        Raises :class:`Rejected` after aborting when a check fails, :class:`RolloutBusy` when
        another run's rollout holds the lock.
        """
        self._acquire()
        try:
            return self._advance()
        except Rejected as exc:
            self.abort(exc.reasons)
            raise
        except (LostLock, RolloutBusy):
            raise
        except BaseException:
            if self._deferring:  # Airflow's deferral: the triggerer waits, nothing went wrong
                raise
            # Anything else (the API down, a bug, the task killed or timed out): no user keeps
            # getting an unjudged version while the task waits for its retry, which resumes
            # from the record.
            self.interrupt()
            raise

    def interrupt(self) -> None:
        """Best effort, for a session that cannot go on: every request back to the stable
        version. Not once promotion began: the version passed every step, and the next try
        finishes the promotion (going back would point users at a slot scaled down)."""
        if self._registered or not self.record or self.record.get("phase") in ("promoting", *FINAL):
            return
        self.log.error("rollout interrupted; sending all traffic to the stable version")
        try:
            self._restore(self.record, scale_down=False)
        except Exception:
            self.log.exception("could not send traffic back to the stable version")

    def _advance(self) -> dict[str, Any]:
        while True:
            phase = self.record["phase"]
            if phase == "preview":
                self._preview()
            elif phase == "step":
                self._step()
            elif phase == "registering":
                self._register()
            elif phase == "promoting":
                self._promote()
            elif phase == "done":
                return self.outcome()
            else:  # aborting / aborted: finish the abort, fail with its reasons
                raise Rejected(self.record.get("reasons") or ["the rollout was aborted"])

    def _preview(self) -> None:
        r, t = self.record, self.target
        router = self.router()
        kube = self.kube
        kube.apply(objects.deployment(t, r["new"], router.new_replicas()), t.name)
        router.prepare()
        if kube.read("PodDisruptionBudget", t.name) is None:
            kube.apply(objects.budget(t), t.name)
        name = objects.deployment_name(t.name, r["new"])
        if self.defer_ready is not None:
            deployment = kube.read("Deployment", name)
            if deployment is not None and not progress(deployment).done:
                self._deferring = True
                self.defer_ready(name, self.settings.ready_timeout_s)
        problems = wait_available(
            kube, objects.deployment_name(t.name, r["new"]), objects.slot_labels(t, r["new"]),
            self.settings.ready_timeout_s, self.heartbeat, self.sleep,
        )  # fmt: skip
        if problems:
            raise Rejected([f"the new version never became available: {p}" for p in problems])
        svc = kube.read("Service", objects.preview_name(t.name))
        if svc is None:
            raise RuntimeError(f"the preview Service {objects.preview_name(t.name)} is gone")
        url = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
        self.log.info("verifying version %s through the preview Service %s", t.model_version, url)
        result = verify(url, kube.pods(objects.slot_labels(t, r["new"])), t.model_version,
                        self.golden(), self.settings.checks)  # fmt: skip
        self.log.info("preview: %s", "passed" if result.passed else "; ".join(result.reasons))
        self._write(preview=result.as_dict())
        if not result.passed:
            raise Rejected(result.reasons)
        self._write(phase="step" if r["steps"] else "registering", index=0,
                    verified_at=self.clock())  # fmt: skip

    def _step(self) -> None:
        r = self.record
        step = Step(*r["steps"][r["index"]])
        if self.prometheus is None:
            raise ValueError("a rollout with live steps needs Prometheus; none is configured")
        self._write(step_started=self.clock())  # the intent, before the traffic moves
        weight = self.router().shift(step.weight, step.mirror)
        started = self.clock()
        self.log.info("step %s: %d%% of traffic on version %s%s for %.0fs", step.name, weight,
                      self.target.model_version, " (mirrored)" if step.mirror else "",
                      self.settings.interval_s)  # fmt: skip
        self._pause(self.settings.interval_s)
        ended = self.clock()
        self.sleep(self.settings.settle_s)
        report = self._analyse(step, weight, started, ended)
        self.log.info("step %s", report.summary())
        reports = [*r["reports"], report.as_dict()]
        if not report.passed:
            self._write(reports=reports)
            raise Rejected([f"step {step.name}: {f}" for f in report.failures])
        last = r["index"] + 1 >= len(r["steps"])
        self._write(reports=reports, index=r["index"] + (0 if last else 1),
                    phase="registering" if last else "step")  # fmt: skip

    def _pause(self, seconds: float) -> None:
        deadline = self.clock() + seconds
        while (left := deadline - self.clock()) > 0:
            self.sleep(min(left, 2.0))
            self.heartbeat()

    def _analyse(self, step: Step, weight: int, started: float, ended: float) -> StepReport:
        if self.prometheus is None:
            raise ValueError("a rollout with live steps needs Prometheus; none is configured")
        r, t = self.record, self.target
        window = ended - started
        new = self.prometheus.figures(t.namespace, t.name, r["new"], window, ended)
        # After a switch the stable version has no traffic: its window before is the baseline.
        baseline_end = started if weight >= 100 else ended
        stable = self.prometheus.figures(t.namespace, t.name, r["stable"], window, baseline_end)
        report = StepReport(step.name, weight, round(window, 1), new, stable)
        if step.mirror:
            since = int(self.clock() - started) + 2
            logged = {slot: self._predictions(r[slot], since) for slot in ("stable", "new")}
            threshold = self.settings.thresholds.decision_threshold
            report.paired = pair(logged["stable"], logged["new"], threshold)
        return judge(
            report, self.settings.thresholds, compare_live=weight < 100, offline=self._offline()
        )

    def _offline(self) -> Offline | None:
        """How evaluation saw the new version differ from the one serving now, if it did."""
        versus = self.golden().get("versus_champion") or {}
        if not versus or str(versus.get("champion_version")) != str(self.record.get("previous")):
            return None
        new, old = versus.get("challenger_counts"), versus.get("champion_counts")
        divergence = jensen_shannon(new, old) if new and old else None
        signed = versus.get("mean_diff")
        return Offline(
            float(versus["disagreement"]), float(versus["mean_abs_diff"]), divergence,
            None if signed is None else float(signed),
        )  # fmt: skip

    def _predictions(self, slot: str, since_seconds: int) -> dict[str, list[Prediction]]:
        """What a slot's pods logged as compared predictions, by request id."""
        found: dict[str, list[Prediction]] = {}
        for pod in self.kube.pods(objects.slot_labels(self.target, slot)):
            found |= parse_prediction_log(self.kube.logs(pod["metadata"]["name"], since_seconds))
        return found

    def _register(self) -> None:
        self.router().ready()  # a promotion that cannot happen is rejected before the registry
        if self.register is not None:
            self._renewing(self.register)
        self._registered = True
        self._write(phase="promoting")

    def _renewing(self, call: Callable[[], None]) -> None:
        """``call()`` in a thread while this one keeps the lock renewed: a registry that answers
        slowly (its client retries for minutes) must not let the lock expire, or another run
        would take the rollout over while the registry is being told."""
        failed: list[BaseException] = []

        def run() -> None:
            try:
                call()
            except BaseException as exc:  # handed to the session's thread below
                failed.append(exc)

        worker = threading.Thread(target=run, name="rollout-register", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(self.settings.lease_s / 8)
            self.heartbeat()
        if failed:
            raise failed[0]

    def _promote(self) -> None:
        r, t = self.record, self.target
        self.router().promote()
        self.kube.apply(objects.autoscaler(t, r["new"], t.replicas), t.name)
        if r["stable"] and r["stable"] != r["new"]:
            self.kube.scale(objects.deployment_name(t.name, r["stable"]), 0)
        self._write(phase="done", finished=self.clock())
        self.log.info("version %s serves all traffic (slot %s)", t.model_version, r["new"])

    def abort(self, reasons: list[str]) -> None:
        """Every request back to the stable version, the new slot to zero; recorded first."""
        for reason in reasons:
            self.log.error("rollout check failed: %s", reason)
        if self.record.get("phase") != "aborted":
            self._write(phase="aborting", reasons=reasons, aborted_at=self.clock())
            self._restore(self.record)
            self._write(phase="aborted", restored_at=self.clock())

    def _restore(self, record: dict[str, Any], scale_down: bool = True) -> None:
        if not record.get("new"):
            return
        self.router(record).restore()
        if scale_down:
            self.kube.scale(objects.deployment_name(self.target.name, record["new"]), 0)

    def serving_version(self) -> str | None:
        """The version the stable Service sends traffic to now (None: nothing serves)."""
        return serving_version(self.kube, self.target.name)

    def outcome(self) -> dict[str, Any]:
        r = self.record
        return {
            "version": r["version"], "previous": r.get("previous"), "strategy": r["strategy"],
            "router": r["router"], "slot": r["new"], "preview": r.get("preview"),
            "steps": r.get("reports", []),
            "seconds": round(r.get("finished", self.clock()) - r["started"], 1),
        }  # fmt: skip


def _record_of(lease: Obj) -> dict[str, Any]:
    raw = (lease.get("metadata", {}).get("annotations") or {}).get(RECORD_ANNOTATION)
    return dict(json.loads(raw)) if raw else {}
