"""The exported model: a feed-forward network as plain numpy arrays.

Training exports its torch network here (standardization, then Linear layers with ReLU between
them, sigmoid on the output) so that serving and evaluation need neither torch nor a GPU, start
in milliseconds, and compute exactly what the serving image will. The file is an ``.npz``
holding the arrays and a JSON header that names the input columns.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from helmsman_steps import features
from helmsman_steps.modelinfo import PROBABILITY_BUCKETS
from helmsman_steps.modelinfo import score_counts as counts_in

FORMAT = "helmsman-mlp/1"
FILENAME = "serving_model.npz"

FloatArray = npt.NDArray[np.float32]
# The buckets of a probability's histogram (a model's own: ModelInfo.prediction_buckets).
PREDICTION_BUCKETS = PROBABILITY_BUCKETS


def score_counts(scores: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Counts per probability bucket, +Inf last (modelinfo.score_counts)."""
    return counts_in(scores, PREDICTION_BUCKETS)


@dataclass(frozen=True)
class NumpyModel:
    inputs: list[str]
    mean: FloatArray
    scale: FloatArray
    weights: list[FloatArray]
    biases: list[FloatArray]

    def predict_matrix(self, x: FloatArray) -> FloatArray:
        """Churn probability for each row of an input matrix (rows x inputs)."""
        h = (x - self.mean) / self.scale
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w.T + b
            if i < len(self.weights) - 1:
                np.maximum(h, 0.0, out=h)
        # The logistic function in its tanh form: no overflow for large negative logits.
        out: FloatArray = (0.5 * (1.0 + np.tanh(0.5 * h[:, 0]))).astype(np.float32)
        return out

    def predict(self, columns: features.Columns) -> FloatArray:
        """Churn probability for raw columns (as ETL validated them, or as a request sends)."""
        return self.predict_matrix(features.to_matrix(columns))

    def save(self, target: str | Path | IO[bytes]) -> None:
        header = {"format": FORMAT, "inputs": self.inputs, "layers": len(self.weights)}
        arrays: dict[str, Any] = {"header": np.array(json.dumps(header)), "mean": self.mean}
        arrays["scale"] = self.scale
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"w{i}"], arrays[f"b{i}"] = w, b
        np.savez(target, **arrays)

    @classmethod
    def load(cls, source: str | Path | IO[bytes]) -> NumpyModel:
        with np.load(source, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            if header.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} model file: {header.get('format')!r}")
            if header["inputs"] != features.input_names():
                raise ValueError(
                    "the model's inputs differ from this code's features: "
                    f"model {header['inputs']} vs code {features.input_names()}"
                )
            n = int(header["layers"])
            return cls(
                inputs=list(header["inputs"]),
                mean=data["mean"].astype(np.float32),
                scale=data["scale"].astype(np.float32),
                weights=[data[f"w{i}"].astype(np.float32) for i in range(n)],
                biases=[data[f"b{i}"].astype(np.float32) for i in range(n)],
            )

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        self.save(buffer)
        return buffer.getvalue()
