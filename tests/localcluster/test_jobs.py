"""Jobs and CronJobs: the controllers with real clients (kubectl, the Python client), and the
CronJob schedule against a clock the test moves."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster import jobs
from localcluster.resources import kind
from localcluster.store import Store, ensure
from tests.cluster_fixtures import Cluster, events_of, kubectl, wait_for

NAMESPACES = kind("", "v1", "namespaces")


def job_manifest(name: str, script: str, **spec: Any) -> dict[str, Any]:
    pod_spec = {
        "restartPolicy": spec.pop("restartPolicy", "Never"),
        "containers": [
            {"name": "work", "image": "python:3.11-slim", "command": ["python", "-c", script]}
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"spec": pod_spec}, **spec},
    }


def batch(cluster: Cluster) -> client.BatchV1Api:
    return client.BatchV1Api(cluster.api)


def condition(cluster: Cluster, name: str) -> Any:
    """The Job's Complete or Failed condition, once it has one."""
    status = batch(cluster).read_namespaced_job_status(name, "default").status
    return next(
        (c for c in status.conditions or [] if c.type in ("Complete", "Failed") and c.status),
        None,
    )


def pods_of(cluster: Cluster, name: str) -> list[Any]:
    return cluster.core.list_namespaced_pod("default", label_selector=f"job-name={name}").items


def test_a_job_runs_its_completions_within_its_parallelism(cluster: Cluster) -> None:
    script = "import os; print('done by', os.environ['HOSTNAME'])"
    batch(cluster).create_namespaced_job(
        "default", job_manifest("three", script, completions=3, parallelism=2)
    )
    job = batch(cluster).read_namespaced_job("three", "default")
    uid = job.metadata.uid
    assert job.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": uid}
    assert job.spec.backoff_limit == 6
    assert job.spec.completion_mode == "NonIndexed"

    done = wait_for("the Job to complete", lambda: condition(cluster, "three"), timeout=60)
    assert (done.type, done.reason) == ("Complete", "CompletionsReached")
    status = batch(cluster).read_namespaced_job_status("three", "default").status
    assert (status.succeeded, status.active, status.failed) == (3, None, None)
    assert status.start_time is not None
    assert status.completion_time is not None
    pods = pods_of(cluster, "three")
    assert len(pods) == 3
    for pod in pods:
        assert pod.metadata.name.startswith("three-")
        assert pod.metadata.labels["batch.kubernetes.io/controller-uid"] == uid
        assert pod.metadata.owner_references[0].kind == "Job"
    created = [e for e in events_of(cluster, "three", "SuccessfulCreate")]
    assert len(created) == 3


def test_an_indexed_job_gives_each_pod_its_index(cluster: Cluster) -> None:
    script = "import os; print(os.environ['JOB_COMPLETION_INDEX'], os.environ['HOSTNAME'])"
    batch(cluster).create_namespaced_job(
        "default",
        job_manifest("indexed", script, completions=3, parallelism=3, completionMode="Indexed"),
    )
    wait_for("the indexed Job to complete", lambda: condition(cluster, "indexed"), timeout=60)
    status = batch(cluster).read_namespaced_job_status("indexed", "default").status
    assert status.completed_indexes == "0-2"
    seen = set()
    for pod in pods_of(cluster, "indexed"):
        index = pod.metadata.annotations[jobs.INDEX]
        assert pod.metadata.labels[jobs.INDEX] == index
        assert pod.metadata.name.startswith(f"indexed-{index}-")
        log = cluster.core.read_namespaced_pod_log(
            pod.metadata.name, "default", _preload_content=False
        ).data.decode()
        assert log == f"{index} indexed-{index}\n"
        seen.add(int(index))
    assert seen == {0, 1, 2}


def test_a_failing_job_stops_at_its_backoff_limit(cluster: Cluster) -> None:
    batch(cluster).create_namespaced_job(
        "default", job_manifest("flaky", "raise SystemExit(2)", backoffLimit=1)
    )
    failed = wait_for("the Job to fail", lambda: condition(cluster, "flaky"), timeout=60)
    assert (failed.type, failed.reason) == ("Failed", "BackoffLimitExceeded")
    status = batch(cluster).read_namespaced_job_status("flaky", "default").status
    assert (status.failed, status.active, status.succeeded) == (2, None, None)
    assert events_of(cluster, "flaky", "BackoffLimitExceeded")


