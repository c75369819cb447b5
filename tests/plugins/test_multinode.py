"""Multi-node training: a model with ``nodes: 2`` trains as an Indexed Job of two pods, through
the provider's KubernetesJobOperator, on localcluster, into a real MLflow.

Airflow's own ``dag.test()`` runs the model's DAG up to its train task (plan, ETL, train) in a
fresh process; each of the Job's pods runs torchrun with one CPU process (gloo), and the two
find each other through the rendezvous Service by Kubernetes DNS names. The GPU side (NCCL
between nodes, RDMA) needs a GPU cluster and is not exercised here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helmsman_steps import registry
from tests.cluster_fixtures import FAST, Cluster, kubectl, start_cluster
from tests.dev_env import REPO, airflow_env
from tests.k8s_policy import role_check

MODEL = "churn-nodes"
TEST_AGENT = "helmsman-tests"
CONF = {"data_end": "2026-03-04", "window_days": 2, "epochs": 2, "hidden": "16",
        "batch_size": 256, "nodes": 2, "gpus": 0}  # fmt: skip
# The model's DAG file, as tools/new_model.py writes one.
DAG_FILE = """
# Airflow DAGs of one model (the DagBag's safe mode reads files that name airflow and dag).
from pathlib import Path
from helmsman.factory import model_dags
train, rollback, scale, monitor = model_dags("{name}", Path("{models}"))
"""
# Up to the train task: what follows it (evaluation, the rollout) is marked done, not run.
RUNNER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from model_dag import train
run = train.test(run_conf=json.loads(sys.argv[2]),
                 mark_success_pattern="^(evaluate|decide|rollout|promote)$")
states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
print("RESULT " + json.dumps({"run": str(run.state), "tasks": states}))
"""


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # It must exist before the pods start: the pod factory's pods have an emptyDir at /tmp,
    # and localcluster keeps visible under it only the folders a pod's environment names that
    # exist (the ETL pod would write into its emptyDir otherwise).
    return tmp_path_factory.mktemp("datasets-multinode")


