"""`make lint`, the gate inside `make test`, fails on a lint error, a formatting drift or a
type error, and passes clean code. Each case points the gate at one file via RUFF_PATHS and
MYPY_PATHS, exactly the variables the Makefile's default run uses for the real tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.dev_env import REPO

CLEAN = '''"""A clean module."""


def double(value: int) -> int:
    return value * 2
'''


def make_lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", "lint", f"RUFF_PATHS={path}", f"MYPY_PATHS={path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_clean_code_passes(tmp_path: Path) -> None:
    module = tmp_path / "clean.py"
    module.write_text(CLEAN)
    proc = make_lint(module)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [
        ("unused_import", CLEAN.replace('"""\n', '"""\n\nimport os\n', 1), "F401"),
        ("shell_injection", CLEAN + "\n\nimport subprocess\nsubprocess.call('ls', shell=True)\n",
         "S602"),
        ("unformatted", CLEAN.replace("value * 2", "value*2"), "would be reformatted"),
        ("type_error", CLEAN.replace("return value * 2", 'return str(value)'),
         'Incompatible return value type (got "str", expected "int")'),
        ("untyped_def", CLEAN + "\n\ndef untyped(x):\n    return x\n",
         "Function is missing a type annotation"),
    ],
)  # fmt: skip
def test_a_defect_fails_the_gate(name: str, source: str, expected: str, tmp_path: Path) -> None:
    module = tmp_path / f"{name}.py"
    module.write_text(source)
    proc = make_lint(module)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert expected in output, output
    assert f"{name}.py" in output, output