def test_a_job_past_its_deadline_fails_and_its_pods_stop(cluster: Cluster) -> None:
    batch(cluster).create_namespaced_job(
        "default",
        job_manifest("slow", "import time; time.sleep(600)", activeDeadlineSeconds=2),
    )
    failed = wait_for("the deadline", lambda: condition(cluster, "slow"), timeout=60)
    assert (failed.type, failed.reason) == ("Failed", "DeadlineExceeded")
    wait_for("its pod to go", lambda: not pods_of(cluster, "slow"), timeout=60)


def test_a_finished_job_with_a_ttl_is_deleted_with_its_pods(cluster: Cluster) -> None:
    batch(cluster).create_namespaced_job(
        "default", job_manifest("brief", "print('hi')", ttlSecondsAfterFinished=1)
    )

    def gone() -> bool:
        try:
            batch(cluster).read_namespaced_job("brief", "default")
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for("the Job to be deleted after its TTL", gone, timeout=60)
    wait_for("its pods to go", lambda: not pods_of(cluster, "brief"), timeout=30)


def test_a_job_that_would_restart_forever_is_refused(cluster: Cluster) -> None:
    with pytest.raises(ApiException) as refused:
        batch(cluster).create_namespaced_job(
            "default", job_manifest("forever", "pass", restartPolicy="Always")
        )
    assert refused.value.status == 422
    assert json.loads(refused.value.body)["message"] == (
        'Job.batch "forever" is invalid: spec.template.spec.restartPolicy: '
        'Unsupported value: "Always": supported values: "OnFailure", "Never"'
    )


def test_kubectl_with_jobs_and_cronjobs(cluster: Cluster, tmp_path: Path) -> None:
    # Another pod first, so that `logs job/x` has to pick the Job's own pod by its selector.
    kubectl(cluster, "run", "bystander", "--image=python:3.11-slim", "--restart=Never", "--",
            "python", "-c", "print('not the job')")  # fmt: skip
    path = tmp_path / "hello.yaml"
    path.write_text(yaml.safe_dump(job_manifest("hello", "print('hello from the job')")))
    assert "job.batch/hello created" in kubectl(cluster, "apply", "-f", str(path))
    kubectl(cluster, "wait", "--for=condition=complete", "job/hello", "--timeout=60s")
    assert kubectl(cluster, "logs", "job/hello") == "hello from the job\n"
    row = kubectl(cluster, "get", "job", "hello").splitlines()[1].split()
    assert row[:3] == ["hello", "Complete", "1/1"]

    nightly = cronjob("nightly", "0 3 * * *")
    nightly.update(apiVersion="batch/v1", kind="CronJob")
    path.write_text(yaml.safe_dump(nightly))
    assert "cronjob.batch/nightly created" in kubectl(cluster, "apply", "-f", str(path))
    header, row = (line.split() for line in kubectl(cluster, "get", "cronjobs").splitlines())
    assert header == [
        "NAME",
        "SCHEDULE",
        "TIMEZONE",
        "SUSPEND",
        "ACTIVE",
        "LAST",
        "SCHEDULE",
        "AGE",
    ]
    assert row[:8] == ["nightly", "0", "3", "*", "*", "*", "<none>", "False"]


# -- CronJob schedule, in process, against a moved clock ------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def cron_store() -> Store:
    store = Store()
    ensure(store, [(NAMESPACES, {"metadata": {"name": "default"}})])
    return store


def cronjob(name: str, schedule: str, **spec: Any) -> dict[str, Any]:
    template = job_manifest(name, "pass")["spec"]
    spec = {"schedule": schedule, "jobTemplate": {"spec": template}, **spec}
    return {"metadata": {"name": name}, "spec": spec}


def made(store: Store, name: str) -> list[str]:
    return sorted(
        j["metadata"]["name"]
        for j in store.list(jobs.JOBS, "default")
        if j["metadata"]["name"].startswith(f"{name}-")
    )


