"""Helmsman's Airflow-side library: what the DAG files import.

It will hold the pod factory, the rollout with its health gate, the MLflow registry helpers
and the backfill fence. Airflow puts plugins/ on sys.path, so DAG files import it as
``helmsman``. Nothing here may import pandas, numpy, mlflow or torch at module level: DAG files
import this package at parse time.
"""
