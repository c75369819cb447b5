"""Every benchmark still starts and finishes: its --smoke mode, as a user would run it.

A benchmark that no longer starts is a broken build (two once crashed at import for weeks,
unnoticed). The smoke runs measure nothing worth keeping; their figures are not asserted.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.dev_env import REPO


@pytest.mark.parametrize(
    "bench",
    ["backfill_bench", "localcluster_bench", "parse_bench", "rollout_bench", "scorer_bench",
     "serving_bench", "stack_bench", "train_bench"],
)  # fmt: skip
def test_the_benchmark_runs_in_smoke_mode(bench: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", "--smoke"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "goal" in proc.stdout  # it got as far as printing its ratios


def test_the_no_model_bound_runs_in_smoke_mode() -> None:
    """bench/nomodel_serve.py, the serving bench's bound, answers a binary and a multiclass
    model's shapes without calling a scorer (its --smoke), run as its usage says."""
    proc = subprocess.run(
        [sys.executable, "bench/nomodel_serve.py", "--smoke"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "wine (multiclass): answers (3, 3) without model work" in proc.stdout


def test_the_kserve_peer_serves_in_smoke_mode() -> None:
    """bench/kserve_model.py, the serving bench's peer, starts KServe's ModelServer in its own
    venv and answers as Helmsman's Predictor does (its --smoke serves a small model)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.kserve_model", "--smoke"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "answers as Helmsman's Predictor does" in proc.stdout
