"""The serving bench's bound: Helmsman's server with the model call taken out.

The real server (uvicorn, decoding and validating the rows, micro-batching, metrics, encoding
the answer) with the featurizer and ONNX Runtime replaced by a constant score a row. It says
what the request path costs on its own, so the bench can split the gap to the no-op ceiling
into the path's share and the model call's (the featurizer and the graph, the same code as
KServe's peer runs).

``--smoke`` (what `make test` runs) checks that the patched model answers churn's (binary) and
wine's (multiclass) shapes without calling the scorer; the serving bench's own smoke run
serves through it.

Bench-only: no product code knows of it. One worker only: further workers start as the
product's own module, which would score with the model.

Usage: python bench/nomodel_serve.py serve --model-uri URI --port N [serve's other options]
       python bench/nomodel_serve.py --smoke
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "images" / "steps" / "src")]

from helmsman_steps import cli, runtime  # noqa: E402 - needs the path set above


def _constant(self: runtime.Predictor, columns: Any) -> Any:
    """The model's answer shape, no model work: a score a row (a probability per class a row
    for a multiclass model)."""
    rows = len(next(iter(columns.values())))
    if self.info.task == "multiclass":
        return np.full((rows, self.info.n_outputs), 1 / self.info.n_outputs, dtype=np.float32)
    return np.full(rows, 0.5, dtype=np.float32)


runtime.Predictor.predict = _constant  # type: ignore[method-assign]


class _Unused:
    """A scorer that fails if the patched model ever calls it."""

    inputs = None

    def predict_matrix(self, x: Any) -> Any:
        raise AssertionError("the no-model build called the scorer")


def smoke() -> int:
    """churn's and wine's answers have their shapes, and no scorer is called."""
    from helmsman_steps import spec
    from helmsman_steps.modelinfo import ModelInfo

    for info in (ModelInfo.churn(), ModelInfo.of(spec.load(REPO / "models" / "wine"))):
        scores = runtime.Predictor(info, _Unused()).predict(info.sample(3))
        expected = (3, info.n_outputs) if info.task == "multiclass" else (3,)
        if scores.shape != expected:
            print(f"{info.name}: answered shape {scores.shape}, not {expected}")
            return 1
        print(f"{info.name} ({info.task}): answers {scores.shape} without model work")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--smoke"]:
        sys.exit(smoke())
    if any(a.startswith("--workers") for a in sys.argv) or os.environ.get("HELMSMAN_WORKERS"):
        sys.exit("bench/nomodel_serve.py runs one worker: drop --workers and HELMSMAN_WORKERS")
    cli.main()
