"""Airflow DAGs of the diabetes model, built from models/diabetes/model.yaml: train_diabetes
(daily training with a gated rollout), rollback_diabetes and scale_diabetes (operations),
monitor_diabetes (hourly drift checks)."""

from pathlib import Path

from helmsman.factory import model_dags

train, rollback, scale, monitor = model_dags("diabetes", Path(__file__).parents[1] / "models")
