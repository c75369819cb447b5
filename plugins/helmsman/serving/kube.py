"""The Kubernetes calls of a rollout: reads, idempotent applies that never touch an object
Helmsman does not manage, scaling, pods and their logs, and the Lease.

Every call retries what is transient (429, 5xx, a dropped connection, a timeout) a few times
with back-off; what still fails raises, and the rollout session resumes from its record on the
task's next try. Writes are merge patches of whole desired states, so repeating one is
harmless.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from helmsman.serving.objects import INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER, PART_OF_LABEL

Obj = dict[str, Any]
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MERGE_PATCH = "application/merge-patch+json"
GATEWAY_GROUP, GATEWAY_VERSION = "gateway.networking.k8s.io", "v1"


class NotOwned(Exception):
    """An object the rollout would change exists and is not Helmsman's to change."""


class Conflict(Exception):
    """A write lost a race (HTTP 409): someone else changed the object first."""


def transient(exc: BaseException) -> bool:
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(exc, ApiException):
        return exc.status in RETRYABLE_STATUS or not exc.status
    return isinstance(exc, HTTPError | OSError)


_retry = retry(
    retry=retry_if_exception(transient),
    stop=stop_after_attempt(5),
    wait=wait_exponential(multiplier=0.2, max=3),
    reraise=True,
)


def owned(obj: Obj, instance: str) -> bool:
    """Helmsman's own object of this instance: labelled managed-by (or, from releases before
    that label, part-of) helmsman, and of the same instance."""
    labels = obj.get("metadata", {}).get("labels") or {}
    ours = labels.get(MANAGED_BY_LABEL) == MANAGER or labels.get(PART_OF_LABEL) == MANAGER
    return ours and labels.get(INSTANCE_LABEL, instance) == instance


@dataclass(frozen=True)
class Progress:
    done: bool
    failed: str | None
    summary: str


def progress(d: Obj) -> Progress:
    """How far a Deployment (as a dict) is through its rollout, like ``kubectl rollout status``."""
    meta, spec, status = d["metadata"], d["spec"], d.get("status") or {}
    wanted = spec.get("replicas", 1)
    updated, available = status.get("updatedReplicas") or 0, status.get("availableReplicas") or 0
    summary = f"updated {updated}/{wanted}, available {available}/{wanted}"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and (
            condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            name = f"{meta['namespace']}/{meta['name']}"
            return Progress(
                False, f"deployment {name}: {condition.get('message')} ({summary})", summary
            )
    done = (
        (status.get("observedGeneration") or 0) >= meta.get("generation", 0)
        and updated == wanted
        and (status.get("replicas") or 0) == wanted
        and available == wanted
    )
    return Progress(done, None, summary)


class Kube:
    """The calls, in one namespace, through one API client."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.api, self.namespace = api_client, namespace
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.coordination = client.CoordinationV1Api(api_client)

    def _verbs(self, kind: str) -> tuple[Any, Any, Any]:
        """(read, create, patch) for a kind, each taking the namespace."""
        if kind == "HTTPRoute":
            args = (GATEWAY_GROUP, GATEWAY_VERSION)
            return (
                lambda name, ns: self.custom.get_namespaced_custom_object(
                    *args, ns, "httproutes", name
                ),
                lambda ns, body: self.custom.create_namespaced_custom_object(
                    *args, ns, "httproutes", body
                ),
                lambda name, ns, body: self.custom.patch_namespaced_custom_object(
                    *args, ns, "httproutes", name, body
                ),
            )
        api, suffix = {
            "Deployment": (self.apps, "deployment"),
            "Service": (self.core, "service"),
            "PodDisruptionBudget": (self.policy, "pod_disruption_budget"),
            "HorizontalPodAutoscaler": (self.autoscaling, "horizontal_pod_autoscaler"),
        }[kind]
        return (
            getattr(api, f"read_namespaced_{suffix}"),
            getattr(api, f"create_namespaced_{suffix}"),
            lambda name, ns, body: getattr(api, f"patch_namespaced_{suffix}")(
                name, ns, body, _content_type=MERGE_PATCH
            ),
        )

    def _plain(self, obj: Any) -> Obj:
        return obj if isinstance(obj, dict) else dict(self.api.sanitize_for_serialization(obj))

    @_retry
    def read(self, kind: str, name: str) -> Obj | None:
        from kubernetes.client.rest import ApiException

        try:
            return self._plain(self._verbs(kind)[0](name, self.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    @_retry
    def apply(self, obj: Obj, instance: str, remove: tuple[tuple[str, ...], ...] = ()) -> Obj:
        """Create ``obj``, or merge-patch the existing object to it after checking it is ours.

        ``remove``: paths (tuples of keys) of map entries to delete on the way, such as a
        selector's slot label.
        """
        from kubernetes.client.rest import ApiException

        kind, name = obj["kind"], obj["metadata"]["name"]
        read, create, patch = self._verbs(kind)
        try:
            current = self._plain(read(name, self.namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                return self._plain(create(self.namespace, obj))
            except ApiException as created:
                if created.status != 409:
                    raise
                current = self._plain(read(name, self.namespace))  # created meanwhile
        if not owned(current, instance):
            labels = current["metadata"].get("labels") or {}
            raise NotOwned(
                f"{kind} {self.namespace}/{name} exists and is not Helmsman's (labels "
                f"{json.dumps(labels, sort_keys=True)}): it lacks {MANAGED_BY_LABEL}={MANAGER} "
                f"for instance {instance}. Serve under another name, or remove that object"
            )
        body = json.loads(json.dumps(obj))
        for path in remove:
            *parents, key = path
            node = body
            for part in parents:
                node = node.setdefault(part, {})
            node[key] = None
        return self._plain(patch(name, self.namespace, body))

    @_retry
    def scale(self, deployment: str, replicas: int) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self.apps.patch_namespaced_deployment_scale(
                deployment, self.namespace, {"spec": {"replicas": replicas}}
            )
        except ApiException as exc:
            if exc.status != 404:  # nothing to scale is scaled
                raise

    @_retry
    def pods(self, labels: dict[str, str]) -> list[Obj]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        listed = self.core.list_namespaced_pod(self.namespace, label_selector=selector)
        return [self._plain(p) for p in listed.items if p.metadata.deletion_timestamp is None]

    @_retry
    def logs(self, pod: str, since_seconds: int) -> str:
        # Unparsed: the client would otherwise render the body's bytes as a Python literal.
        response = self.core.read_namespaced_pod_log(
            pod, self.namespace, since_seconds=max(1, since_seconds), _preload_content=False
        )
        try:
            return bytes(response.data).decode("utf-8", errors="replace")
        finally:
            response.release_conn()

    # -- the Lease: create and replace guarded by resourceVersion, never read-then-patch ------

    @_retry
    def lease(self, name: str) -> Obj | None:
        from kubernetes.client.rest import ApiException

        try:
            return self._plain(self.coordination.read_namespaced_lease(name, self.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    @_retry
    def write_lease(self, body: Obj) -> Obj:
        """Create (no resourceVersion) or replace (with the one read): 409 raises Conflict."""
        from kubernetes.client.rest import ApiException

        try:
            if body["metadata"].get("resourceVersion"):
                written = self.coordination.replace_namespaced_lease(
                    body["metadata"]["name"], self.namespace, body
                )
            else:
                written = self.coordination.create_namespaced_lease(self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(
                    f"lease {self.namespace}/{body['metadata']['name']} changed under us"
                ) from exc
            raise
        return self._plain(written)