def finish(store: Store, name: str, outcome: str) -> None:
    def done(job: dict[str, Any]) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        job["status"] = {
            "conditions": [{"type": outcome, "status": "True", "lastTransitionTime": stamp}]
        }

    store.update(jobs.JOBS, "default", name, done, "status")


def test_a_cronjob_starts_one_job_per_scheduled_time() -> None:
    store, clock = cron_store(), Clock()
    controller = jobs.CronJobController(store, clock)
    store.create(jobs.CRONJOBS, "default", cronjob("tick", "*/5 * * * *"))
    created = dt.datetime.fromisoformat(
        store.get(jobs.CRONJOBS, "default", "tick")["metadata"]["creationTimestamp"]
    )
    first = created.replace(second=0, microsecond=0) + dt.timedelta(minutes=5 - created.minute % 5)
    clock.now = first - dt.timedelta(seconds=1)
    controller.reconcile()
    assert made(store, "tick") == []

    clock.now = first + dt.timedelta(seconds=1)
    controller.reconcile()
    controller.reconcile()  # once per scheduled time, however often it reconciles
    name = f"tick-{int(first.timestamp()) // 60}"
    assert made(store, "tick") == [name]
    job = store.get(jobs.JOBS, "default", name)
    assert job["metadata"]["annotations"][jobs.SCHEDULED] == str(int(first.timestamp()))
    assert job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
    status = store.get(jobs.CRONJOBS, "default", "tick")["status"]
    assert status["lastScheduleTime"] == first.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [a["name"] for a in status["active"]] == [name]

    # Missed times while it was down: only the latest runs.
    clock.now = first + dt.timedelta(minutes=21)
    controller.reconcile()
    assert made(store, "tick") == sorted(
        [name, f"tick-{int((first + dt.timedelta(minutes=20)).timestamp()) // 60}"]
    )


def test_cronjob_concurrency_policies_and_history() -> None:
    store, clock = cron_store(), Clock()
    controller = jobs.CronJobController(store, clock)
    for name, policy in (("solo", "Forbid"), ("fresh", "Replace")):
        store.create(jobs.CRONJOBS, "default", cronjob(name, "* * * * *", concurrencyPolicy=policy))
    store.create(
        jobs.CRONJOBS, "default", cronjob("kept", "* * * * *", successfulJobsHistoryLimit=1)
    )
    for minute in range(1, 4):
        clock.now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minute, seconds=1)
        controller.reconcile()
        for name in made(store, "kept"):
            if not jobs.finished(store.get(jobs.JOBS, "default", name)):
                finish(store, name, "Complete")
        controller.reconcile()
    # Forbid: the first run never finished, so no other started.
    assert len(made(store, "solo")) == 1
    # Replace: each new run deleted the one before.
    assert len(made(store, "fresh")) == 1
    # History: of three finished runs, one is kept.
    assert len(made(store, "kept")) == 1
    assert store.get(jobs.CRONJOBS, "default", "kept")["status"]["lastSuccessfulTime"]


def test_a_suspended_cronjob_or_a_missed_deadline_starts_nothing() -> None:
    store, clock = cron_store(), Clock()
    controller = jobs.CronJobController(store, clock)
    store.create(jobs.CRONJOBS, "default", cronjob("paused", "* * * * *", suspend=True))
    store.create(jobs.CRONJOBS, "default", cronjob("late", "* * * * *", startingDeadlineSeconds=10))
    created = dt.datetime.fromisoformat(
        store.get(jobs.CRONJOBS, "default", "late")["metadata"]["creationTimestamp"]
    )
    scheduled = created.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    clock.now = scheduled + dt.timedelta(seconds=40)  # 40 s late, over its 10 s deadline
    controller.reconcile()
    assert made(store, "paused") == []
    assert made(store, "late") == []
    clock.now = scheduled + dt.timedelta(minutes=1, seconds=5)  # the next time, 5 s late: runs
    controller.reconcile()
    assert made(store, "late") == [f"late-{int(scheduled.timestamp()) // 60 + 1}"]
    assert made(store, "paused") == []
