"""Airflow DAGs of the wine model, built from models/wine/model.yaml: train_wine (a multiclass
LightGBM model, trained on demand with a gated rollout), rollback_wine and scale_wine,
monitor_wine (hourly drift checks)."""

from pathlib import Path

from helmsman.factory import model_dags

train, rollback, scale, monitor = model_dags("wine", Path(__file__).parents[1] / "models")
