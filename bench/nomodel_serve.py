"""The serving bench's bound: Helmsman's server with the model call taken out.

The real server (uvicorn, decoding and validating the rows, micro-batching, metrics, encoding
the answer) with the featurizer and ONNX Runtime replaced by a constant score a row. It says
what the request path costs on its own, so the bench can split the gap to the no-op ceiling
into the path's share and the model call's (the featurizer and the graph, the same code as
KServe's peer runs).

Bench-only: no product code knows of it. Run as ``python -m bench.nomodel_serve serve ...``
with the same arguments as ``python -m helmsman_steps serve``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from helmsman_steps import cli, runtime


def _constant(self: runtime.Predictor, columns: Any) -> Any:
    """One score a row, no model work."""
    rows = len(next(iter(columns.values())))
    return np.full(rows, 0.5, dtype=np.float32)


runtime.Predictor.predict = _constant  # type: ignore[method-assign]

if __name__ == "__main__":
    cli.main()
