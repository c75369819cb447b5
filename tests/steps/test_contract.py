"""The names both sides share live in one stdlib-only module, and nowhere else."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from helmsman_steps import contract

REPO = Path(__file__).resolve().parents[2]
SOURCES = [REPO / "plugins" / "helmsman", REPO / "images" / "steps" / "src" / "helmsman_steps"]
CONTRACT = REPO / "images" / "steps" / "src" / "helmsman_steps" / "contract.py"


def test_the_contract_imports_nothing_beyond_the_standard_library() -> None:
    code = (
        "import sys, json; before = set(sys.modules); import helmsman_steps.contract; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    env = {"PYTHONPATH": str(CONTRACT.parent.parent)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    loaded = json.loads(out.stdout)
    third_party = [m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names]
    assert third_party == ["helmsman_steps", "helmsman_steps.contract"]


def test_no_tag_name_or_experiment_is_spelled_outside_the_contract() -> None:
    literal = re.compile(r"""["'](helmsman\.[a-z_]+|helmsman-(?:etl|training))["']""")
    found = [
        f"{path.relative_to(REPO)}:{number}: {match.group(0)}"
        for root in SOURCES
        for path in root.rglob("*.py")
        if path != CONTRACT
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for match in literal.finditer(line)
    ]
    assert found == []


def test_run_keys_are_one_format_for_airflow_and_for_hand_runs() -> None:
    assert contract.run_key("train_churn", "manual__1", "train") == "train_churn/manual__1/train"
    assert contract.run_key_template("evaluate") == "{{ dag.dag_id }}/{{ run_id }}/evaluate"
    assert contract.local_run_key("2026-03-01", "2026-03-02", "etl") == (
        "local/2026-03-01_2026-03-02/etl"
    )