@pytest.fixture(scope="module")
def audited(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, datasets: Path
) -> Iterator[Cluster]:
    """A localcluster with an audit log, set up as a platform team would (namespace, RBAC, the
    MLflow Secret, the settings ConfigMap)."""
    root = tmp_path_factory.mktemp("multinode")
    cluster = start_cluster(root / "cluster", FAST, audit_log=root / "audit.jsonl")
    cluster.api.user_agent = TEST_AGENT  # the audit log tells the test's calls from Airflow's
    try:
        kubectl(cluster, "apply", "-f", str(REPO / "deploy" / "namespace.yaml"))
        kubectl(cluster, "apply", "-f", str(REPO / "deploy" / "rbac.yaml"))
        objects = [
            {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": "helmsman-mlflow", "namespace": "ml"},
             "data": {"MLFLOW_TRACKING_URI": base64.b64encode(mlflow_server.encode()).decode()}},
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "helmsman-settings", "namespace": "ml"},
             "data": {"HELMSMAN_DATASET_URI": str(datasets),
                      "HELMSMAN_SOURCE_URI_CHURN_NODES":
                          "synthetic://churn?rows_per_day=3000&seed=7"}},
        ]  # fmt: skip
        manifest = root / "settings.yaml"
        manifest.write_text(yaml.safe_dump_all(objects))
        kubectl(cluster, "apply", "-f", str(manifest))
        yield cluster
    finally:
        cluster.api.close()
        cluster.server.stop()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/churn as a model of its own that trains on two nodes."""
    folder = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO / "models" / "churn", folder / MODEL)
    spec = yaml.safe_load((folder / MODEL / "model.yaml").read_text())
    spec.update(name=MODEL, nodes=2, gpus=0)
    (folder / MODEL / "model.yaml").write_text(yaml.safe_dump(spec))
    return folder


@pytest.fixture(scope="module")
def trained(audited: Cluster, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("airflow")
    env = {**os.environ, **airflow_env(home)}
    env["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = json.dumps({
        "conn_type": "kubernetes",
        "extra": {"kube_config_path": str(audited.kubeconfig), "in_cluster": False},
    })  # fmt: skip
    migrate = [sys.executable, "-m", "airflow", "db", "migrate"]
    subprocess.run(migrate, env=env, check=True, capture_output=True, timeout=240)
    dags = home / "dags"
    dags.mkdir()
    (dags / "model_dag.py").write_text(DAG_FILE.format(name=MODEL, models=models_dir))
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags)  # dag.test() serializes what it finds there
    log = home / "dag_test.log"
    with log.open("w") as out, contextlib.suppress(subprocess.TimeoutExpired):
        # On a timeout, what it printed says where it stopped.
        subprocess.run(
            [sys.executable, "-c", RUNNER, str(dags), json.dumps(CONF)],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False,
        )  # fmt: skip
    output = log.read_text()
    line = next((ln for ln in output.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, output[-8000:]
    return json.loads(line.removeprefix("RESULT ")), output


def test_two_nodes_train_one_model_through_the_job_operator(audited: Cluster, trained: Any) -> None:
    result, output = trained
    ran = {task: result["tasks"][task] for task in ("plan", "etl", "train")}
    assert ran == {"plan": "success", "etl": "success", "train": "success"}, output[-8000:]
    versions = registry.client().search_model_versions(f"name='{MODEL}'")
    assert len(versions) == 1  # rank 0 registered; rank 1 trained its share
    run = registry.client().get_run(versions[0].run_id)
    assert run.data.params["processes"] == "2"  # one process on each of the two nodes

    (job,) = audited.batch.list_namespaced_job("ml").items
    assert (job.spec.completion_mode, job.spec.completions, job.status.succeeded) == (
        "Indexed", 2, 2,
    )  # fmt: skip
    command = job.spec.template.spec.containers[0].command
    name = job.metadata.name
    assert command[:4] == ["python", "-m", "helmsman_steps.torchrun", "--nnodes=2"]
    assert f"--master-addr={name}-0.{name}" in command
    assert job.spec.template.spec.subdomain == name
    # The rendezvous Service went with the task.
    services = [s.metadata.name for s in audited.core.list_namespaced_service("ml").items]
    assert name not in services


def test_the_job_operators_calls_are_all_allowed_by_airflows_role(
    audited: Cluster, trained: Any
) -> None:
    check = role_check(REPO / "deploy" / "rbac.yaml", audited.state_dir.parent.parent /
                       "audit.jsonl", ("kubectl", TEST_AGENT))  # fmt: skip
    assert ("batch", "jobs", "create", "ml") in check.made
    assert ("", "services", "delete", "ml") in check.made
    assert check.outside == []
    assert check.denied == []


def test_the_two_nodes_model_is_the_model_one_process_trains(
    trained: Any, models_dir: Path, datasets: Path
) -> None:
    """Same data, seed and settings in one process here: the same scores within float noise."""
    import datetime as dt
    import tempfile

    import numpy as np

    from helmsman_steps import spec, train
    from helmsman_steps.evaluate import holdout
    from helmsman_steps.modelinfo import ModelInfo
    from helmsman_steps.runtime import load_scorer
    from helmsman_steps.store import DatasetStore

    (two_nodes,) = registry.client().search_model_versions(f"name='{MODEL}'")
    start, end = (dt.date.fromisoformat(two_nodes.tags[f"helmsman.interval_{side}"][:10])
                  for side in ("start", "end"))  # fmt: skip
    declared = spec.to_json(spec.load(models_dir / MODEL))
    store = DatasetStore(str(datasets / MODEL))
    config = train.TrainConfig(epochs=CONF["epochs"], batch_size=CONF["batch_size"],
                               hidden=(16,), window_days=CONF["window_days"])  # fmt: skip
    single = train.run(store, start, end, MODEL, "single/process", config, registry.Lineage(),
                       model_spec=declared)  # fmt: skip
    rows = holdout(store, start, end).to_dict("list")
    matrix = ModelInfo.from_dict(json.loads(declared)).featurizer.to_matrix(rows)
    scores = []
    for version in (two_nodes.version, single.model_version):
        resolved = registry.resolve(f"models:/{MODEL}/{version}")
        with tempfile.TemporaryDirectory() as tmp:
            scores.append(load_scorer(registry.download_serving_model(resolved, tmp))
                          .predict_matrix(matrix))  # fmt: skip
    assert np.abs(scores[0] - scores[1]).max() < 1e-5
    assert scores[0].std() > 0.02  # it learnt something
