-- One PostgreSQL for the local stack: a database for Airflow's metadata, one for MLflow.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
