"""The Job and CronJob controllers, following the real ones where clients can see them.

Job: pods named ``<job>-<suffix>`` (Indexed: ``<job>-<index>-<suffix>``, hostname
``<job>-<index>``, the index in the ``batch.kubernetes.io/job-completion-index`` annotation and
label and in ``JOB_COMPLETION_INDEX``), owned by the Job and labelled with its
``controller-uid``/``job-name`` (so ``kubectl logs job/x`` and the provider's
KubernetesJobOperator find them); ``parallelism`` bounds the active pods, ``completions`` the
successes (NonIndexed counts them, Indexed tracks each index); ``backoffLimit`` counts failed
pods (and container restarts under ``OnFailure``) with the doubling back-off between new pods;
``activeDeadlineSeconds``, ``suspend`` and ``ttlSecondsAfterFinished``; the ``Complete`` and
``Failed`` conditions with the real reasons, ``completedIndexes``, ``ready`` and
``terminating``. Not here: the ``job-tracking`` pod finalizers, pod failure and success
policies, and ``backoffLimitPerIndex``.

CronJob: a Job named ``<cronjob>-<scheduled minutes since the epoch>`` at each time of its
schedule (cron syntax by croniter, in ``timeZone`` or UTC), ``concurrencyPolicy``
Allow/Forbid/Replace, ``startingDeadlineSeconds``, ``suspend``, the history limits, and
``status.active``/``lastScheduleTime``/``lastSuccessfulTime``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import uuid
import zoneinfo
from collections.abc import Callable

from croniter import croniter

from localcluster import errors, events
from localcluster.objects import owned_by, owner_ref, parse_time, pod_ready
from localcluster.resources import CRONJOBS, JOBS, PODS
from localcluster.store import Obj, Store

INDEX = "batch.kubernetes.io/job-completion-index"
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
JOB_NAME = "batch.kubernetes.io/job-name"
SCHEDULED = "batch.kubernetes.io/cronjob-scheduled-timestamp"
MAX_POD_BACKOFF = 360.0
TERMINAL = ("Succeeded", "Failed")

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def finished(job: Obj) -> str | None:
    """ "Complete" or "Failed" once the Job has ended, else None."""
    for condition in job.get("status", {}).get("conditions") or []:
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return str(condition["type"])
    return None


def compress(indexes: set[int]) -> str:
    """Indexes as the status writes them: ``0-2,5``."""
    runs: list[str] = []
    ordered = sorted(indexes)
    start = prev = None
    for i in [*ordered, None]:
        if start is None:
            start = prev = i
        elif i is not None and prev is not None and i == prev + 1:
            prev = i
        else:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = i
    return ",".join(runs)


def _index(pod: Obj) -> int | None:
    value = (pod["metadata"].get("annotations") or {}).get(INDEX)
    return int(value) if value is not None and str(value).isdigit() else None


def _condition(type_: str, reason: str, message: str, at: dt.datetime) -> Obj:
    stamp = _stamp(at)
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": stamp,
        "lastTransitionTime": stamp,
    }


class JobController:
    def __init__(self, store: Store, backoff_seconds: float = 10.0, clock: Clock = _utcnow) -> None:
        self.store, self.backoff_seconds, self.clock = store, backoff_seconds, clock

    def reconcile(self) -> None:
        for job in self.store.list(JOBS):
            with contextlib.suppress(errors.ApiError):
                self.job(job)

    def job(self, job: Obj) -> None:
        if job["metadata"].get("deletionTimestamp"):
            return
        ended = finished(job)
        if ended:
            self._expire(job)
            return
        ns, spec, now = job["metadata"]["namespace"], job["spec"], self.clock()
        pods = [p for p in self.store.list(PODS, ns) if owned_by(p, job)]
        terminating = [p for p in pods if p["metadata"].get("deletionTimestamp")]
        present = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        active = [p for p in present if p.get("status", {}).get("phase") not in TERMINAL]
        succeeded = [p for p in present if p.get("status", {}).get("phase") == "Succeeded"]
        failed = [p for p in present if p.get("status", {}).get("phase") == "Failed"]
        status = copy.deepcopy(job.get("status") or {})
        conditions: list[Obj] = status.get("conditions") or []

        if spec.get("suspend"):
            self._delete(job, active)
            if not any(c["type"] == "Suspended" for c in conditions):
                conditions.append(_condition("Suspended", "JobSuspended", "Job suspended", now))
            self._write(job, status, conditions, [], present, terminating, succeeded, failed)
            return
        conditions = [c for c in conditions if c["type"] != "Suspended"]
        start = parse_time(status["startTime"]) if status.get("startTime") else now
        status["startTime"] = _stamp(start)

        indexed = spec.get("completionMode") == "Indexed"
        completions = spec.get("completions")
        parallelism = spec.get("parallelism", 1)
        done_indexes = {i for p in succeeded if (i := _index(p)) is not None}
        restarts = 0
        if spec["template"]["spec"].get("restartPolicy") == "OnFailure":
            restarts = sum(
                c.get("restartCount", 0)
                for p in active
                for c in p.get("status", {}).get("containerStatuses") or []
            )
        failures = len(failed) + restarts
        deadline = spec.get("activeDeadlineSeconds")

        failure: tuple[str, str] | None = None
        if failures > spec.get("backoffLimit", 6):
            failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif deadline is not None and (now - start).total_seconds() >= deadline:
            failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
        if failure is not None:
            self._delete(job, active)
            conditions += [
                _condition("FailureTarget", *failure, now),
                _condition("Failed", *failure, now),
            ]
            events.record(self.store, job, "Warning", failure[0], failure[1], "job-controller")
            self._write(job, status, conditions, [], present, terminating, succeeded, failed)
            return

        if indexed:
            total = completions or 0
            complete = len(done_indexes) >= total
        elif completions is None:  # a work queue: done when one pod has succeeded and none runs
            complete = bool(succeeded) and not active
        else:
            complete = len(succeeded) >= completions
        if complete:
            reached = ("CompletionsReached", "Reached expected number of succeeded pods")
            conditions += [
                _condition("SuccessCriteriaMet", *reached, now),
                _condition("Complete", *reached, now),
            ]
            status["completionTime"] = _stamp(now)
            events.record(self.store, job, "Normal", "Completed", "Job completed", "job-controller")
            self._write(job, status, conditions, active, present, terminating, succeeded, failed)
            return

        if not self._backing_off(failed, failures, now):
            self._start_pods(job, active, succeeded, done_indexes, completions, parallelism)
            active = [
                p
                for p in self.store.list(PODS, ns)
                if owned_by(p, job)
                and not p["metadata"].get("deletionTimestamp")
                and p.get("status", {}).get("phase") not in TERMINAL
            ]
        self._write(job, status, conditions, active, present, terminating, succeeded, failed)

    def _backing_off(self, failed: list[Obj], failures: int, now: dt.datetime) -> bool:
        """The real controller waits 10 s, 20 s, 40 s, ... (here: the kubelet's back-off) after
        the latest failure before it starts a replacement."""
        if not failed:
            return False
        latest = max(
            parse_time(
                (c.get("state", {}).get("terminated") or {}).get("finishedAt")
                or p["metadata"]["creationTimestamp"]
            )
            for p in failed
            for c in p.get("status", {}).get("containerStatuses") or [{}]
        )
        delay = min(self.backoff_seconds * 2.0 ** max(failures - 1, 0), MAX_POD_BACKOFF)
        waited: float = (now - latest).total_seconds()
        return waited < delay

    def _start_pods(
        self,
        job: Obj,
        active: list[Obj],
        succeeded: list[Obj],
        done: set[int],
        completions: int | None,
        parallelism: int,
    ) -> None:
        spec = job["spec"]
        if spec.get("completionMode") == "Indexed":
            running = {i for p in active if (i := _index(p)) is not None}
            todo = [i for i in range(completions or 0) if i not in done and i not in running]
            for index in todo[: max(parallelism - len(active), 0)]:
                self._create_pod(job, index)
            return
        if completions is None:
            wanted = 0 if succeeded else parallelism
        else:
            wanted = min(parallelism, completions - len(succeeded))
        for _ in range(max(wanted - len(active), 0)):
            self._create_pod(job, None)

    def _create_pod(self, job: Obj, index: int | None) -> None:
        template = copy.deepcopy(job["spec"]["template"])
        meta = template.get("metadata") or {}
        name = job["metadata"]["name"]
        labels = dict(meta.get("labels") or {})
        annotations = dict(meta.get("annotations") or {})
        pod_spec = template["spec"]
        prefix = f"{name}-"
        if index is not None:
            labels[INDEX] = annotations[INDEX] = str(index)
            prefix = f"{name}-{index}-"
            pod_spec.setdefault("hostname", f"{name}-{index}")
            env = {
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX}']"}},
            }
            for container in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
                container.setdefault("env", []).append(copy.deepcopy(env))
        pod = {
            "metadata": {
                "name": prefix + uuid.uuid4().hex[:5],
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [owner_ref(job)],
            },
            "spec": pod_spec,
        }
        created = self.store.create(PODS, job["metadata"]["namespace"], pod)
        events.record(
            self.store,
            job,
            "Normal",
            "SuccessfulCreate",
            f"Created pod: {created['metadata']['name']}",
            "job-controller",
        )

    def _delete(self, job: Obj, pods: list[Obj]) -> None:
        for pod in pods:
            with contextlib.suppress(errors.ApiError):
                self.store.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
            events.record(
                self.store,
                job,
                "Normal",
                "SuccessfulDelete",
                f"Deleted pod: {pod['metadata']['name']}",
                "job-controller",
            )

    def _write(
        self,
        job: Obj,
        status: Obj,
        conditions: list[Obj],
        active: list[Obj],
        present: list[Obj],
        terminating: list[Obj],
        succeeded: list[Obj],
        failed: list[Obj],
    ) -> None:
        status.update(
            active=len(active),
            ready=sum(pod_ready(p) for p in active),
            succeeded=len(succeeded),
            failed=len(failed),
            terminating=len(terminating),
            uncountedTerminatedPods={},
        )
        if job["spec"].get("completionMode") == "Indexed":
            done = {i for p in succeeded if (i := _index(p)) is not None}
            status["completedIndexes"] = compress(done)
        for key in ("active", "succeeded", "failed", "terminating"):
            if status[key] == 0:
                del status[key]  # omitempty, as the real status leaves them
        if conditions:
            status["conditions"] = conditions
        if status != job.get("status"):
            self.store.update(
                JOBS,
                job["metadata"]["namespace"],
                job["metadata"]["name"],
                lambda o: o.__setitem__("status", status),
                "status",
            )

    def _expire(self, job: Obj) -> None:
        """``ttlSecondsAfterFinished``: the finished Job goes, and its pods with it."""
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        conditions = job.get("status", {}).get("conditions") or []
        ended = max(
            (
                parse_time(c["lastTransitionTime"])
                for c in conditions
                if c["type"] in ("Complete", "Failed")
            ),
            default=None,
        )
        if ended is not None and (self.clock() - ended).total_seconds() >= ttl:
            with contextlib.suppress(errors.ApiError):
                self.store.delete(
                    JOBS, job["metadata"]["namespace"], job["metadata"]["name"], None, "Background"
                )


class CronJobController:
    def __init__(self, store: Store, clock: Clock = _utcnow) -> None:
        self.store, self.clock = store, clock

    def reconcile(self) -> None:
        for cronjob in self.store.list(CRONJOBS):
            with contextlib.suppress(errors.ApiError):
                self.cronjob(cronjob)

    def cronjob(self, cj: Obj) -> None:
        if cj["metadata"].get("deletionTimestamp"):
            return
        ns, spec, now = cj["metadata"]["namespace"], cj["spec"], self.clock()
        jobs = [j for j in self.store.list(JOBS, ns) if owned_by(j, cj)]
        running = [j for j in jobs if not finished(j)]
        status = copy.deepcopy(cj.get("status") or {})
        successes = [
            parse_time(c["lastTransitionTime"])
            for j in jobs
            for c in j.get("status", {}).get("conditions") or []
            if c["type"] == "Complete" and c["status"] == "True"
        ]
        if successes:
            latest = max(successes)
            known = status.get("lastSuccessfulTime")
            if known is None or parse_time(known) < latest:
                status["lastSuccessfulTime"] = _stamp(latest)

        due = None if spec.get("suspend") else self._due(cj, status, now)
        if due is not None:
            status["lastScheduleTime"] = _stamp(due)
            policy = spec.get("concurrencyPolicy", "Allow")
            if policy == "Forbid" and running:
                events.record(
                    self.store, cj, "Normal", "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency "
                    "policy is Forbid", "cronjob-controller",
                )  # fmt: skip
            else:
                if policy == "Replace":
                    for job in running:
                        with contextlib.suppress(errors.ApiError):
                            self.store.delete(JOBS, ns, job["metadata"]["name"], None, "Background")
                        events.record(
                            self.store, cj, "Normal", "SuccessfulDelete",
                            f"Deleted job {job['metadata']['name']}", "cronjob-controller",
                        )  # fmt: skip
                    running = []
                made = self._create_job(cj, due)
                if made is not None:
                    running.append(made)
        status["active"] = [
            {
                "kind": "Job",
                "apiVersion": "batch/v1",
                "namespace": ns,
                "name": j["metadata"]["name"],
                "uid": j["metadata"]["uid"],
                "resourceVersion": j["metadata"].get("resourceVersion", ""),
            }
            for j in running
            if self.store.find(JOBS, ns, j["metadata"]["name"]) is not None
        ]
        if not status["active"]:
            del status["active"]
        self._prune(cj, [j for j in jobs if finished(j)])
        if status != (cj.get("status") or {}):
            self.store.update(
                CRONJOBS,
                ns,
                cj["metadata"]["name"],
                lambda o: o.__setitem__("status", status),
                "status",
            )

    def _due(self, cj: Obj, status: Obj, now: dt.datetime) -> dt.datetime | None:
        """The latest scheduled time not yet run, if one has come (and is not too late)."""
        spec = cj["spec"]
        zone = zoneinfo.ZoneInfo(spec.get("timeZone") or "UTC")
        since = parse_time(status.get("lastScheduleTime") or cj["metadata"]["creationTimestamp"])
        times = croniter(spec["schedule"], since.astimezone(zone))
        due: dt.datetime | None = None
        for _ in range(1000):  # the real controller also gives up counting missed times
            moment: dt.datetime = times.get_next(dt.datetime).astimezone(dt.UTC)
            if moment > now:
                break
            due = moment
        if due is None:
            return None
        deadline = spec.get("startingDeadlineSeconds")
        if deadline is not None and (now - due).total_seconds() > deadline:
            return None
        return due

    def _create_job(self, cj: Obj, due: dt.datetime) -> Obj | None:
        template = copy.deepcopy(cj["spec"]["jobTemplate"])
        meta = template.get("metadata") or {}
        name = f"{cj['metadata']['name']}-{int(due.timestamp()) // 60}"
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "labels": dict(meta.get("labels") or {}),
                "annotations": {
                    **(meta.get("annotations") or {}),
                    SCHEDULED: str(int(due.timestamp())),
                },
                "ownerReferences": [owner_ref(cj)],
            },
            "spec": template["spec"],
        }
        try:
            created = self.store.create(JOBS, cj["metadata"]["namespace"], job)
        except errors.ApiError as exc:
            if exc.code == 409:  # made on an earlier pass
                return None
            events.record(
                self.store, cj, "Warning", "FailedCreate",
                f"Error creating job: {exc.message}", "cronjob-controller",
            )  # fmt: skip
            return None
        events.record(
            self.store, cj, "Normal", "SuccessfulCreate", f"Created job {name}",
            "cronjob-controller",
        )  # fmt: skip
        return created

    def _prune(self, cj: Obj, done: list[Obj]) -> None:
        for outcome, key, default in (
            ("Complete", "successfulJobsHistoryLimit", 3),
            ("Failed", "failedJobsHistoryLimit", 1),
        ):
            limit = cj["spec"].get(key, default)
            these = sorted(
                (j for j in done if finished(j) == outcome),
                key=lambda j: j["metadata"]["creationTimestamp"],
            )
            for job in these[: max(len(these) - limit, 0)]:
                with contextlib.suppress(errors.ApiError):
                    self.store.delete(
                        JOBS, job["metadata"]["namespace"], job["metadata"]["name"], None,
                        "Background",
                    )  # fmt: skip
