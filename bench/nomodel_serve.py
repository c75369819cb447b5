"""The serving bench's bound: Helmsman's server with the model call taken out.

The real server (uvicorn, decoding and validating the rows, micro-batching, metrics, encoding
the answer) with the featurizer and ONNX Runtime replaced by a constant score a row. It says
what the request path costs on its own, so the bench can split the gap to the no-op ceiling
into the path's share and the model call's (the featurizer and the graph, the same code as
KServe's peer runs).

Bench-only: no product code knows of it. Run as ``python -m bench.nomodel_serve serve ...``
with the arguments of ``python -m helmsman_steps serve``, one worker only: further workers
start as the product's own module, which would score with the model.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from helmsman_steps import cli, runtime


def _constant(self: runtime.Predictor, columns: Any) -> Any:
    """The model's answer shape, no model work: a score a row (a probability per class a row
    for a multiclass model)."""
    rows = len(next(iter(columns.values())))
    if self.info.task == "multiclass":
        return np.full((rows, self.info.n_outputs), 1 / self.info.n_outputs, dtype=np.float32)
    return np.full(rows, 0.5, dtype=np.float32)


runtime.Predictor.predict = _constant  # type: ignore[method-assign]

if __name__ == "__main__":
    if any(a.startswith("--workers") for a in sys.argv) or os.environ.get("HELMSMAN_WORKERS"):
        sys.exit("bench.nomodel_serve runs one worker: drop --workers and HELMSMAN_WORKERS")
    cli.main()
