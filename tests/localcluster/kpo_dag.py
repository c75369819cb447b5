"""A probe DAG for the KubernetesPodOperator tests: one pod that succeeds, one that fails, one
that pushes an XCom (read back through pods/exec) to a task that checks it, and Helmsman's pod
operator with retries whose step exits with bad input (2: not retried) or an internal failure
(1: retried).

``KPO_DEFERRABLE=1`` builds the same tasks in deferrable mode. Run with ``dag.test()`` by
tests/localcluster/test_kpo.py; not a product DAG, so it lives beside its test.
"""

import datetime as dt
import os

from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG, task

from helmsman.pods import HelmsmanPodOperator

SCRIPT = "import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(0.3)\n"
PUSH = (
    "import json\n"
    "json.dump({'answer': 42, 'from': 'the pod'}, open('/airflow/xcom/return.json', 'w'))\n"
)
PUSH_HOSTNAME = (
    "import json, os\n"
    "json.dump({'pod': os.environ['HOSTNAME']}, open('/airflow/xcom/return.json', 'w'))\n"
)
deferrable = os.environ.get("KPO_DEFERRABLE") == "1"

# What every probe pod shares.
POD = {
    "namespace": "default",
    "image": "python:3.11-slim",
    "kubernetes_conn_id": "kubernetes_default",
    "get_logs": True,
    "on_finish_action": "delete_pod",
    "startup_timeout_seconds": 60,
    "poll_interval": 1,
    "deferrable": deferrable,
}

with DAG(dag_id="kpo_probe", schedule=None, start_date=dt.datetime(2026, 1, 1)) as dag:
    for task_id, script in (("succeeds", SCRIPT), ("fails", SCRIPT + "raise SystemExit(4)\n")):
        KubernetesPodOperator(task_id=task_id, name=task_id, cmds=["python", "-c", script], **POD)

    # do_xcom_push: KPO adds its alpine sidecar and reads return.json through pods/exec.
    pushes = KubernetesPodOperator(
        task_id="pushes",
        name="pushes",
        namespace="default",
        image="python:3.11-slim",
        cmds=["python", "-c", PUSH],
        kubernetes_conn_id="kubernetes_default",
        do_xcom_push=True,
        on_finish_action="delete_pod",
        startup_timeout_seconds=60,
        poll_interval=1,
        deferrable=deferrable,
    )

    @task
    def receives(value: dict) -> None:
        if value != {"answer": 42, "from": "the pod"}:
            raise ValueError(f"unexpected XCom: {value!r}")

    receives(pushes.output)

    # A Job of three completions through the provider's own operator, each pod's XCom read
    # back through pods/exec once its container is done.
    job_of_three = KubernetesJobOperator(
        task_id="job_of_three",
        name="three",
        namespace="default",
        image="python:3.11-slim",
        cmds=["python", "-c", PUSH_HOSTNAME],
        kubernetes_conn_id="kubernetes_default",
        completions=3,
        parallelism=3,
        wait_until_job_complete=True,
        do_xcom_push=True,
        get_logs=True,
        job_poll_interval=1,
        deferrable=deferrable,
    )

    @task
    def receives_three(values: list) -> None:
        pods = {v["pod"] for v in values}
        if len(values) != 3 or len(pods) != 3 or not all(p.startswith("job-three") for p in pods):
            raise ValueError(f"unexpected XComs: {values!r}")

    receives_three(job_of_three.output)

    # Helmsman's operator: bad input (exit 2) fails for good at once; an internal failure
    # (exit 1) gets its retry.
    for task_id, code in (("bad_input", 2), ("internal_failure", 1)):
        HelmsmanPodOperator(
            task_id=task_id,
            name=task_id.replace("_", "-"),
            cmds=["python", "-c", f"print('exiting {code}', flush=True); raise SystemExit({code})"],
            retries=1,
            retry_delay=dt.timedelta(seconds=1),
            **POD,
        )
