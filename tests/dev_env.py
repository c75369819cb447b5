"""The development environment every test and test subprocess runs Airflow in.

Variables and Connections come from ``AIRFLOW_VAR_*`` / ``AIRFLOW_CONN_*`` environment
variables, so no metadata database is needed to parse or check a DAG. Values here are for
development only; real ones come from Kubernetes Secrets (see helm-values/).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAGS_FOLDER = REPO / "dags"
PLUGINS_FOLDER = REPO / "plugins"
# The plugins import the step package's contract and model spec (installed in the Airflow
# image; here, from the source tree).
STEPS_SRC = REPO / "images" / "steps" / "src"

DEV_VARIABLES = {
    "helmsman_namespace": "ml",
}
DEV_CONNECTIONS = {
    "kubernetes_default": {
        "conn_type": "kubernetes",
        "extra": {"in_cluster": False, "kube_config_path": "/nonexistent/kubeconfig"},
    },
    "mlflow_default": {"conn_type": "http", "host": "127.0.0.1", "port": 5000},
}


def airflow_env(airflow_home: Path) -> dict[str, str]:
    """Environment for an Airflow process whose state lives under ``airflow_home``."""
    env = {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "PYTHONPATH": os.pathsep.join([str(PLUGINS_FOLDER), str(STEPS_SRC)]),
    }
    env |= {f"AIRFLOW_VAR_{k.upper()}": v for k, v in DEV_VARIABLES.items()}
    env |= {f"AIRFLOW_CONN_{k.upper()}": json.dumps(v) for k, v in DEV_CONNECTIONS.items()}
    return env
