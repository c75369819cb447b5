"""Parse time of our DAG files against a DAG holding one bare KubernetesPodOperator task.

The DAG processor parses every file every few seconds, so a DAG file's import cost is paid
continuously. Each file is parsed with Airflow's own DagBag in a fresh interpreter (as the
processor's child does), the files interleaved round by round so that machine noise hits all
of them alike; the report is each file's median as a ratio to the baseline's (goal: <= 1.1).

    .venv/bin/python -m bench.parse_bench [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE = """
import datetime as dt
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG

with DAG(dag_id="baseline", schedule=None, start_date=dt.datetime(2026, 1, 1)):
    KubernetesPodOperator(task_id="pod", name="pod", image="python:3.11-slim", cmds=["true"])
"""
PARSE = """
import json, sys, time
started = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
print(json.dumps({"seconds": time.perf_counter() - started, "dags": len(bag.dags)}))
"""


def parse_seconds(dag_file: Path, env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PARSE, str(dag_file)],
        env=env, capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result["seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO / "images/steps/src")]),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW_HOME": tempfile.mkdtemp(prefix="parse-bench-"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline_dag.py"
        baseline.write_text(BASELINE)
        files = [baseline, *sorted((REPO / "dags").glob("*.py"))]
        times: dict[Path, list[float]] = {f: [] for f in files}
        parse_seconds(baseline, env)  # warm the file cache once
        for _ in range(args.rounds):
            for f in files:
                times[f].append(parse_seconds(f, env))
        base = statistics.median(times[baseline])
        print(f"{'file':28} {'median s':>9} {'ratio':>6}   ({args.rounds} rounds, interleaved)")
        for f in files:
            median = statistics.median(times[f])
            print(f"{f.name:28} {median:9.3f} {median / base:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
