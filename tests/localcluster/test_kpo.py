"""The real KubernetesPodOperator against localcluster, through Airflow's own dag.test().

Each mode runs the probe DAG (tests/localcluster/kpo_dag.py) in a fresh Python process with a
migrated SQLite metadata DB: a pod that succeeds and one that exits 4, logs streamed into the
task log, a pod whose XCom (do_xcom_push, read through pods/exec from KPO's sidecar) reaches
the next task, Helmsman's operator failing bad input (exit 2) for good and retrying the rest,
and nothing left behind afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster_fixtures import Cluster
from tests.dev_env import REPO

RUNNER = """
import sys
sys.path[:0] = sys.argv[1:]
from kpo_dag import dag
run = dag.test()
states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
tries = {ti.task_id: ti.try_number for ti in run.get_task_instances()}
result = {"run": str(run.state), "tasks": states, "tries": tries}
print("RESULT " + __import__("json").dumps(result))
"""


@pytest.fixture(scope="module")
def airflow_env(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow")
    conn = {
        "conn_type": "kubernetes",
        "extra": {"kube_config_path": str(cluster.kubeconfig), "in_cluster": False},
    }
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).parent),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps(conn),
    }
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=240,
    )
    return env


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_kpo_runs_pods_to_success_and_failure(
    cluster: Cluster, airflow_env: dict[str, str], deferrable: bool
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RUNNER,
            str(Path(__file__).parent),
            str(REPO / "plugins"),
            str(REPO / "images" / "steps" / "src"),
        ],
        env={**airflow_env, "KPO_DEFERRABLE": "1" if deferrable else "0"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    output = proc.stdout + proc.stderr
    result_line = next((ln for ln in output.splitlines() if ln.startswith("RESULT ")), None)
    assert result_line is not None, output[-6000:]
    result = json.loads(result_line.removeprefix("RESULT "))
    assert result["tasks"] == {
        "succeeds": "success",
        "fails": "failed",
        "pushes": "success",
        "receives": "success",
        "job_of_three": "success",
        "receives_three": "success",
        "bad_input": "failed",
        "internal_failure": "failed",
    }, output[-6000:]
    # Both have a retry; only the internal failure used it.
    assert (result["tries"]["bad_input"], result["tries"]["internal_failure"]) == (1, 2), result
    assert "exited 2: bad input" in output, output[-6000:]
    assert "Not retried" in output, output[-6000:]
    # The container's lines reached the task log, prefixed with the container name as KPO does
    # ("[base] line 0" streamed in sync mode, "[base] logs: line 0" after the trigger returns).
    for i in range(3):
        assert re.search(rf"\[base\] (logs: )?line {i}\b", output), output[-6000:]
    # The failure report carries the container's own exit code.
    assert "'exit_code': 4" in output, output[-6000:]
    # on_finish_action=delete_pod, and the failed pod is deleted too: nothing is left.
    assert (
        cluster.core.list_namespaced_pod("default", label_selector="dag_id=kpo_probe").items == []
    )
