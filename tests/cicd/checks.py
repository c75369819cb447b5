"""The CI/CD gates as functions: actionlint, action pinning, ShellCheck and hadolint.

One implementation serves both the tests of the real tree (no finding allowed) and the tests
of the gates themselves (a known defect must be found and named), so a gate that silently
stops looking fails its own tests. Each function returns findings; an empty list is a pass.
The linters are the binaries the dev lock installs into the venv beside this interpreter.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.dev_env import REPO

WORKFLOWS = REPO / ".github" / "workflows"
LOCAL_ACTIONS = REPO / ".github" / "actions"
ACTIONLINT_CONFIG = REPO / ".github" / "actionlint.yaml"
HADOLINT_CONFIG = REPO / ".hadolint.yaml"

# owner/repo[/path]@<full commit digest>: a tag or branch can be moved to other code after
# review (as trivy-action's tags were in March 2026); a 40-hex commit cannot.
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[^@\s]+)?@[0-9a-f]{40}$")
# docker:// images are pinned by their content digest for the same reason.
PINNED_DOCKER = re.compile(r"^docker://[^@\s]+@sha256:[0-9a-f]{64}$")
# The release the digest was taken from, for the reader and for update tools: `# v1.2.3`.
VERSION_COMMENT = re.compile(r"#\s*v?\d+(\.\d+)*\S*")
HADOLINT_PRAGMA = re.compile(r"^\s*#\s*hadolint\s+(global\s+)?ignore=", re.IGNORECASE)
EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.DOTALL)


@dataclass(frozen=True)
class Finding:
    """One problem, located so that a failure message points at the line to change."""

    path: Path
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        try:
            shown = self.path.relative_to(REPO)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}: [{self.rule}] {self.message}"


def report(findings: list[Finding]) -> str:
    """Findings one per line, for an assertion message."""
    return "\n".join(str(f) for f in findings) or "no findings"


def tool(name: str) -> str:
    """A linter from the venv's bin/ (the locked version), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: run `make setup` (requirements-dev.txt)")
    return found


def workflow_files(root: Path = WORKFLOWS) -> list[Path]:
    return sorted([*root.glob("*.yml"), *root.glob("*.yaml")])


def action_files(root: Path = LOCAL_ACTIONS) -> list[Path]:
    return sorted([*root.glob("*/action.yml"), *root.glob("*/action.yaml")])


def actionlint(paths: list[Path], config: Path | None = ACTIONLINT_CONFIG) -> list[Finding]:
    """actionlint over workflow files, with ShellCheck over every `run:` script."""
    command = [
        tool("actionlint"),
        "-format",
        "{{json .}}",
        "-shellcheck",
        tool("shellcheck"),
        # Python steps would be checked by pyflakes; we have none, and ruff lints our Python.
        "-pyflakes",
        "",
    ]
    if config is not None:
        command += ["-config-file", str(config)]
    proc = _run_linter(command, paths)
    # 0: clean, 1: findings; 2 and 3 mean actionlint itself could not run.
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"actionlint failed ({proc.returncode}): {proc.stderr}")
    errors: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
    return [
        Finding(_resolve(e["filepath"]), e["line"], f"actionlint/{e['kind']}", e["message"])
        for e in errors
    ]


def _resolve(path: str) -> Path:
    candidate = Path(path)
    return (candidate if candidate.is_absolute() else REPO / candidate).resolve()


def scalars(path: Path, key: str) -> list[tuple[int, str, bool]]:
    """(line, value, is_block) of every scalar under `key` anywhere in a YAML file: `uses:` at
    job level (reusable workflows) and in steps, `run:` scripts. Lines come from the parser,
    so flow style (`{uses: ...}`) is found as well."""
    found: list[tuple[int, str, bool]] = []

    def walk(node: yaml.Node) -> None:
        if isinstance(node, yaml.MappingNode):
            for name, value in node.value:
                if name.value == key and isinstance(value, yaml.ScalarNode):
                    block = value.style in ("|", ">")
                    # A block scalar's text starts on the line after its `|`.
                    found.append((value.start_mark.line + 1 + int(block), value.value, block))
                else:
                    walk(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)

    root = yaml.compose(path.read_text())
    if root is not None:
        walk(root)
    return found


