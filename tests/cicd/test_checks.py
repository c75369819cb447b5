"""The gates themselves: each must fail on a known defect and name it, and pass a clean file.

Without these, a gate that stopped looking (a linter that no longer runs, a pattern that
matches nothing) would pass the real tree forever.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cicd import checks

CHECKOUT = "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1"

CLEAN_WORKFLOW = f"""\
name: clean
on: push
permissions: {{}}
jobs:
  test:
    runs-on: ubuntu-24.04
    permissions:
      contents: read
    steps:
      - uses: {CHECKOUT} # v7.0.1
      - run: echo "$GITHUB_SHA"
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_actionlint_passes_a_clean_workflow(tmp_path: Path) -> None:
    path = write(tmp_path, "clean.yml", CLEAN_WORKFLOW)
    assert checks.actionlint([path]) == []


def test_actionlint_names_a_job_that_needs_a_missing_job(tmp_path: Path) -> None:
    broken = CLEAN_WORKFLOW.replace("    runs-on:", "    needs: [biuld]\n    runs-on:")
    path = write(tmp_path, "broken.yml", broken)
    findings = checks.actionlint([path])
    assert [(f.path, f.line, f.rule) for f in findings] == [(path, 5, "actionlint/job-needs")]
    assert 'needs job "biuld" which does not exist' in findings[0].message


def test_actionlint_runs_shellcheck_over_run_scripts(tmp_path: Path) -> None:
    path = write(tmp_path, "unquoted.yml", CLEAN_WORKFLOW.replace('"$GITHUB_SHA"', "$GITHUB_SHA"))
    findings = checks.actionlint([path])
    assert [(f.line, f.rule) for f in findings] == [(11, "actionlint/shellcheck")]
    assert "SC2086" in findings[0].message


def test_actionlint_refuses_a_repository_variable_the_config_does_not_declare(
    tmp_path: Path,
) -> None:
    typo = CLEAN_WORKFLOW.replace(
        '- run: echo "$GITHUB_SHA"',
        '- run: echo "$REGISTRY"\n        env:\n          REGISTRY: ${{ vars.IMAGE_REGSTRY }}',
    )
    path = write(tmp_path, "typo.yml", typo)
    findings = checks.actionlint([path])
    assert [(f.line, f.rule) for f in findings] == [(13, "actionlint/expression")]
    assert 'undefined configuration variable "image_regstry"' in findings[0].message


def test_an_unpinned_action_is_named_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, "tag.yml", CLEAN_WORKFLOW.replace(f"{CHECKOUT} # v7.0.1", "actions/checkout@v4")
    )
    findings = checks.unpinned_actions(path)
    assert [(f.line, f.rule) for f in findings] == [(10, "pin")]
    assert "actions/checkout@v4 is not pinned to a full 40-hex commit digest" in str(findings[0])


@pytest.mark.parametrize(
    ("uses", "problem"),
    [
        (f"{CHECKOUT} # v7.0.1", None),
        (f"{CHECKOUT}  # v7", None),
        ("./.github/actions/setup", None),
        ("docker://alpine@sha256:" + "ab" * 32, None),
        ("actions/checkout@main", "is not pinned"),
        ("actions/checkout@3d3c42e", "is not pinned"),
        (f"{CHECKOUT.upper().replace('ACTIONS/CHECKOUT', 'actions/checkout')} # v7", "not pinned"),
        ("docker://alpine:3.20", "use docker://IMAGE@sha256"),
        (CHECKOUT, "has no version comment"),
        (f"{CHECKOUT} # the usual one", "has no version comment"),
        ("octo/deploy/.github/workflows/deploy.yml@v1", "is not pinned"),
    ],
)  # fmt: skip
def test_pin_rules(uses: str, problem: str | None, tmp_path: Path) -> None:
    path = write(tmp_path, "w.yml", CLEAN_WORKFLOW.replace(f"{CHECKOUT} # v7.0.1", uses))
    messages = [f.message for f in checks.unpinned_actions(path)]
    if problem is None:
        assert messages == []
    else:
        assert len(messages) == 1, messages
        assert problem in messages[0]


def test_pins_are_checked_in_flow_style_and_in_reusable_workflow_calls(tmp_path: Path) -> None:
    text = (
        "on: push\n"
        "jobs:\n"
        "  call:\n"
        "    uses: octo/deploy/.github/workflows/deploy.yml@v1\n"
        "  flow:\n"
        "    runs-on: ubuntu-24.04\n"
        "    steps: [{uses: actions/setup-python@v6}]\n"
    )
    findings = checks.unpinned_actions(write(tmp_path, "w.yml", text))
    assert [(f.line, f.message.split()[0]) for f in findings] == [
        (4, "octo/deploy/.github/workflows/deploy.yml@v1"),
        (7, "actions/setup-python@v6"),
    ]


def test_shellcheck_names_a_composite_action_script_line(tmp_path: Path) -> None:
    action = (
        "name: a\n"
        "description: a\n"
        "runs:\n"
        "  using: composite\n"
        "  steps:\n"
        "    - shell: bash\n"
        "      run: |\n"
        '        echo "fine ${{ inputs.x }}"\n'
        "        ls $TARGET\n"
    )
    findings = checks.shellcheck_actions([write(tmp_path, "action.yml", action)])
    assert [(f.line, f.rule) for f in findings] == [(9, "shellcheck/SC2086")]


DOCKERFILE = """\
FROM python:3.11.11-slim-bookworm
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements.txt
USER 10001:10001
"""


def test_hadolint_passes_a_clean_dockerfile(tmp_path: Path) -> None:
    assert checks.hadolint([write(tmp_path, "Dockerfile", DOCKERFILE)]) == []


@pytest.mark.parametrize(
    ("old", "new", "line", "rule", "message"),
    [
        # An error: the Dockerfile uses an instruction Docker has deprecated.
        ("USER", "MAINTAINER someone\nUSER", 4, "DL4000", "error: MAINTAINER is deprecated"),
        # A warning: an install that no lock pins.
        ("--require-hashes -r /tmp/requirements.txt", "requests", 3, "DL3013",
         "warning: Pin versions in pip"),
        # Only "info", and the gate still refuses it: consecutive RUNs.
        ("USER", "RUN true\nUSER", 4, "DL3059", "info: Multiple consecutive `RUN`"),
    ],
)  # fmt: skip
def test_hadolint_names_each_finding_with_its_line(
    old: str, new: str, line: int, rule: str, message: str, tmp_path: Path
) -> None:
    path = write(tmp_path, "Dockerfile", DOCKERFILE.replace(old, new))
    findings = checks.hadolint([path])
    assert [(f.path, f.line, f.rule) for f in findings] == [(path, line, f"hadolint/{rule}")]
    assert findings[0].message.startswith(message), findings[0].message


def test_an_answered_hadolint_finding_passes_only_with_its_reason(tmp_path: Path) -> None:
    unpinned = DOCKERFILE.replace("--require-hashes -r /tmp/requirements.txt", "requests")
    pragma = "# hadolint ignore=DL3013\nRUN pip"
    answered = unpinned.replace("RUN pip", "# The reason, in words.\n" + pragma)
    bare = unpinned.replace("RUN pip", pragma)

    path = write(tmp_path, "Dockerfile", answered)
    assert checks.hadolint([path]) == []
    assert checks.unexplained_ignores(path) == []

    path = write(tmp_path, "Dockerfile", bare)
    assert checks.hadolint([path]) == [], "hadolint honours the pragma"
    findings = checks.unexplained_ignores(path)
    assert [(f.line, f.rule) for f in findings] == [(3, "hadolint-ignore")]
