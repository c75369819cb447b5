"""What scores a model version in serving and evaluation: its ONNX graph on ONNX Runtime.

Every trainer registers ``model.onnx`` (signature: ``features`` float32 ``[batch, inputs]`` in,
``score`` float32 ``[batch]`` out, ``[batch, classes]`` for a multiclass model), checked
against the native model before registration.
Serving and evaluation load the same file through the same runtime, so the golden set's
offline predictions are exactly what the served version answers. Versions registered before
ONNX carry only the numpy export (``serving_model.npz``); they are scored by it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from helmsman_steps import contract
from helmsman_steps.modelinfo import ModelInfo

FloatArray = npt.NDArray[np.float32]


class Scorer(Protocol):
    @property
    def inputs(self) -> list[str] | None: ...

    def predict_matrix(self, x: FloatArray) -> FloatArray: ...


class OnnxScorer:
    """An ONNX graph on ONNX Runtime's CPU provider, one thread (a serving pod has one core;
    more threads only contend)."""

    def __init__(self, data: bytes, threads: int = 1) -> None:
        import onnxruntime  # type: ignore[import-untyped]  # ships no type hints

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            data, options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name
        self.output = "score"
        # The compiled session's own run: the Python wrapper's ``run`` checks the feed's names
        # on every call (a third of a one-row call's time); the feed here is always the
        # graph's one input (a wrong feed is still refused, by the session itself). A release
        # without it gets the wrapper's. The wrapper swaps ``_sess`` only to fall back to
        # other execution providers; this one has only the CPU's.
        self._run = getattr(self.session, "_sess", self.session).run
        self._options = onnxruntime.RunOptions()
        # The input columns training recorded in the graph (every trainer's export does).
        declared = self.session.get_modelmeta().custom_metadata_map.get(contract.ONNX_INPUTS_PROP)
        self.inputs: list[str] | None = json.loads(declared) if declared else None

    def predict_matrix(self, x: FloatArray) -> FloatArray:
        feed = {self.input: np.ascontiguousarray(x, np.float32)}
        (scores,) = self._run([self.output], feed, self._options)
        scores = np.asarray(scores, dtype=np.float32)
        # [batch] (one score a row), or [batch, classes] (a multiclass model's probabilities).
        return scores if scores.ndim == 2 and scores.shape[1] > 1 else scores.reshape(-1)


def load_scorer(path: str) -> Scorer:
    """The scorer for a downloaded model file: ``.onnx`` on ONNX Runtime, else the numpy export."""
    if path.endswith(".onnx"):
        with open(path, "rb") as f:
            return OnnxScorer(f.read())
    from helmsman_steps.model import NumpyModel

    return NumpyModel.load(path)


@dataclass(frozen=True)
class Predictor:
    """Raw columns in, scores out: the model's featurizer, then its scorer."""

    info: ModelInfo
    scorer: Scorer

    def __post_init__(self) -> None:
        expected = self.info.featurizer.input_names()
        if self.scorer.inputs is not None and list(self.scorer.inputs) != expected:
            raise ValueError(
                f"version of {self.info.name}: the model's inputs {self.scorer.inputs} are not "
                f"what its spec's featurizer makes, {expected}"
            )

    def predict(self, columns: Any) -> FloatArray:
        return self.scorer.predict_matrix(self.info.featurizer.to_matrix(columns))
