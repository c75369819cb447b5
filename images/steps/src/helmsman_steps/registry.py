"""MLflow helpers the steps share: idempotent runs keyed by pipeline run, lineage tags.

A step that Airflow retries must find the run its earlier attempt made instead of starting a
second one, so runs are looked up by a ``helmsman.run_key`` tag (``{dag_id}/{run_id}/{stage}``
in the DAG). mlflow is imported inside the functions: the CLI imports this module for every
command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from helmsman_steps.exitcodes import BadInputError

if TYPE_CHECKING:
    from mlflow import ActiveRun
    from mlflow.entities import Run

from helmsman_steps.contract import RUN_KEY_TAG, TAG_PREFIX


@dataclass(frozen=True)
class Lineage:
    """Where a run's outputs came from; written as ``helmsman.*`` tags on runs and versions."""

    dag_id: str = ""
    run_id: str = ""
    interval_start: str = ""
    interval_end: str = ""
    image: str = ""
    code_version: str = ""

    @classmethod
    def from_env(cls, **overrides: str) -> Lineage:
        """Airflow passes these to pods as environment variables (see the pod factory)."""
        env = {
            "dag_id": os.environ.get("HELMSMAN_DAG_ID", ""),
            "run_id": os.environ.get("HELMSMAN_RUN_ID", ""),
            "image": os.environ.get("HELMSMAN_IMAGE", ""),
            "code_version": os.environ.get("HELMSMAN_CODE_VERSION", ""),
        }
        return cls(**{**env, **overrides})

    def tags(self) -> dict[str, str]:
        return {f"{TAG_PREFIX}{k}": v for k, v in self.__dict__.items() if v}


def get_or_start_run(
    experiment: str, run_key: str, run_name: str, tags: dict[str, str]
) -> ActiveRun:
    """Start (or resume) the run for ``run_key`` in ``experiment`` as the active run."""
    import mlflow

    experiment_id = ensure_experiment(experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    existing = find_run(experiment, run_key)
    if existing is not None:
        return mlflow.start_run(run_id=existing.info.run_id)
    return mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, tags={**tags, RUN_KEY_TAG: run_key}
    )


def ensure_experiment(name: str) -> str:
    """The id of the experiment ``name``, created if missing, also when another process
    creates it at the same moment (two backfill runs' first steps on a new server).

    ``mlflow.set_experiment(name)`` loses that race quietly: the process whose create is
    refused as a duplicate gets the experiment back but is left with no active experiment,
    so its next ``start_run`` lands in the Default experiment, where no lookup by
    ``run_key`` finds it (mlflow/mlflow#12259)."""
    from mlflow.exceptions import MlflowException

    found = client().get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client().create_experiment(name))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    created = client().get_experiment_by_name(name)
    if created is None:  # created and deleted again in between: nothing sane to do but say so
        raise RuntimeError(f"experiment {name!r} was created by another process, then is gone")
    return str(created.experiment_id)


def find_run(experiment: str, run_key: str) -> Run | None:
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs: list[Run] = mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{_quote(run_key)}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None


def _quote(value: str) -> str:
    # MLflow's filter grammar has no escape for a quote inside a string literal.
    if "'" in value:
        raise BadInputError(f"run key {value!r} must not contain a single quote")
    return value


def client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def dataset_hash(reports: list[dict[str, Any]]) -> str:
    """One hash for a set of dataset days, from each day's content hash (in day order)."""
    import hashlib

    joined = ",".join(f"{r['day']}:{r['content_hash']}" for r in reports)
    return hashlib.sha256(joined.encode()).hexdigest()


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]


def resolve(model_uri: str) -> ResolvedModel:
    """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` -> the exact version it names now."""
    if not model_uri.startswith("models:/"):
        raise BadInputError(
            f"model URI {model_uri!r} must look like models:/NAME/VERSION or models:/NAME@ALIAS"
        )
    spec = model_uri[len("models:/") :]
    c = client()
    try:
        if "@" in spec:
            name, alias = spec.split("@", 1)
            mv = c.get_model_version_by_alias(name, alias)
        else:
            name, _, version = spec.partition("/")
            mv = c.get_model_version(name, version)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
            raise BadInputError(f"{model_uri} does not exist in the model registry") from exc
        raise
    return ResolvedModel(mv.name, str(mv.version), mv.run_id, tuple(mv.aliases or ()))


def champion(model_name: str) -> ResolvedModel | None:
    try:
        return resolve(f"models:/{model_name}@champion")
    except BadInputError:
        return None


def download_spec(model: ResolvedModel, destination: str) -> str | None:
    """Download the spec a version was trained with; None for versions registered without."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    from helmsman_steps.contract import MODEL_SPEC_FILE

    os.makedirs(destination, exist_ok=True)
    repo = ModelsArtifactRepository(f"models:/{model.name}/{model.version}")
    wanted = f"extra_files/{MODEL_SPEC_FILE}"
    if wanted not in {f.path for f in repo.list_artifacts("extra_files")}:  # type: ignore[no-untyped-call]
        return None
    path: str = repo.download_artifacts(wanted, dst_path=destination)  # type: ignore[no-untyped-call]
    return path


def download_serving_model(model: ResolvedModel, destination: str) -> str:
    """Download what serves a model version -- its ONNX graph, or the numpy export of a
    version registered before ONNX -- and return its local path."""
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    from helmsman_steps.model import FILENAME
    from helmsman_steps.onnx_model import FILENAME as ONNX_FILENAME

    os.makedirs(destination, exist_ok=True)
    repo = ModelsArtifactRepository(f"models:/{model.name}/{model.version}")
    present = {f.path for f in repo.list_artifacts("extra_files")}  # type: ignore[no-untyped-call]
    wanted = next(
        (f"extra_files/{name}" for name in (ONNX_FILENAME, FILENAME)
         if f"extra_files/{name}" in present),
        None,
    )  # fmt: skip
    if wanted is None:  # the store answered, and the files are gone: no retry brings them back
        raise BadInputError(
            f"version {model.version} of model {model.name} has no serving artifact "
            f"(extra_files/{ONNX_FILENAME} or extra_files/{FILENAME}; training run "
            f"{model.run_id}): its files were deleted from the artifact store. Roll back to a "
            "version that has them, or train a new one"
        )
    path: str = repo.download_artifacts(wanted, dst_path=destination)  # type: ignore[no-untyped-call]
    return path
