"""The deploy task: roll the challenger out, gate it on health, roll back on its own.

:class:`RolloutOperator` reads the fence's decision (the ``decide`` task's XCom), then:

1. takes the Service's rollout lock (a re-run of the same task joins its own rollout);
2. starts the new version with the chosen strategy and waits for its Deployment to become
   available -- in deferrable mode the wait happens in the triggerer
   (:class:`DeploymentAvailableTrigger`), so a slow rollout holds no worker slot;
3. runs the health gate through the new pods' Service;
4. passed: finishes the strategy (switch, promote the canary), tags the version and returns;
   failed: undoes the strategy, checks that the champion serves again, tags the version
   rejected with the reasons, and fails the task loudly.

The ``promote`` task that follows moves ``@champion`` (:func:`promote`): only after a passed
gate, never from a backfill (the fence skipped the rollout, and skips cascade).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.exceptions import AirflowFailException
from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from helmsman import models, rollout
from helmsman.pods import Platform

POOL = "serving_rollout"  # one slot: one rollout at a time across DAGs (helm-values, demo)
DEFAULT_DEPLOYMENT = "churn-serving"


class RolloutGateFailed(AirflowFailException):  # type: ignore[misc]
    """The new version failed its rollout or health gate and was rolled back. Fails the task
    without retries: a retry would roll the same rejected version out again."""


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
            progress = rollout.progress(d)
            if progress.failed or progress.done:
                yield TriggerEvent({"plan": self.plan, "error": progress.failed})  # type: ignore[no-untyped-call]
                return
            if time.monotonic() > deadline:
                error = f"timed out after {self.timeout:.0f}s ({progress.summary})"
                yield TriggerEvent({"plan": self.plan, "error": error})  # type: ignore[no-untyped-call]
                return
            await asyncio.sleep(2)


class RolloutOperator(BaseOperator):
    """Roll the version the ``decide`` task chose out to the serving Deployment, gated."""

    template_fields = ("strategy", "image", "replicas")
    ui_color = "#f2d0a4"

    def __init__(
        self,
        *,
        decide_task_id: str = "decide",
        deployment: str = DEFAULT_DEPLOYMENT,
        model_name: str = "churn",
        strategy: str = "rolling",
        image: str = "",
        replicas: int | str = 2,
        platform: Platform | None = None,
        rollout_timeout: float = 600,
        gate: dict[str, Any] | None = None,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("pool", POOL)
        super().__init__(**kwargs)
        self.decide_task_id, self.deployment, self.model_name = (
            decide_task_id,
            deployment,
            model_name,
        )
        self.strategy, self.image, self.replicas = strategy, image, replicas
        self.platform = platform or Platform()
        self.rollout_timeout, self.gate = rollout_timeout, gate or {}
        self.deferrable = self.platform.deferrable if deferrable is None else deferrable

    # -- helpers ----------------------------------------------------------------------------------

    def _api(self) -> Any:
        return kube_api(self.platform)

    def _decision(self, context: Any) -> dict[str, Any]:
        from airflow.exceptions import AirflowSkipException

        decision: dict[str, Any] = context["ti"].xcom_pull(task_ids=self.decide_task_id)
        if not decision or not decision.get("deploy"):
            reason = (decision or {}).get("reason", "the decide task chose no deploy")
            raise AirflowSkipException(f"not deploying: {reason}")
        return decision

    def _target(self, context: Any, version: str) -> rollout.Target:
        dag_run = context["dag_run"]
        return rollout.Target(
            name=self.deployment,
            namespace=self.platform.namespace,
            model_name=self.model_name,
            model_version=version,
            image=self.image or self.platform.image("serve"),
            replicas=int(self.replicas),
            annotations={
                "helmsman.io/dag-id": dag_run.dag_id,
                "helmsman.io/dag-run": dag_run.run_id,
                "helmsman.io/model-uri": f"models:/{self.model_name}/{version}",
            },
        )

    def _strategy(self, api: Any, target: rollout.Target) -> rollout.Strategy:
        return rollout.strategy(self.strategy, api, target, self.rollout_timeout)

    # -- the task ---------------------------------------------------------------------------------

    def execute(self, context: Any) -> dict[str, Any] | None:
        decision = self._decision(context)
        api = self._api()
        target = self._target(context, decision["version"])
        owner = f"{context['dag_run'].dag_id}/{context['dag_run'].run_id}"
        state = rollout.claim(api, target, owner, self.strategy)
        strat = self._strategy(api, target)
        before = strat.live_version()
        state["previous"] = state.get("previous", before)
        self.log.info(
            "rolling out %s (strategy %s); serving now: %s",
            target.model_uri,
            self.strategy,
            before or "nothing",
        )
        plan = strat.begin()
        rollout.write_state(api, target.name, target.namespace, {**state, "phase": "rolling"})
        plan["state"] = {**state, "phase": "rolling"}
        if self.deferrable:
            self.defer(
                trigger=DeploymentAvailableTrigger(
                    plan["deployment"],
                    target.namespace,
                    self.platform.kubernetes_conn_id,
                    self.rollout_timeout,
                    plan,
                ),
                method_name="execute_complete",
            )
        error = None
        try:
            rollout.wait_for_rollout(
                api, plan["deployment"], target.namespace, self.rollout_timeout
            )
        except rollout.RolloutFailed as exc:
            error = str(exc)
        return self._gate_and_finish(context, api, target, plan, error)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any] | None:
        decision = self._decision(context)
        api = self._api()
        target = self._target(context, decision["version"])
        return self._gate_and_finish(context, api, target, event["plan"], event.get("error"))

    def _gate_and_finish(
        self,
        context: Any,
        api: Any,
        target: rollout.Target,
        plan: dict[str, Any],
        error: str | None,
    ) -> dict[str, Any]:
        models.configure()
        version = models.get(target.model_name, target.model_version)
        strat = self._strategy(api, target)
        strat.resume(plan)
        state = plan["state"]
        if error:
            reasons = [f"rollout did not complete: {error}"]
        else:
            rollout.write_state(api, target.name, target.namespace, {**state, "phase": "gating"})
            url = rollout.service_url(api, plan["gate_service"], target.namespace)
            self.log.info("health gate through %s (pods %s)", url, plan["pod_labels"])
            result = rollout.health_gate(
                api, target, url, models.golden(version), pod_labels=plan["pod_labels"], **self.gate
            )
            self.log.info(
                "gate: p99 %.1f ms, error rate %.2f%%", result.p99_ms, 100 * result.error_rate
            )
            reasons = result.reasons
        if not reasons:
            strat.finish()
            rollout.write_state(api, target.name, target.namespace, {**state, "phase": "gated"})
            models.tag(
                version,
                {
                    models.ROLLOUT_TAG: "passed",
                    models.DEPLOYMENT_TAG: f"{target.namespace}/{target.name}",
                    "helmsman.deployed_by": state["owner"],
                },
            )
            self.log.info("version %s passed the gate and serves", target.model_version)
            return {"version": target.model_version, "previous": state.get("previous")}

        for reason in reasons:
            self.log.error("gate failed: %s", reason)
        serving = strat.undo()
        expected = state.get("previous")
        rollout.write_state(api, target.name, target.namespace, {**state, "phase": "rolled-back"})
        models.tag(
            version,
            {models.ROLLOUT_TAG: "rejected", models.ROLLOUT_REASON_TAG: "; ".join(reasons)},
        )
        if serving != expected:
            message = (
                f"version {target.model_version} failed ({'; '.join(reasons)}) and the rollback "
                f"left version {serving} serving, not {expected}: look at deployment "
                f"{target.namespace}/{strat.live_deployment()} now"
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
    """Move ``@champion`` to the gated version (the old one keeps ``@previous-champion``)."""
    models.configure()
    previous = models.promote(models.get(model_name, version), owner)
    return {"champion": version, "previous_champion": previous.version if previous else None}


def choose_version(model_name: str, version: str) -> dict[str, Any]:
    """The decide step of a manual rollback: the chosen version, which must exist and must
    have been evaluated (a version no pipeline run vetted is not a rollback target)."""
    models.configure()
    chosen = models.get(model_name, version)
    if not chosen.decision:
        raise ValueError(
            f"version {version} of {model_name} was never evaluated; pick one that was "
            "(its tags carry helmsman.decision)"
        )
    champion = models.by_alias(model_name, models.CHAMPION)
    if champion is not None and champion.version == chosen.version:
        return {"version": version, "deploy": False, "reason": f"{version} is already @champion"}
    return {"version": version, "deploy": True, "reason": f"manual rollback to version {version}"}


def scale(deployment: str, replicas: int, platform: Platform | None = None) -> dict[str, Any]:
    """Scale whichever Deployment serves behind the Service to ``replicas``."""
    from kubernetes import client

    platform = platform or Platform()
    api = kube_api(platform)
    target = rollout.Target(deployment, platform.namespace, "", "")
    live = rollout.Rolling(api, target).live_deployment()
    apps = client.AppsV1Api(api)
    before = apps.read_namespaced_deployment_scale(live, platform.namespace).spec.replicas
    apps.patch_namespaced_deployment_scale(
        live, platform.namespace, {"spec": {"replicas": replicas}}
    )
    rollout.wait_for_rollout(api, live, platform.namespace, timeout=300)
    return {"deployment": live, "replicas_before": before, "replicas": replicas}
