"""`make new-model`: the folder it writes is a working model -- its own tests pass as `make test`
runs them, with nothing in Helmsman's code edited -- and a name, task or place it cannot use
gets a message that says what to change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.model_checks import check_dags, check_pipeline
from tools import new_model

REPO = Path(__file__).resolve().parents[2]


def test_a_scaffolded_regression_model_passes_its_own_tests(tmp_path: Path) -> None:
    written = new_model.scaffold("demand", "regression", tmp_path)
    names = {str(p.relative_to(tmp_path)) for p in written if p.suffix != ".csv"}
    assert names == {"models/demand/model.yaml", "models/demand/test_model.py",
                     "dags/model_demand.py"}  # fmt: skip
    assert len(list((tmp_path / "models" / "demand" / "sample").glob("*.csv"))) == 7
    # Its tests, run the way `make test` runs a model folder's tests.
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO),
         "-c", str(REPO / "pyproject.toml"), str(tmp_path / "models" / "demand")],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "2 passed" in proc.stdout


def test_a_scaffolded_binary_model_trains_on_its_sample_and_is_promoted(tmp_path: Path) -> None:
    new_model.scaffold("fraud", "binary", tmp_path / "repo")
    folder = tmp_path / "repo" / "models" / "fraud"
    check_dags(folder)
    decision = check_pipeline(folder, tmp_path)
    assert decision["metric"] == "roc_auc"
    assert decision["challenger_metrics"]["roc_auc"] > 0.8  # the sample's signal is learnable
    assert decision["decision"] == "promote"


def test_a_scaffolded_multiclass_model_learns_its_three_classes(tmp_path: Path) -> None:
    new_model.scaffold("tiers", "multiclass", tmp_path / "repo")
    folder = tmp_path / "repo" / "models" / "tiers"
    check_dags(folder)
    decision = check_pipeline(folder, tmp_path)
    assert decision["metric"] == "f1_macro"
    # The sample's classes follow a learnable signal: well above a guess's 1/3.
    assert decision["challenger_metrics"]["f1_macro"] > 0.6
    assert decision["decision"] == "promote"


@pytest.mark.parametrize(
    ("name", "task", "message"),
    [
        ("Fraud", "binary", "NAME 'Fraud': lowercase letters, digits and '-'"),
        ("fraud", "ranking", "TASK 'ranking': one of regression, binary, multiclass"),
        ("churn", "binary", "models/churn exists already: pick another name"),
    ],
)
def test_what_the_scaffold_cannot_use_is_refused_with_what_to_change(
    tmp_path: Path, name: str, task: str, message: str
) -> None:
    (tmp_path / "models" / "churn").mkdir(parents=True)
    with pytest.raises(new_model.ScaffoldError, match=message):
        new_model.scaffold(name, task, tmp_path)
    assert not (tmp_path / "models" / name.lower()).exists() or name == "churn"
    assert not (tmp_path / "dags").exists()  # nothing half-written


def test_the_command_line_exits_2_and_says_why(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.new_model", "9lives", "--task", "binary",
         "--root", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "new-model: NAME '9lives'" in proc.stderr
