"""The model contract: what a team declares in ``models/<name>/model.yaml``.

A model is a folder. Its ``model.yaml`` names the raw schema (id, timestamp, label, and every
column's type with its range or vocabulary and nullability), the task, where the data comes
from, the feature function, the trainer, how a challenger is judged, how the winner is served,
the schedule and the GPUs. The Airflow side builds the model's DAGs from it
(``helmsman.factory``); the pods read the same file.

Validation is pydantic's, with every field declared and nothing else allowed: an error names
the file, the field's path and what the field allows, e.g.::

    models/churn/model.yaml: evaluation.metric: Input should be 'roc_auc', 'accuracy', ...
      (got 'auc')

Standard library, pydantic and PyYAML only: a DAG file loads specs at parse time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from helmsman_steps import contract

SPEC_FILE = "model.yaml"
# libyaml's safe loader where PyYAML was built with it: a DAG file parses its model's spec on
# every parse, and the pure-Python loader is most of that cost (2.3 ms against 0.3 ms).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# A model's name becomes DAG ids (train_<name>), a registered model and Kubernetes object
# names (<name>-serving, 63 characters at most with the longest suffix): a DNS-1123 label.
NAME_PATTERN = r"^[a-z]([a-z0-9-]{0,28}[a-z0-9])?$"
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# "module:function" (importable) or "file.py:function" (a file in the model's folder).
EntryPoint = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*(\.py)?:[A-Za-z_]\w*$")]
# Kubernetes quantities: 250m, 1, 0.5 (CPU); 256Mi, 1Gi, 512M (memory).
CpuQuantity = Annotated[str, Field(pattern=r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$")]
MemoryQuantity = Annotated[str, Field(pattern=r"^[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?$")]

Task = Literal["binary", "multiclass", "regression"]
METRICS: dict[str, tuple[Task, ...]] = {
    # metric -> the tasks it judges; higher is better for all but the errors (rmse, mae).
    "roc_auc": ("binary",),
    "accuracy": ("binary", "multiclass"),
    "f1_macro": ("binary", "multiclass"),
    "rmse": ("regression",),
    "mae": ("regression",),
    "r2": ("regression",),
}
LOWER_IS_BETTER = frozenset({"rmse", "mae"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Column(_Strict):
    """A raw input column: its type and what a valid value is."""

    type: Literal["float", "int", "category"]
    range: tuple[float, float] | None = Field(default=None, description="[low, high], inclusive")
    vocabulary: tuple[str, ...] | None = Field(default=None, min_length=1)
    nullable: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Column:
        if self.type == "category":
            if self.vocabulary is None:
                raise ValueError("a category column needs a vocabulary (its allowed values)")
            if self.range is not None:
                raise ValueError("a category column has a vocabulary, not a range")
            if len(set(self.vocabulary)) != len(self.vocabulary):
                raise ValueError("the vocabulary repeats a value")
        else:
            if self.vocabulary is not None:
                raise ValueError(f"a {self.type} column has a range, not a vocabulary")
            if self.range is not None and self.range[0] > self.range[1]:
                raise ValueError(f"range low {self.range[0]} is above high {self.range[1]}")
        return self


class Label(_Strict):
    name: Identifier
    # Classification: the label's values, in the order the model's outputs follow.
    classes: tuple[int | str, ...] | None = None
    # Regression: the values a label (and a prediction) can take, [low, high]. Rows outside
    # are quarantined; serving's prediction histogram spans it, so rollouts compare versions.
    range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Label:
        if self.classes is not None and self.range is not None:
            raise ValueError("a label has classes (classification) or a range (regression)")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range low {self.range[0]} must be below high {self.range[1]}")
        return self


class RawSchema(_Strict):
    id: Identifier
    timestamp: Identifier
    label: Label
    columns: dict[Identifier, Column] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> RawSchema:
        reserved = {self.id: "id", self.timestamp: "timestamp", self.label.name: "label"}
        if len(reserved) < 3:
            raise ValueError("id, timestamp and label must be three different columns")
        for name in self.columns:
            if name in reserved:
                raise ValueError(f"column {name!r} is already the {reserved[name]} column")
        return self


class Trainer(_Strict):
    # mlp: Helmsman's PyTorch MLP (GPUs); sklearn / lightgbm: gradient boosting and friends;
    # custom: your own function, "module:function" or "train.py:function" in the folder.
    kind: Literal["mlp", "sklearn", "lightgbm", "custom"]
    entrypoint: EntryPoint | None = None
    params: dict[Identifier, int | float | str | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _entrypoint(self) -> Trainer:
        if self.kind == "custom" and self.entrypoint is None:
            raise ValueError("a custom trainer needs an entrypoint, e.g. train.py:train")
        if self.kind != "custom" and self.entrypoint is not None:
            raise ValueError(
                f"entrypoint is for custom trainers; the {self.kind} trainer is built in"
            )
        return self


class Evaluation(_Strict):
    metric: Literal["roc_auc", "accuracy", "f1_macro", "rmse", "mae", "r2"]
    floor: float = Field(description="a challenger's metric must reach this to be promoted")
    # Promotion rule: the challenger beats the champion by at least this much (in the
    # metric's better direction).
    min_improvement: float = Field(default=0.0, ge=-1, le=1)
    # The held-out rows both models are scored on: those of the run's data interval (a day,
    # for a model with plenty of rows a day), or of its whole training window (a small feed).
    holdout: Literal["interval", "window"] = "interval"


class Resources(_Strict):
    cpu: CpuQuantity = "250m"
    memory: MemoryQuantity = "256Mi"


class Serving(_Strict):
    replicas: int = Field(default=2, ge=1, le=20)
    resources: Resources = Field(default_factory=lambda: Resources())
    strategy: Literal["canary", "blue-green", "rolling"] = "canary"
    canary_steps: tuple[Annotated[int, Field(gt=0, lt=100)], ...] = (5, 25, 50)
    # Overrides of the rollout's analysis thresholds (helmsman.serving.analysis.Thresholds).
    thresholds: dict[Identifier, float] = Field(default_factory=dict)

    @field_validator("canary_steps")
    @classmethod
    def _increasing(cls, steps: tuple[int, ...]) -> tuple[int, ...]:
        if list(steps) != sorted(set(steps)):
            raise ValueError("canary steps must increase, each a percentage below 100")
        return steps


class Monitoring(_Strict):
    """How the served model is watched (the ``monitor_<name>`` DAG) and when a window of its
    traffic breaches: a breach emits the model's ``drift`` asset event, which starts a training
    run (helmsman_steps.monitor documents each measure)."""

    schedule: str = "@hourly"
    window_hours: int = Field(default=1, ge=1, le=168, description="hours of traffic judged")
    # A column drifts when its PSI reaches `psi` and (a number) the KS test's p-value is below
    # `ks_pvalue`. 0.2 is the usual "significant shift" line of PSI.
    psi: float = Field(default=0.2, gt=0, le=10)
    ks_pvalue: float = Field(default=0.001, gt=0, lt=1)
    prediction_psi: float = Field(default=0.2, gt=0, le=10)
    missing_increase: float = Field(default=0.05, gt=0, le=1)
    unseen_share: float = Field(default=0.05, gt=0, le=1)
    min_rows: int = Field(default=200, ge=1, description="a thinner window is not judged")
    # Where labels of served requests arrive (the dataset store's labels/ feed): the live
    # metric (evaluation's) over the last `performance_hours` may fall at most this share
    # below the version's evaluation figure (0.05: 5% worse).
    performance_drop: float = Field(default=0.05, gt=0, le=1)
    performance_hours: int = Field(default=24, ge=1, le=24 * 28)
    # After a breach starts a training run, further breaches within this many hours start none.
    cooldown_hours: float = Field(default=6, ge=0, le=168)
    retrain: bool = Field(default=True, description="a breach starts a training run")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str) -> str:
        return _cron_or_preset(schedule)


def _cron_or_preset(schedule: str) -> str:
    if schedule.startswith("@"):
        presets = ("@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly")
        if schedule not in presets:
            raise ValueError(f"unknown preset {schedule!r}; one of {presets} or cron")
        return schedule
    try:
        from croniter import croniter  # Airflow's dependency
    except ImportError:  # in a pod: the DAG processor validated the schedule already
        return schedule
    if not croniter.is_valid(schedule):
        raise ValueError(f"{schedule!r} is not a cron expression (e.g. '0 3 * * *')")
    return schedule


class ModelSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    task: Task
    source: str = Field(
        pattern=r"^[a-z][a-z0-9+.-]*://", description="where raw records come from: a URI"
    )
    raw_schema: RawSchema = Field(alias="schema")
    features: EntryPoint | None = None  # one function for ETL and serving
    trainer: Trainer
    evaluation: Evaluation
    serving: Serving = Field(default_factory=lambda: Serving())
    monitoring: Monitoring = Field(default_factory=lambda: Monitoring())
    schedule: str | None = "0 3 * * *"
    window_days: int = Field(default=7, ge=1, le=90, description="days a run trains on")
    gpus: int = Field(default=0, ge=0, le=8, description="GPUs per training pod")
    nodes: int = Field(
        default=1, ge=1, le=8,
        description="training pods that train as one (torchrun across nodes; above 1: an "
        "Indexed Job)",
    )  # fmt: skip

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str | None) -> str | None:
        return None if schedule is None else _cron_or_preset(schedule)

    @model_validator(mode="after")
    def _task_fits(self) -> ModelSpec:
        if self.task not in METRICS[self.evaluation.metric]:
            fits = sorted(m for m, tasks in METRICS.items() if self.task in tasks)
            raise ValueError(
                f"evaluation.metric: {self.evaluation.metric!r} does not judge a {self.task} "
                f"model; use one of {fits}"
            )
        classes = self.raw_schema.label.classes
        label_range = self.raw_schema.label.range
        if self.task == "regression" and (classes is not None or label_range is None):
            raise ValueError(
                "schema.label: a regression label has a range [low, high] and no classes"
            )
        if self.task == "binary" and (classes is None or len(classes) != 2):
            raise ValueError("schema.label.classes: a binary label needs exactly two classes")
        if self.task == "multiclass" and (classes is None or len(classes) < 3):
            raise ValueError("schema.label.classes: a multiclass label needs three or more")
        if self.gpus and self.trainer.kind not in contract.GPU_TRAINERS:
            raise ValueError(f"gpus: the {self.trainer.kind} trainer runs on CPU; set gpus: 0")
        if self.nodes > 1 and self.trainer.kind not in contract.GPU_TRAINERS:
            raise ValueError(
                f"nodes: the {self.trainer.kind} trainer runs in one process; set nodes: 1"
            )
        return self

    @property
    def instance(self) -> str:
        """The serving instance's name: Deployments, Services and the HTTPRoute."""
        return contract.serving_instance(self.name)

    @property
    def higher_is_better(self) -> bool:
        return self.evaluation.metric not in LOWER_IS_BETTER


