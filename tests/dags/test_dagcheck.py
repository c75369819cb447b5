"""The DAG integrity suite fails, naming the file, on each kind of defect it guards against.

The suite (tests/dags/test_dag_integrity.py) runs in a child pytest pointed at
tests/dags/fixtures/, exactly as `make test` runs it against dags/: one clean DAG file that
must pass every rule, and one file per defect that must fail the rule it breaks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.dev_env import REPO

FIXTURES = Path(__file__).parent / "fixtures"
INTEGRITY_SUITE = "tests/dags/test_dag_integrity.py"
RULES = (
    "test_imports_without_error",
    "test_no_heavy_imports_at_parse_time",
    "test_no_network_db_variable_or_connection_access_at_parse_time",
    "test_dags_carry_tags_owner_retries_and_docs",
)


@pytest.fixture(scope="module")
def suite_output(dev_env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", INTEGRITY_SUITE, "-p", "no:cacheprovider", "-rA"],
        cwd=REPO,
        env={**dev_env, "HELMSMAN_DAGS_FOLDER": str(FIXTURES)},
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def outcome(output: str, rule: str, fixture: str) -> str:
    """PASSED or FAILED for one rule on one fixture file, from the child's -rA summary."""
    for line in output.splitlines():
        if line.startswith(("PASSED ", "FAILED ")) and f"{rule}[{fixture}]" in line:
            return line.split()[0]
    raise AssertionError(f"no result for {rule}[{fixture}] in:\n{output}")


def test_the_suite_exits_non_zero(suite_output: tuple[int, str]) -> None:
    returncode, output = suite_output
    assert returncode == 1, output


@pytest.mark.parametrize("rule", RULES)
def test_a_clean_dag_passes_every_rule(suite_output: tuple[int, str], rule: str) -> None:
    assert outcome(suite_output[1], rule, "good_dag.py") == "PASSED", suite_output[1]


@pytest.mark.parametrize(
    ("fixture", "rule", "message"),
    [
        ("import_error_dag.py", RULES[0], "No module named 'helmsman.no_such_module'"),
        ("pandas_dag.py", RULES[1], "pandas_dag.py imports numpy, pandas"),
        ("network_dag.py", RULES[2], "socket.connect"),
        ("metadata_db_dag.py", RULES[2], "sqlite3.connect"),
        ("variable_dag.py", RULES[2], "Variable.get: ('helmsman_namespace',)"),
        ("unowned_dag.py", RULES[3], "unowned_dag.py:fixture_unowned lacks the 'helmsman' tag"),
        ("unowned_dag.py", RULES[3], "tasks owned by the default 'airflow'"),
        ("unowned_dag.py", RULES[3], "tasks without retries: noop"),
    ],
)
def test_a_defect_fails_its_rule_and_names_the_file(
    suite_output: tuple[int, str], fixture: str, rule: str, message: str
) -> None:
    output = suite_output[1]
    assert outcome(output, rule, fixture) == "FAILED", output
    assert message in output, output
