"""The deploy task: the Airflow side of a rollout, and the operations around it.

:class:`RolloutOperator` is a thin adapter over the rollout session
(:mod:`helmsman.serving.session`), which owns the lock, every phase and the resume after a
crash or a deferral. The operator:

1. reads the fence's decision (the ``decide`` task's XCom) and skips when it says no;
2. builds the session's settings from the run's Params and the platform's defaults;
3. runs the session: preview, steps judged on live traffic, registering (the session calls
   back here: the version is tagged ``passed`` and becomes ``@champion``), promotion -- in
   deferrable mode the wait for the new pods happens in the triggerer
   (:class:`DeploymentAvailableTrigger`);
4. passed: keeps the figures with its MLflow run, returns the outcome (XCom for ``promote``);
   rejected: the session has already sent all traffic back to the stable version and scaled
   the new one down; the operator tags the version ``rejected`` with the failing check and its
   figures and fails the task without retries.

The ``promote`` task that follows confirms ``@champion`` (:func:`promote`), never moving it:
the rollout did, before the version served everyone; a backfill never gets there (the fence
skipped the rollout, and skips cascade).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from helmsman import models
from helmsman.pods import Platform
from helmsman.serving import objects
from helmsman.serving.analysis import Prometheus, Thresholds
from helmsman.serving.kube import Kube, progress
from helmsman.serving.session import RolloutSession, Settings
from helmsman.serving.verify import Checks, Rejected
from helmsman_steps import contract

log = logging.getLogger(__name__)

POOL = "serving_rollout"  # one slot: one rollout at a time across DAGs (helm-values, demo)


class RolloutGateFailed(AirflowFailException):
    """The new version failed a check and was taken out of traffic. Fails the task without
    retries: a retry would roll the same rejected version out again."""


class DeploymentAvailableTrigger(BaseTrigger):
    """Wait, in the triggerer, until a Deployment is fully rolled out (or cannot be)."""

    def __init__(
        self, name: str, namespace: str, conn_id: str, timeout: float, plan: dict[str, Any]
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.name, self.namespace, self.conn_id = name, namespace, conn_id
        self.timeout, self.plan = timeout, plan

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "name": self.name,
                "namespace": self.namespace,
                "conn_id": self.conn_id,
                "timeout": self.timeout,
                "plan": self.plan,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio import client

        hook = AsyncKubernetesHook(conn_id=self.conn_id)
        deadline = time.monotonic() + self.timeout
        while True:
            async with hook.get_conn() as api:
                d = await client.AppsV1Api(api).read_namespaced_deployment(
                    self.name, self.namespace
                )
                state = progress(api.sanitize_for_serialization(d))
            if state.failed or state.done:
                yield TriggerEvent({"plan": self.plan, "error": state.failed})  # type: ignore[no-untyped-call]
                return
            if time.monotonic() > deadline:
                error = f"timed out after {self.timeout:.0f}s ({state.summary})"
                yield TriggerEvent({"plan": self.plan, "error": error})  # type: ignore[no-untyped-call]
                return
            await asyncio.sleep(2)


def rollout_params(
    strategy: str = "canary", steps: tuple[int, ...] | list[int] = (5, 25, 50)
) -> dict[str, Any]:
    """The rollout's Params, shared by every DAG that rolls a version out (typed trigger form
    and REST ``conf`` alike); the defaults are the model's (``serving`` in model.yaml)."""
    from airflow.sdk import Param

    from helmsman.serving.session import STRATEGIES

    return {
        "strategy": Param(
            strategy, title="Rollout strategy", enum=list(STRATEGIES),
            description="Every strategy first verifies the new version behind a preview "
            "Service no user reaches. canary: then traffic in steps, each judged on live "
            "traffic. blue-green: then all traffic at once and a live window (switched back "
            "on failure). rolling: pod by pod, for clusters without a Gateway.",
        ),
        "canary_steps": Param(
            ",".join(str(s) for s in steps), title="Canary steps", type="string",
            pattern=r"^[1-9][0-9]?(,[1-9][0-9]?)*$",
            description="Traffic percentages before 100%, rising (e.g. 5,25,50).",
        ),
        "analysis_interval": Param(
            30, title="Analysis interval (s)", type="integer", minimum=5, maximum=3600,
            description="How long each step runs before it is judged on its live traffic "
            "(5 to 3600 s).",
        ),
        "shadow": Param(
            True, title="Shadow step", type="boolean",
            description="Before the first weighted step, mirror live requests to the new "
            "version and compare its predictions with the stable one's (needs a Gateway).",
        ),
    }  # fmt: skip


