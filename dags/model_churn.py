"""Airflow DAGs of the churn model, built from models/churn/model.yaml: train_churn (daily
training with a gated rollout), rollback_churn and scale_churn (operations),
monitor_churn (hourly drift checks; a breach starts train_churn)."""

from pathlib import Path

from helmsman.factory import model_dags

train, rollback, scale, monitor = model_dags("churn", Path(__file__).parents[1] / "models")