def unpinned_actions(path: Path) -> list[Finding]:
    """`uses:` references not pinned to a full commit digest with the version beside it.

    Exempt: `./` actions and workflows of this repository, which are reviewed in the same
    change and run at the same commit as the workflow itself.
    """
    lines = path.read_text().splitlines()
    findings = []
    for number, ref, _ in scalars(path, "uses"):
        _, _, comment = lines[number - 1].partition("#")
        problem = _pin_problem(ref, comment.strip() if comment else None)
        if problem:
            findings.append(Finding(path, number, "pin", problem))
    return findings


def _pin_problem(ref: str, comment: str | None) -> str | None:
    if ref.startswith("./"):
        return None
    if ref.startswith("docker://"):
        if PINNED_DOCKER.match(ref):
            return None
        return f"{ref} is not pinned: use docker://IMAGE@sha256:<digest>"
    if not PINNED.match(ref):
        return f"{ref} is not pinned to a full 40-hex commit digest"
    if comment is None or not VERSION_COMMENT.match("#" + comment):
        return f"{ref} has no version comment (`# vX.Y.Z`) naming the release it pins"
    return None


def composite_scripts(path: Path) -> list[tuple[int, str]]:
    """(line, script) of every `run:` step in a composite action (actionlint reads workflows
    only, so these scripts get ShellCheck here)."""
    return [(number, script) for number, script, _ in scalars(path, "run")]


def shellcheck_actions(paths: list[Path]) -> list[Finding]:
    """ShellCheck over the composite actions' scripts, `${{ }}` blanked as actionlint does."""
    findings = []
    for path in paths:
        for number, script in composite_scripts(path):
            body = EXPRESSION.sub(lambda m: "_" * len(m.group()), script)
            with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as handle:
                handle.write(body)
            script_path = Path(handle.name)
            try:
                proc = subprocess.run(
                    [tool("shellcheck"), "--shell=bash", "--format=json", str(script_path)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
            finally:
                script_path.unlink()
            for issue in json.loads(proc.stdout or "[]"):
                findings.append(
                    Finding(
                        path,
                        number + issue["line"] - 1,
                        f"shellcheck/SC{issue['code']}",
                        issue["message"],
                    )
                )
    return findings


def _run_linter(command: list[str], paths: list[Path]) -> subprocess.CompletedProcess[str]:
    """A linter over ``paths`` from the repository root; its exit code is the caller's to read."""
    return subprocess.run(
        [*command, *map(str, paths)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def hadolint(paths: list[Path], config: Path | None = HADOLINT_CONFIG) -> list[Finding]:
    """hadolint over Dockerfiles, every level down to style. An explicit config keeps a
    developer's own ~/.config/hadolint.yaml out of the result."""
    command = [tool("hadolint"), "--no-color", "--format", "json"]
    if config is not None:
        command += ["--config", str(config)]
    proc = _run_linter(command, paths)
    try:
        results: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError as error:
        raise RuntimeError(f"hadolint failed ({proc.returncode}): {proc.stderr}") from error
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"hadolint failed ({proc.returncode}): {proc.stderr}")
    return [
        Finding(
            _resolve(r["file"]), r["line"], f"hadolint/{r['code']}", f"{r['level']}: {r['message']}"
        )
        for r in results
    ]


def unexplained_ignores(path: Path) -> list[Finding]:
    """`# hadolint ignore=...` pragmas without a reason on the comment line just above.

    hadolint reads nothing after the rule list on the pragma line itself, so the answer to a
    finding is written on the line before it.
    """
    lines = path.read_text().splitlines()
    findings = []
    for index, line in enumerate(lines):
        if not HADOLINT_PRAGMA.match(line):
            continue
        above = lines[index - 1].strip() if index else ""
        explained = (
            above.startswith("#")
            and above.lstrip("#").strip() != ""
            and not HADOLINT_PRAGMA.match(above)
        )
        if not explained:
            findings.append(
                Finding(
                    path,
                    index + 1,
                    "hadolint-ignore",
                    f"{line.strip()} has no reason: say why on the comment line above it",
                )
            )
    return findings
