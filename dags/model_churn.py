"""Airflow DAGs of the churn model, built from models/churn/model.yaml: train_churn (daily
training with a gated rollout), rollback_churn and scale_churn (operations)."""

from pathlib import Path

from helmsman.factory import model_dags

train, rollback, scale, monitor = model_dags("churn", Path(__file__).parents[1] / "models")
