"""What scoring with ONNX Runtime costs against the numpy export it replaced in serving.

Every version is now served and evaluated from its ONNX graph (ADR 0010); churn's MLP used to
be served by a numpy forward pass over its exported weights. Both score the same network
here, side by side in one process, rounds interleaved (medians), for the batch sizes a server
sees: one row (a user), 64 and 1024 (batch clients). The featurizer is the same for both and is
left out. Goal: ONNX Runtime no slower than the numpy export (ratio <= 1.0) at one row, where a
serving pod spends its time. Also printed: a gradient-boosting regressor's graph (the diabetes
model's trainer) on the same runtime, and the resident memory importing ONNX Runtime and
loading a session adds to a process.

    .venv/bin/python -m bench.scorer_bench [--rounds 7] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "images" / "steps" / "src")]

GOAL = 1.0  # ONNX Runtime / numpy per row, one-row requests


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def per_row_us(score: Callable[[], object], rows: int, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        score()
    return 1e6 * (time.perf_counter() - started) / (calls * rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="one short round: does it run")
    args = parser.parse_args()
    rounds, budget = (1, 2_000) if args.smoke else (args.rounds, 200_000)

    import numpy as np

    from helmsman_steps import features, onnx_model
    from helmsman_steps.model import NumpyModel

    rng = np.random.default_rng(0)
    width = len(features.input_names())
    sizes = [width, 64, 32, 1]  # the demo's churn network: hidden 64, 32
    mlp = NumpyModel(
        inputs=features.input_names(),
        mean=rng.normal(0, 1, width).astype(np.float32),
        scale=rng.uniform(0.5, 2, width).astype(np.float32),
        weights=[rng.normal(0, 0.3, (o, i)).astype(np.float32) for i, o in pairwise(sizes)],
        biases=[rng.normal(0, 0.1, o).astype(np.float32) for o in sizes[1:]],
    )  # fmt: skip
    graph = onnx_model.from_mlp(mlp).SerializeToString()  # the exporter (onnx) is training's
    before = rss_mb()
    from helmsman_steps.runtime import OnnxScorer

    onnx = OnnxScorer(graph)
    loaded = rss_mb()

    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import GradientBoostingRegressor

    x, y = load_diabetes(return_X_y=True, scaled=False)
    gbm = GradientBoostingRegressor(n_estimators=150, max_depth=2, random_state=0)
    gbm.fit(x.astype(np.float32), y)
    names = [f"x{i}" for i in range(x.shape[1])]
    trees = OnnxScorer(onnx_model.from_sklearn(gbm, names, "regression").SerializeToString())

    print(f"{'batch':>6} {'numpy us/row':>13} {'onnx us/row':>12} {'ratio':>6} {'gbm us/row':>11}")
    ratios: dict[int, float] = {}
    for batch in (1, 64, 1024):
        matrix = rng.normal(0, 2, (batch, width)).astype(np.float32)
        rows = x[:batch].astype(np.float32) if batch <= len(x) else np.resize(x, (batch, 10))
        rows = rows.astype(np.float32)
        calls = max(1, budget // (batch * 20))
        np.testing.assert_allclose(onnx.predict_matrix(matrix), mlp.predict_matrix(matrix),
                                   atol=1e-5)  # fmt: skip
        ours, theirs, forest = [], [], []
        for _ in range(rounds):  # interleaved: noise hits both alike
            theirs.append(per_row_us(lambda m=matrix: mlp.predict_matrix(m), batch, calls))
            ours.append(per_row_us(lambda m=matrix: onnx.predict_matrix(m), batch, calls))
            forest.append(per_row_us(lambda r=rows: trees.predict_matrix(r), batch, calls))
        a, b, c = (statistics.median(v) for v in (theirs, ours, forest))
        ratios[batch] = b / a
        print(f"{batch:>6} {a:>13.2f} {b:>12.2f} {b / a:>6.2f} {c:>11.2f}")
    print(f"ONNX Runtime imported and one session loaded: +{loaded - before:.0f} MB resident")
    verdict = "met" if ratios[1] <= GOAL else "MISSED"
    print(f"goal: ONNX Runtime / numpy export at one row <= {GOAL}: {ratios[1]:.2f} ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
