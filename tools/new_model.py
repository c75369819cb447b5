"""``make new-model NAME=... TASK=...``: a working model folder to start from.

Writes ``models/<name>/model.yaml`` (the contract, with example columns to replace),
``models/<name>/sample/`` (a week of daily CSV files in the declared schema, so the model
trains before any real data is wired), ``models/<name>/test_model.py`` (its tests: the DAGs
build, the sample goes through ETL, training, evaluation and the served model) and
``dags/model_<name>.py`` (the two-line DAG file). Nothing in Helmsman's code changes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The spec's rule for a model's name (helmsman_steps.spec.NAME_PATTERN): a DNS-1123 label.
NAME_PATTERN = r"^[a-z]([a-z0-9-]{0,28}[a-z0-9])?$"
TASKS = ("regression", "binary", "multiclass")
FIRST_DAY = dt.date(2026, 1, 1)
DAYS, ROWS_PER_DAY = 7, 120

LABELS = {
    "regression": "  label: {name: target, range: [0, 100]}  # regression: the values it takes",
    "binary": "  label: {name: target, classes: [0, 1]}  # binary: the two classes, negative first",
    "multiclass": "  label: {name: target, classes: [low, mid, high]}  # in output order",
}
EVALUATION = {
    "regression": "  metric: rmse  # or mae, r2\n  floor: 20.0  # an rmse above this is rejected",
    "binary": "  metric: roc_auc\n  floor: 0.6",
    "multiclass": "  metric: f1_macro  # or accuracy\n  floor: 0.5",
}
THRESHOLDS = {
    # A regression's scores are in the label's units: the rollout's shadow comparison too.
    "regression": "\n  thresholds: {decision_threshold: 50, max_mean_abs_diff: 10}",
    "binary": "",
    "multiclass": "",
}

MODEL_YAML = """\
# {name}: what it predicts, in one line. Every field is described in models/README.md.
name: {name}
description: TODO say what {name} predicts, from what.
task: {task}
# Where the daily raw files (YYYY-MM-DD.csv or .parquet) arrive. A cluster may point the model
# elsewhere with HELMSMAN_SOURCE_URI_{env}; sample/ beside this file shows the format.
source: s3://raw/{name}
schema:
  id: record_id
  timestamp: event_date
{label}
  columns:  # the example columns of sample/: replace them with yours
    x1: {{type: float, range: [0, 10]}}
    x2: {{type: float, range: [-5, 5], nullable: true}}
    visits: {{type: int, range: [0, 20], nullable: true}}
    segment: {{type: category, vocabulary: [a, b, c]}}
trainer:
  kind: sklearn  # gradient boosting, exported to ONNX
  params: {{n_estimators: 100, learning_rate: 0.1, max_depth: 3}}
evaluation:
{evaluation}
  min_improvement: 0.0
  holdout: window
serving:
  replicas: 1
  canary_steps: [25, 50]{thresholds}
schedule: "0 5 * * *"
window_days: {days}
gpus: 0
"""

TEST = '''\
"""{name}'s own tests, collected by `make test`: the DAGs build from model.yaml, and the
sample feed goes through the real steps (tests/model_checks.py). Add checks of what the model
should have learned here."""

from pathlib import Path

from tests.model_checks import check_dags, check_pipeline

FOLDER = Path(__file__).resolve().parent


def test_the_dags_build_from_the_spec() -> None:
    check_dags(FOLDER)


def test_the_sample_trains_evaluates_and_serves(tmp_path: Path) -> None:
    decision = check_pipeline(FOLDER, tmp_path)
    assert decision["decision"] == "promote", decision["reasons"]
'''

DAG = '''\
"""Airflow DAGs of the {name} model, built from models/{name}/model.yaml: train_{name},
rollback_{name} and scale_{name}."""

from pathlib import Path

from helmsman.factory import model_dags

train, rollback, scale, monitor = model_dags("{name}", Path(__file__).parents[1] / "models")
'''


class ScaffoldError(ValueError):
    """A name, task or place the scaffold cannot use; the message says what to change."""


def sample(task: str, day: dt.date, index: int) -> str:
    """One day of example rows as CSV: a learnable signal, a little noise, a few nulls."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1000 + index)
    n = ROWS_PER_DAY
    x1, x2 = rng.uniform(0, 10, n).round(3), rng.uniform(-5, 5, n).round(3)
    visits = pd.array(rng.integers(0, 21, n), dtype="Int64")
    visits[rng.random(n) < 0.03] = pd.NA
    segment = rng.choice(["a", "b", "c"], n)
    signal = (4 * x1 + 3 * x2 + 0.5 * visits.to_numpy(dtype=float, na_value=0)
              + np.select([segment == "b", segment == "c"], [10, 20], 0))  # fmt: skip
    if task == "regression":
        target = np.clip(signal + rng.normal(0, 4, n), 0, 100).round(2)
    elif task == "multiclass":
        tier = np.digitize(signal + rng.normal(0, 4, n), [25, 45])
        target = np.array(["low", "mid", "high"])[tier]
    else:
        target = (rng.random(n) < 1 / (1 + np.exp(-(signal - 30) / 6))).astype(int)
    frame = pd.DataFrame({
        "record_id": [f"{day:%Y%m%d}-{i:04d}" for i in range(n)], "event_date": day.isoformat(),
        "x1": x1, "x2": np.where(rng.random(n) < 0.02, np.nan, x2), "visits": visits,
        "segment": segment,
        "target": target,
    })  # fmt: skip
    return str(frame.to_csv(index=False))


def scaffold(name: str, task: str, root: Path = REPO) -> list[Path]:
    """Write the model folder and its DAG file under ``root``; return what was written."""
    if not re.match(NAME_PATTERN, name):
        raise ScaffoldError(
            f"NAME {name!r}: lowercase letters, digits and '-', starting with a letter, 30 "
            "characters at most (it names DAGs, a registered model and Kubernetes objects)"
        )
    if task not in TASKS:
        raise ScaffoldError(f"TASK {task!r}: one of {', '.join(TASKS)}")
    folder, dag_file = root / "models" / name, root / "dags" / f"model_{name}.py"
    for path in (folder, dag_file):
        if path.exists():
            raise ScaffoldError(f"{path.relative_to(root)} exists already: pick another name")
    env = name.upper().replace("-", "_")
    text = MODEL_YAML.format(name=name, task=task, env=env, label=LABELS[task],
                             evaluation=EVALUATION[task], thresholds=THRESHOLDS[task],
                             days=DAYS)  # fmt: skip
    (folder / "sample").mkdir(parents=True)
    written = [folder / "model.yaml", folder / "test_model.py", dag_file]
    written[0].write_text(text)
    written[1].write_text(TEST.format(name=name))
    dag_file.parent.mkdir(exist_ok=True)
    dag_file.write_text(DAG.format(name=name))
    for i in range(DAYS):
        day = FIRST_DAY + dt.timedelta(days=i)
        path = folder / "sample" / f"{day.isoformat()}.csv"
        path.write_text(sample(task, day, i))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("name", help="the model's name: lowercase, digits, '-'")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        written = scaffold(args.name, args.task, args.root)
    except ScaffoldError as exc:
        print(f"new-model: {exc}", file=sys.stderr)
        return 2
    shown = sorted({str(p.relative_to(args.root)) for p in written if p.suffix != ".csv"})
    print(f"wrote {', '.join(shown)} and {DAYS} sample days in models/{args.name}/sample/")
    print(
        f"next: edit models/{args.name}/model.yaml (columns, source), then `make test` "
        f"runs its tests and `make down; make demo` serves it beside churn"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
