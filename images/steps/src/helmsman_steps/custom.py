"""The custom trainer's contract: ``trainer: {kind: custom, entrypoint: train.py:train}``.

Helmsman reads the data, splits it, checks and registers what your function returns; your
function only fits::

    from helmsman_steps.custom import Fitted, TrainingData

    def train(data: TrainingData) -> Fitted:
        model = fit_something(data.x_train, data.y_train, **data.params)
        return Fitted(onnx=to_onnx(model), predict=model.predict)

``onnx`` must take ``features`` (float32 ``[batch, len(data.inputs)]``, the columns of
``data.inputs`` in order) and return ``score`` (float32 ``[batch]``: a regression's value, or a
binary model's probability of the positive class). Before the version is registered, the
graph must reproduce ``predict`` on the validation rows within 1e-5 (relative to
max(1, |value|)); serving and evaluation run the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TrainingData:
    """The rows your trainer sees: training and validation buckets of the window's rows
    (held-out evaluation rows are never among them)."""

    x_train: Matrix  # float32 [rows, inputs]; NaN where a nullable column is missing
    y_train: npt.NDArray[np.float32]  # a regression's values, or 1.0 for the second class
    x_valid: Matrix
    y_valid: npt.NDArray[np.float32]
    inputs: list[str]  # the columns of x, in order (model.yaml's schema, featurized)
    task: str  # "binary" or "regression"
    params: Mapping[str, Any]  # trainer.params from model.yaml
    seed: int  # the run's seed (the trigger form's Seed)


@dataclass
class Fitted:
    """What a custom trainer returns."""

    onnx: Any  # onnx.ModelProto, or its serialized bytes
    predict: Callable[[Matrix], npt.ArrayLike]  # the native model's scores, for the parity check
    metrics: dict[str, float] = field(default_factory=dict)  # logged to the training run