def parse_steps(steps: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Canary weights from a Param: "5,25,50" or a list."""
    if isinstance(steps, str):
        parts = [p.strip() for p in steps.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            raise ValueError(f"canary steps must be whole percentages like 5,25,50, not {steps!r}")
        return tuple(int(p) for p in parts)
    return tuple(int(w) for w in steps)


CHECKS_ENV = "HELMSMAN_ROLLOUT_CHECKS"


def environment_checks() -> dict[str, Any]:
    """The preview checks' defaults for this Airflow deployment: a JSON object of
    ``helmsman.serving.verify.Checks`` fields in ``HELMSMAN_ROLLOUT_CHECKS`` (the local stack
    sets a probe p99 that one shared machine and localcluster's proxy can keep); the
    operator's own ``checks`` win over it."""
    raw = os.environ.get(CHECKS_ENV, "").strip()
    if not raw:
        return {}
    found = json.loads(raw)
    if not isinstance(found, dict):
        raise ValueError(f"{CHECKS_ENV} must be a JSON object of check settings, got {raw!r}")
    return found


class RolloutOperator(BaseOperator):
    """Roll the version the ``decide`` task chose out: verified before any user request, then
    exposed step by step, each step judged on live traffic."""

    template_fields = ("strategy", "steps", "interval", "shadow", "image", "replicas")
    ui_color = "#f2d0a4"

    def __init__(
        self,
        *,
        decide_task_id: str = "decide",
        model_name: str,
        instance: str | None = None,
        strategy: str = "canary",
        steps: str | list[int] = "5,25,50",
        interval: float | str = 30,
        shadow: bool | str = True,
        image: str = "",
        replicas: int | str = 2,
        serving_resources: dict[str, str] | None = None,
        platform: Platform | None = None,
        ready_timeout: float = 120,
        thresholds: dict[str, Any] | None = None,
        checks: dict[str, Any] | None = None,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("pool", POOL)
        super().__init__(**kwargs)
        self.decide_task_id, self.model_name = decide_task_id, model_name
        self.instance = instance or contract.serving_instance(model_name)
        self.strategy, self.steps, self.interval, self.shadow = strategy, steps, interval, shadow
        self.image, self.replicas = image, replicas
        self.serving_resources = dict(serving_resources or {})  # a serving pod's cpu, memory
        self.platform = platform or Platform()
        self.ready_timeout = ready_timeout
        self.thresholds, self.checks = thresholds or {}, checks or {}
        self.deferrable = self.platform.deferrable if deferrable is None else deferrable
        self._session: RolloutSession | None = None  # the running one, for on_kill

    # -- helpers ----------------------------------------------------------------------------------

    def _decision(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        decision: dict[str, Any] = context["ti"].xcom_pull(task_ids=self.decide_task_id)
        if not decision or not decision.get("deploy"):
            reason = (decision or {}).get("reason", "the decide task chose no deploy")
            raise AirflowSkipException(f"not deploying: {reason}")
        return decision

    def _target(self, context: Any, version: str) -> objects.Target:
        dag_run = context["dag_run"]
        try:  # the trigger refused it already; a run started another way meets it here
            self.platform.check_serving_image(self.image)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        return objects.Target(
            name=self.instance,
            namespace=self.platform.namespace,
            model_name=self.model_name,
            model_version=version,
            image=self.image or self.platform.image("serve"),
            replicas=int(self.replicas),
            **{k: str(v) for k, v in self.serving_resources.items() if k in ("cpu", "memory")},
            mlflow_secret=self.platform.serving_mlflow_secret,
            annotations={
                "helmsman.io/dag-id": dag_run.dag_id,
                "helmsman.io/dag-run": dag_run.run_id,
                "helmsman.io/model-uri": f"models:/{self.model_name}/{version}",
            },
        )

    def settings(self) -> Settings:
        """The session's settings from the rendered Params; a bad value fails at once."""
        shadow = self.shadow if isinstance(self.shadow, bool) else str(self.shadow) == "True"
        try:
            return Settings(
                strategy=str(self.strategy),
                steps=parse_steps(self.steps),
                interval_s=float(self.interval),
                shadow=shadow,
                ready_timeout_s=self.ready_timeout,
                gateway=self.platform.gateway_ref(),
                thresholds=Thresholds(**self.thresholds),
                checks=Checks(**{**environment_checks(), **self.checks}),
            )
        except (TypeError, ValueError) as exc:
            raise AirflowFailException(f"rollout settings: {exc}") from exc

    def _prometheus(self) -> Prometheus:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return Prometheus(models.http_url(self.platform.prometheus_conn_id))
        except AirflowNotFoundException:
            raise AirflowFailException(
                f"no Airflow connection {self.platform.prometheus_conn_id!r}: create one (type "
                "http, host and port of the Prometheus that scrapes the serving pods) so the "
                "rollout can judge each step on live traffic"
            ) from None

    # -- the task ---------------------------------------------------------------------------------

    def execute(self, context: Any) -> dict[str, Any]:
        return self._run(context, defer=self.deferrable)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        # The session resumes from its record: the preview's objects exist, the wait is over
        # (or failed: then the wait's check in the session says why).
        return self._run(context, defer=False)

    def on_kill(self) -> None:
        """Killed (marked failed, timed out, its worker stopping): all traffic back to the
        stable version before the process ends, as any interrupted session does."""
        if self._session is not None:
            self._session.interrupt()

    def _run(self, context: Any, defer: bool) -> dict[str, Any]:
        decision = self._decision(context)
        settings, prometheus = self.settings(), self._prometheus()
        target = self._target(context, decision["version"])
        owner = f"{context['dag_run'].dag_id}/{context['dag_run'].run_id}"
        models.configure()
        version = models.get(target.model_name, target.model_version)

        def register() -> None:
            # The registry first, then users: @champion always names what serves everyone.
            models.tag(version, {
                contract.ROLLOUT_TAG: "passed",
                contract.DEPLOYMENT_TAG: f"{target.namespace}/{target.name}",
                contract.DEPLOYED_BY_TAG: owner,
            })  # fmt: skip
            before = models.promote(version, owner)
            self.log.info(
                "version %s is @champion (before: %s); promoting it to every user",
                target.model_version, before.version if before else "none",
            )  # fmt: skip

        session = RolloutSession(
            Kube(kube_api(self.platform), target.namespace), target, owner, settings,
            golden=lambda: models.golden(version), prometheus=prometheus, log=self.log,
            register=register,
        )  # fmt: skip
        self._session = session
        if defer:
            session.defer_ready = lambda deployment, timeout: self.defer(
                trigger=DeploymentAvailableTrigger(
                    deployment, target.namespace, self.platform.kubernetes_conn_id, timeout, {}
                ),
                method_name="execute_complete",
            )
        self.log.info(
            "rolling out %s: %s via %s, steps %s every %.0fs, shadow %s",
            target.model_uri, settings.strategy,
            "the Gateway" if settings.gateway else "the replica ratio",
            list(settings.steps), settings.interval_s, settings.shadow,
        )  # fmt: skip
        try:
            outcome = session.run()
        except Rejected as exc:
            self._rejected(session, version, target, exc.reasons)
        models.log_rollout(version, owner.replace("/", "__"), outcome)
        self.log.info("version %s passed every check and serves all traffic (%.0fs)",
                      target.model_version, outcome["seconds"])  # fmt: skip
        return outcome

    def _rejected(
        self, session: RolloutSession, version: Any, target: objects.Target, reasons: list[str]
    ) -> None:
        record = session.record
        owner = record.get("owner", "")
        models.log_rollout(version, owner.replace("/", "__"), {
            "version": target.model_version, "rejected": reasons,
            "preview": record.get("preview"), "steps": record.get("reports", []),
        })  # fmt: skip
        figures = json.dumps(record.get("reports", [])[-1:], sort_keys=True)[:3000]
        models.tag(version, {
            contract.ROLLOUT_TAG: "rejected",
            contract.ROLLOUT_REASON_TAG: "; ".join(reasons),
            contract.ROLLOUT_FIGURES_TAG: figures,
        })  # fmt: skip
        serving, expected = session.serving_version(), record.get("previous")
        if serving != expected:
            message = (
                f"version {target.model_version} failed ({'; '.join(reasons)}) and version "
                f"{serving} serves, not {expected}: look at service "
                f"{target.namespace}/{target.name} now"
            )
        else:
            now = f"version {serving} serves again" if serving else "nothing served before"
            message = f"version {target.model_version} rolled back, {now}: " + "; ".join(reasons)
        self.log.error(message)
        raise RolloutGateFailed(message)


def kube_api(platform: Platform) -> Any:
    """A Kubernetes API client from the platform's Airflow connection."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    return KubernetesHook(conn_id=platform.kubernetes_conn_id).api_client


def promote(model_name: str, version: str, owner: str) -> dict[str, Any]:
    """Confirm that the rollout made the gated version ``@champion`` (it does so before the
    version serves everyone). Never moves the alias: a late retry of this task must not take
    ``@champion`` back from a rollout that came after."""
    models.configure()
    champion = models.by_alias(model_name, contract.CHAMPION)
    previous = models.by_alias(model_name, contract.PREVIOUS_CHAMPION)
    if champion is None or champion.version != version:
        now = champion.version if champion else "no version"
        log.warning("@champion of %s is %s, not %s: a later rollout moved it (%s); nothing to "
                    "do", model_name, now, version, owner)  # fmt: skip
    return {
        "champion": champion.version if champion else None,
        "previous_champion": previous.version if previous else None,
    }


def choose_version(
    model_name: str, version: str, instance: str | None = None, platform: Platform | None = None
) -> dict[str, Any]:
    """The decide step of a manual rollback: the chosen version, which must exist and must
    have been evaluated (a version no pipeline run vetted is not a rollback target).

    Nothing to do only when the cluster already serves it: @champion may name a version that
    no longer serves (a rebuilt cluster, a deleted Deployment), and rolling it out again is
    how serving comes back."""
    from helmsman.serving.session import serving_version

    models.configure()
    chosen = models.get(model_name, version)
    if not chosen.decision:
        raise AirflowFailException(
            f"version {version} of {model_name} was never evaluated; pick one that was "
            "(its tags carry helmsman.decision)"
        )
    platform = platform or Platform()
    instance = instance or contract.serving_instance(model_name)
    if serving_version(Kube(kube_api(platform), platform.namespace), instance) == chosen.version:
        return {"version": version, "deploy": False, "reason": f"{version} already serves"}
    return {"version": version, "deploy": True, "reason": f"manual rollback to version {version}"}


def scale(instance: str, replicas: int, platform: Platform | None = None) -> dict[str, Any]:
    """Scale the slot that serves behind the instance's Service to ``replicas``, and hold its
    autoscaler's floor there (an autoscaler below it would scale it straight back)."""
    from helmsman.serving.verify import wait_available

    platform = platform or Platform()
    kube = Kube(kube_api(platform), platform.namespace)
    svc = kube.read("Service", instance)
    if svc is None:
        raise ValueError(
            f"nothing serves as {platform.namespace}/{instance}: roll a version out first"
        )
    slot = (svc["spec"].get("selector") or {}).get(objects.SLOT_LABEL, objects.LEGACY_SLOT)
    live = objects.deployment_name(instance, slot)
    current = kube.read("Deployment", live)
    before = (current or {}).get("spec", {}).get("replicas")
    hpa = kube.read("HorizontalPodAutoscaler", instance)
    if hpa is not None:
        most = max(hpa["spec"].get("maxReplicas", 1), replicas)
        floor = {"kind": hpa["kind"], "metadata": {"name": instance},
                 "spec": {"minReplicas": replicas, "maxReplicas": most}}  # fmt: skip
        kube.apply(floor, instance)
    kube.scale(live, replicas)
    target = objects.Target(instance, platform.namespace, "", "")
    problems = wait_available(kube, live, objects.slot_labels(target, slot), timeout=300)
    if problems:
        raise RuntimeError(f"{live} did not reach {replicas} available replicas: {problems}")
    return {"deployment": live, "replicas_before": before, "replicas": replicas}
