"""What a model's DAG file costs the DAG processor, measured as the processor pays it.

The DAG processor forks its parsing child from a process that has Airflow imported, and with
``parsing_pre_import_modules`` (on by default) it imports a DAG file's own imports before the
fork; what each parse really pays is the file's own execution. So this bench runs in one warm
interpreter: Airflow, the provider and ``helmsman.factory`` imported first, then each case run
round after round, the cases interleaved so that machine noise hits all alike (medians).

1. The factory's share: ``model_dags("churn")`` (read and validate ``model.yaml``, build the
   four DAGs) against building the same four DAGs from a spec already in memory, which is
   what a hand-written file with the same KPO tasks and Params executes. Goal: <= 1.1x.
2. Scale: Airflow's DagBag over a folder of 1, 5 and 20 models (each a DAG file and a model
   folder), per model. Goals: under 50 ms a model, and growing linearly or better (the
   per-model cost at 20 within 1.2x of that at 1).
3. For scale: a DAG of one bare KubernetesPodOperator task, parsed the same way.

    .venv/bin/python -m bench.parse_bench [--rounds 15] [--smoke]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
FACTORY_GOAL = 1.1
PER_MODEL_GOAL_MS = 50.0
LINEAR_GOAL = 1.2
BASELINE = """
import datetime as dt
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

with DAG(dag_id="baseline", schedule=None, start_date=dt.datetime(2026, 1, 1)):
    KubernetesPodOperator(task_id="pod", name="pod", image="python:3.11-slim", cmds=["true"])
"""
MODEL_DAG_FILE = (REPO / "dags" / "model_churn.py").read_text()


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def exec_file(path: Path) -> None:
    """Run a DAG file as a fresh module, as the parsing child does."""
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}_{time.monotonic_ns()}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def model_folder(root: Path, count: int) -> Path:
    """``root/dags`` with ``count`` model DAG files, their specs in ``root/models``."""
    for i in range(count):
        name = "churn" if i == 0 else f"churn{i}"
        (root / "models" / name).mkdir(parents=True)
        text = (MODELS / "churn" / "model.yaml").read_text().replace("name: churn", f"name: {name}")
        (root / "models" / name / "model.yaml").write_text(text)
        (root / "dags").mkdir(exist_ok=True)
        (root / "dags" / f"model_{name}.py").write_text(
            MODEL_DAG_FILE.replace('"churn"', f'"{name}"')
        )
    return root / "dags"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--smoke", action="store_true", help="one round of 1 and 2 models")
    args = parser.parse_args(argv)
    rounds, sizes = (1, (1, 2)) if args.smoke else (args.rounds, (1, 5, 20))
    home = tempfile.mkdtemp(prefix="parse-bench-")
    os.environ.update({
        "AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    })  # fmt: skip
    sys.path[:0] = [str(REPO / "plugins"), str(REPO / "images" / "steps" / "src")]
    # The warm interpreter: what the processor and its pre-imports hold before the fork.
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator  # noqa: F401

    from helmsman import factory
    from helmsman.pods import Platform

    work = Path(tempfile.mkdtemp(prefix="parse-bench-models-"))
    try:
        baseline = work / "baseline_dag.py"
        baseline.write_text(BASELINE)
        folders = {n: model_folder(work / f"n{n}", n) for n in sizes}
        platform = Platform()
        model = factory.load("churn", MODELS)

        def by_hand() -> None:
            factory.training_dag(model, platform)
            factory.rollback_dag(model, platform)
            factory.scale_dag(model, platform)
            factory.monitor_dag(model, platform)

        cases: dict[str, Callable[[], Any]] = {
            "baseline": lambda: exec_file(baseline),
            "by hand": by_hand,
            "factory": lambda: factory.model_dags("churn", MODELS, platform),
            **{f"dagbag {n}": (lambda f=folder: DagBag(dag_folder=f, bundle_path=f))
               for n, folder in folders.items()},
        }  # fmt: skip
        for case in cases.values():  # warm caches once
            case()
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, case in cases.items():
                times[name].append(timed(case))
        med = {name: statistics.median(values) * 1000 for name, values in times.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)

    print(f"\nparse bench (warm interpreter, {rounds} rounds interleaved, medians)")
    print(f"  one bare KPO task DAG             {med['baseline']:7.2f} ms")
    print(f"  churn's 3 DAGs, spec in memory    {med['by hand']:7.2f} ms   (a hand-written file)")
    ratio = med["factory"] / med["by hand"]
    print(f"  churn's 3 DAGs through model.yaml {med['factory']:7.2f} ms   factory ratio "
          f"{ratio:.2f} (goal <= {FACTORY_GOAL})")  # fmt: skip
    one = med[f"dagbag {sizes[0]}"] / sizes[0]
    for n in sizes:
        per = med[f"dagbag {n}"] / n
        total = med[f"dagbag {n}"]
        print(f"  DagBag of {n:2} model(s)             {total:7.1f} ms   {per:5.1f} ms "
              f"a model (goal < {PER_MODEL_GOAL_MS:.0f}), {per / one:.2f}x the cost at 1 "
              f"(goal <= {LINEAR_GOAL})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
