"""Every DAG file parses cleanly, cheaply and without side effects, and carries its metadata.

Each file is parsed in a fresh interpreter by tests/dagcheck.py (through Airflow's own DagBag),
so a failure names the file and one file's imports cannot hide another's. The rules and their
reasons are in docs/adr/0001-layout.md. HELMSMAN_DAGS_FOLDER points the suite at another folder;
tests/dags/test_dagcheck.py uses that to prove each rule fails on a file that breaks it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.dev_env import DAGS_FOLDER, REPO

DAG_FILES = sorted(Path(os.environ.get("HELMSMAN_DAGS_FOLDER", DAGS_FOLDER)).glob("*.py"))
REQUIRED_TAG = "helmsman"
DEFAULT_OWNER = "airflow"


def parse_report(dag_file: Path, env: dict[str, str], out_dir: Path) -> dict[str, Any]:
    report_file = out_dir / f"{dag_file.stem}.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "dagcheck.py"), str(dag_file), str(report_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"{dag_file.name}: the DAG check itself crashed:\n{proc.stderr}"
    report: dict[str, Any] = json.loads(report_file.read_text())
    return report


# Module scope: each file is parsed once and its report serves every rule below.
@pytest.fixture(scope="module", params=DAG_FILES, ids=[f.name for f in DAG_FILES])
def report(
    request: pytest.FixtureRequest,
    dev_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    return parse_report(request.param, dev_env, tmp_path_factory.mktemp("dagcheck"))


def test_imports_without_error(report: dict[str, Any]) -> None:
    errors = "\n".join(f"{file}:\n{trace}" for file, trace in report["import_errors"].items())
    assert not report["import_errors"], f"{report['file']} fails to import:\n{errors}"
    assert report["dags"], f"{report['file']} defines no DAG"


def test_no_heavy_imports_at_parse_time(report: dict[str, Any]) -> None:
    assert not report["heavy_modules"], (
        f"{report['file']} imports {', '.join(report['heavy_modules'])} while being parsed: "
        "import them inside the task callable, or run that code in a pod"
    )


def test_no_network_db_variable_or_connection_access_at_parse_time(report: dict[str, Any]) -> None:
    seen = "\n".join(f"  {e['event']}: {e['detail']}" for e in report["io_events"])
    assert not report["io_events"], (
        f"{report['file']} reaches out while being parsed (network, metadata DB, Variables or "
        f"Connections); move it into a task or a template:\n{seen}"
    )


def test_dags_carry_tags_owner_retries_and_docs(report: dict[str, Any]) -> None:
    problems = []
    for dag in report["dags"]:
        name = f"{Path(report['file']).name}:{dag['dag_id']}"
        if REQUIRED_TAG not in dag["tags"]:
            problems.append(f"{name} lacks the {REQUIRED_TAG!r} tag (tags: {dag['tags']})")
        if DEFAULT_OWNER in dag["owners"]:
            problems.append(f"{name} has tasks owned by the default {DEFAULT_OWNER!r}")
        no_retry = sorted(t for t, n in dag["retries"].items() if n < 1)
        if no_retry:
            problems.append(f"{name} has tasks without retries: {', '.join(no_retry)}")
        if not dag["has_doc_md"]:
            problems.append(f"{name} has no doc_md to tell users what it does and how to triage")
    assert not problems, "\n".join(problems)
