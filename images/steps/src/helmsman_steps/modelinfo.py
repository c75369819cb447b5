"""What a step needs to know of the model it works on, from its spec (or churn's defaults).

The columns (id, timestamp, label), the task, the featurizer, the metric that judges it and the
buckets of its served prediction histogram. Plain data in, so the serving image can build it
from the JSON spec a version carries without pydantic.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from helmsman_steps import features, schema

if TYPE_CHECKING:
    from helmsman_steps.spec import ModelSpec

# Classification scores are probabilities: (.., 0.05], .., (0.9, 0.95], +Inf.
PROBABILITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 20))
LOWER_IS_BETTER = frozenset({"rmse", "mae"})


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: str  # binary, multiclass, regression
    id_column: str
    timestamp: str
    label: str
    classes: tuple[Any, ...] | None
    label_range: tuple[float, float] | None
    raw_columns: Mapping[str, Mapping[str, Any]]
    featurizer: features.Featurizer
    metric: str
    floor: float
    holdout: str  # interval or window
    trainer: str
    trainer_params: Mapping[str, Any]
    trainer_entrypoint: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        """From the spec as JSON data (``spec.to_json``; field names as in model.yaml)."""
        declared = data["schema"]
        label = declared["label"]
        return cls(
            name=data["name"],
            task=data["task"],
            id_column=declared["id"],
            timestamp=declared["timestamp"],
            label=label["name"],
            classes=tuple(label["classes"]) if label.get("classes") else None,
            label_range=(label["range"][0], label["range"][1]) if label.get("range") else None,
            raw_columns=declared["columns"],
            featurizer=features.Featurizer.from_columns(
                declared["columns"], data.get("features"), data["name"]
            ),
            metric=data["evaluation"]["metric"],
            floor=float(data["evaluation"]["floor"]),
            holdout=data["evaluation"].get("holdout", "interval"),
            trainer=data["trainer"]["kind"],
            trainer_params=data["trainer"].get("params") or {},
            trainer_entrypoint=data["trainer"].get("entrypoint"),
        )

    @classmethod
    def of(cls, declared: ModelSpec | None, name: str = "churn") -> ModelInfo:
        """The model a spec declares; churn's built-in schema without one."""
        if declared is not None:
            return cls.from_dict(declared.model_dump(mode="json", by_alias=True))
        return cls.churn(name)

    @classmethod
    def from_file(cls, path: str | None, name: str = "churn") -> ModelInfo:
        """From a version's stored ``model_spec.json``; churn's for a version without one."""
        if path is None:
            return cls.churn(name)
        with open(path) as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def churn(cls, name: str = "churn") -> ModelInfo:
        columns: dict[str, Mapping[str, Any]] = {
            **{n: {"type": "float", "range": list(r)} for n, r in schema.NUMERIC_RANGES.items()},
            **{n: {"type": "category", "vocabulary": list(v)}
               for n, v in schema.CATEGORIES.items()},
        }  # fmt: skip
        return cls(
            name, "binary", schema.ID_COLUMN, schema.DATE_COLUMN, schema.LABEL, (0, 1), None,
            columns, features.Featurizer.churn(), "roc_auc", 0.6, "interval", "mlp", {},
        )  # fmt: skip

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER

    @property
    def input_columns(self) -> list[str]:
        """The raw columns a request sends (and the golden set holds)."""
        return list(self.raw_columns)

    def target(self, labels: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The label as the model learns it: 1.0 for a binary label's second class, a
        multiclass label's index in ``classes``, a regression's value."""
        values = np.asarray(labels)
        if self.task == "binary" and self.classes is not None:
            positive: npt.NDArray[np.bool_] = np.asarray(values == self.classes[1])
            return positive.astype(np.float32)
        if self.task == "multiclass" and self.classes is not None:
            index = {c: i for i, c in enumerate(self.classes)}
            # CSV and Parquet may hand an int label back as a float or a string: match by value.
            index |= {str(c): i for i, c in enumerate(self.classes)}
            found = [index.get(v, index.get(str(v), -1)) for v in values.tolist()]
            if -1 in found:
                unknown = sorted(
                    {str(v) for v, i in zip(values.tolist(), found, strict=True) if i < 0}
                )
                raise ValueError(f"labels {unknown[:5]} are not among the classes {self.classes}")
            return np.asarray(found, dtype=np.float32)
        return values.astype(np.float32)

    @property
    def n_outputs(self) -> int:
        """Scores per row: a multiclass model's one probability per class, else one."""
        return len(self.classes) if self.task == "multiclass" and self.classes else 1

    def prediction_buckets(self) -> tuple[float, ...]:
        """Upper bounds of the served prediction histogram (``+Inf`` after the last): twenty
        equal buckets over [0, 1] for probabilities, over the label's range for regression;
        for a multiclass model one bucket per class (what it observes is the predicted class's
        index, :meth:`observed`)."""
        if self.task == "regression" and self.label_range is not None:
            low, high = self.label_range
            return tuple(float(low + (high - low) * i / 20) for i in range(1, 20))
        if self.task == "multiclass":
            return tuple(i + 0.5 for i in range(self.n_outputs - 1))
        return PROBABILITY_BUCKETS

    def observed(self, scores: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """What the prediction histogram counts of a batch's scores: each score, or a
        multiclass model's predicted class (the index of its highest probability)."""
        if scores.ndim == 2:
            return np.asarray(scores.argmax(axis=1), dtype=np.float64)
        return scores

    def decisions(self, scores: npt.NDArray[Any], threshold: float) -> npt.NDArray[Any]:
        """The decision each row's score makes: the predicted class of a multiclass model,
        else whether the score reaches ``threshold`` (the rollout's ``decision_threshold``)."""
        if scores.ndim == 2:
            return np.asarray(scores.argmax(axis=1))
        return np.asarray(scores >= threshold)

    def sample(self, rows: int = 64) -> dict[str, npt.NDArray[Any]]:
        """Valid raw columns (each range's low end, each vocabulary's first value): a warm-up
        batch for a server."""
        one = features._sample(self.raw_columns)
        return {k: np.repeat(v, rows) for k, v in one.items()}


def score_counts(scores: npt.NDArray[Any], bounds: tuple[float, ...]) -> npt.NDArray[np.int64]:
    """How many scores fall in each bucket (a score on a bound belongs to the bucket it bounds,
    as in Prometheus' "le" buckets), +Inf last."""
    bins = np.searchsorted(np.asarray(bounds), scores, side="left")
    return np.bincount(bins, minlength=len(bounds) + 1).astype(np.int64)