def to_json(model: ModelSpec) -> str:
    """The spec as the pods receive it and the model version keeps it (field names as in
    model.yaml)."""
    return model.model_dump_json(by_alias=True)


def from_json(text: str, origin: str = contract.MODEL_SPEC_ENV) -> ModelSpec:
    """A spec from ``to_json``'s text, validated again; errors name ``origin``."""
    try:
        return ModelSpec.model_validate_json(text)
    except ValidationError as exc:
        raise ModelSpecError(_explain(origin, exc)) from None


class ModelSpecError(ValueError):
    """A model folder a person must fix; the message names the file and each field."""


def load(folder: str | Path) -> ModelSpec:
    """Read and validate ``folder/model.yaml``; the folder's name must be the model's name."""
    path = Path(folder) / SPEC_FILE
    shown = _shown(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ModelSpecError(f"{shown}: no such file; a model folder needs one") from None
    try:
        data = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ModelSpecError(f"{shown}: not valid YAML{where}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelSpecError(f"{shown}: must be a mapping of fields, got {type(data).__name__}")
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise ModelSpecError(_explain(shown, exc)) from None
    if spec.name != path.parent.name:
        raise ModelSpecError(
            f"{shown}: name: {spec.name!r} must be the folder's name, {path.parent.name!r}"
        )
    return spec


def _shown(path: Path) -> str:
    """``models/<name>/model.yaml``: the path a person sees in their repository."""
    parts = path.parts
    return str(Path(*parts[-3:])) if len(parts) >= 3 else str(path)


def _explain(shown: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        # A rule across fields (the model's own validator) names its fields in the message.
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (a typo?); see the fields in models/README.md"
        elif error["type"] == "missing":
            message = "required field is missing"
        got = "" if error["type"] in ("missing", "extra_forbidden") else _got(error)
        lines.append(f"{shown}: {where + ': ' if where else ''}{message}{got}")
    return "\n".join(lines)


def _got(error: Any) -> str:
    value = error.get("input")
    if isinstance(value, dict | list) or value is None:
        return ""
    text = repr(value)
    return f" (got {text[:60]})"


def discover(root: str | Path) -> list[Path]:
    """The model folders under ``root``: every folder with a ``model.yaml``, by name."""
    base = Path(root)
    found = (p.parent for p in base.glob(f"*/{SPEC_FILE}"))
    return sorted(folder for folder in found if re.match(r"^[^._]", folder.name))
