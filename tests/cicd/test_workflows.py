"""The workflows in .github/: lint-clean, pinned, least privilege, and saying what they claim.

The README tells a team what these workflows do for them (checks on pull requests, scanned and
signed images on tags, staging then production behind an approval); each test below holds one
of those promises against the files, so an edit that breaks one fails `make test`.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cicd import checks
from tests.dev_env import REPO

CI = checks.WORKFLOWS / "ci.yml"
RELEASE = checks.WORKFLOWS / "release.yml"
LONG_SUITES = {"tests/e2e", "tests/tools/test_demo.py"}
# The only jobs that may write anything, and what: pushing images and signing them keyless.
ALLOWED_WRITES = {("release.yml", "images"): {"packages", "id-token"}}


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    # PyYAML reads the key `on` as the boolean True (YAML 1.1).
    if True in document:
        document["on"] = document.pop(True)
    return document


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = job.get("steps", [])
    return result


def test_the_workflows_and_actions_exist() -> None:
    assert {p.name for p in checks.workflow_files()} == {"ci.yml", "release.yml"}
    assert {p.parent.name for p in checks.action_files()} == {
        "setup",
        "airflow-chart",
        "deploy-airflow",
    }


def test_actionlint_finds_nothing() -> None:
    findings = checks.actionlint(checks.workflow_files())
    assert findings == [], checks.report(findings)


@pytest.mark.parametrize(
    "path",
    checks.workflow_files() + checks.action_files(),
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_every_action_is_pinned_by_digest(path: Path) -> None:
    findings = checks.unpinned_actions(path)
    assert findings == [], checks.report(findings)


def test_composite_action_scripts_pass_shellcheck() -> None:
    paths = checks.action_files()
    assert sum(len(checks.composite_scripts(p)) for p in paths) >= 4
    findings = checks.shellcheck_actions(paths)
    assert findings == [], checks.report(findings)


@pytest.mark.parametrize("path", checks.workflow_files(), ids=lambda p: p.name)
def test_every_job_has_least_privilege(path: Path) -> None:
    workflow = load(path)
    assert workflow.get("permissions") == {}, f"{path.name}: set `permissions: {{}}` on top"
    for name, job in workflow["jobs"].items():
        assert "permissions" in job, f"{path.name}: job {name} inherits its permissions"
        granted = job["permissions"]
        assert isinstance(granted, dict), f"{path.name}: job {name}: {granted!r}"
        writes = {scope for scope, level in granted.items() if level == "write"}
        allowed = ALLOWED_WRITES.get((path.name, name), set())
        assert writes <= allowed, f"{path.name}: job {name} may write {sorted(writes - allowed)}"


def test_checkouts_keep_no_credentials() -> None:
    for path in checks.workflow_files():
        for name, job in load(path)["jobs"].items():
            for step in steps(job):
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step.get("with", {}).get("persist-credentials") is False, (
                        f"{path.name}: job {name} leaves the token in .git/config"
                    )


def pytest_paths(command: str) -> tuple[set[str], set[str]]:
    """(paths run, paths ignored) of a `.venv/bin/pytest ...` command line."""
    words = shlex.split(command)
    assert words[0] == ".venv/bin/pytest", command
    ignored = {w.removeprefix("--ignore=") for w in words if w.startswith("--ignore=")}
    run = {w for w in words[1:] if not w.startswith("-")}
    return run, ignored


def test_pull_requests_run_every_suite_but_the_long_ones_unless_asked() -> None:
    workflow = load(CI)
    pr_types = workflow["on"]["pull_request"]["types"]
    assert "labeled" in pr_types, "adding the e2e label must start a run"
    assert "workflow_dispatch" in workflow["on"]
    jobs = workflow["jobs"]
    commands = {
        name: step["run"] for name, job in jobs.items() for step in steps(job)
        if str(step.get("run", "")).startswith(".venv/bin/pytest")
    }  # fmt: skip
    unit_run, unit_ignored = pytest_paths(commands["unit"])
    assert unit_run == set(), "the unit job runs the whole suite minus what it ignores"
    assert unit_ignored >= LONG_SUITES
    dags_run, _ = pytest_paths(commands["dags"])
    e2e_run, _ = pytest_paths(commands["e2e"])
    # What the unit job leaves out, another job runs: no suite falls between the jobs.
    assert unit_ignored <= dags_run | e2e_run, unit_ignored - (dags_run | e2e_run)
    assert e2e_run == LONG_SUITES
    condition = jobs["e2e"]["if"]
    assert "inputs.e2e" in condition
    assert "'e2e'" in condition
    assert "make lock-check lint" in [s.get("run") for s in steps(jobs["lint"])]


def test_a_release_runs_all_checks_first() -> None:
    workflow = load(RELEASE)
    assert workflow["on"] == {"push": {"tags": ["v[0-9]+.[0-9]+.[0-9]+"]}}
    jobs = workflow["jobs"]
    assert jobs["checks"]["uses"] == "./.github/workflows/ci.yml"
    assert jobs["checks"]["with"] == {"e2e": True}
    assert {"checks", "pins"} <= set(jobs["images"]["needs"])


def image_matrix() -> dict[str, set[str]]:
    include = load(RELEASE)["jobs"]["images"]["strategy"]["matrix"]["include"]
    return {entry["image"]: set(entry["platforms"].split(",")) for entry in include}


def pods_constants() -> dict[str, Any]:
    """The module-level constants of plugins/helmsman/pods.py, read without importing Airflow."""
    tree = ast.parse((REPO / "plugins" / "helmsman" / "pods.py").read_text())
    constants: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.isupper():
                    try:
                        constants[target.id] = ast.literal_eval(node.value)
                    except ValueError:  # built from other names: not a pin
                        continue
    return constants


def test_the_release_builds_every_image_the_dags_and_the_chart_use() -> None:
    stage_images = pods_constants()["STAGE_IMAGES"]
    used = {name.removeprefix("helmsman-") for name in stage_images.values()} | {"airflow"}
    built = set(image_matrix())
    assert built == used, f"built {sorted(built)}, the DAGs and the chart use {sorted(used)}"
    # Every image folder is either released or the compose-only localcluster.
    folders = {p.parent.name for p in (REPO / "images").glob("*/Dockerfile")}
    assert folders - built == {"localcluster"}


def run_pin_check(version: str, registry: str) -> subprocess.CompletedProcess[str]:
    """The release's own check (the Python in its `pins` job), run against this tree."""
    step = next(s for s in steps(load(RELEASE)["jobs"]["pins"]) if s.get("id") == "pins")
    script = step["run"].split("<<'EOF'\n", 1)[1].split("\nEOF", 1)[0]
    return subprocess.run(
        [sys.executable, "-c", script, version, registry],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_release_accepts_the_pinned_tag_and_registry() -> None:
    pins = pods_constants()
    proc = run_pin_check(pins["TAG"], pins["REGISTRY"])
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("version", "registry", "problem"),
    [
        ("99.0.0", None, "the tag says 99.0.0, pods.py pins TAG"),
        (None, "registry.example/other", "IMAGE_REGISTRY is registry.example/other, pods.py pins"),
        (None, "", "the repository variable IMAGE_REGISTRY is not set"),
    ],
)
def test_the_release_refuses_a_tag_or_registry_other_than_the_pins(
    version: str | None, registry: str | None, problem: str
) -> None:
    pins = pods_constants()
    proc = run_pin_check(
        pins["TAG"] if version is None else version,
        pins["REGISTRY"] if registry is None else registry,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"::error file=plugins/helmsman/pods.py::{problem}" in proc.stdout, proc.stdout


def test_images_are_built_for_amd64_and_arm64_where_the_base_allows() -> None:
    both = {"linux/amd64", "linux/arm64"}
    for image, platforms in image_matrix().items():
        if image == "train":
            # pytorch/pytorch has no arm64 image; the test asserts the base is still that one.
            base = (REPO / "images" / "train" / "Dockerfile").read_text()
            assert "FROM pytorch/pytorch:" in base, "a new train base may allow arm64 again"
            assert platforms == {"linux/amd64"}
        else:
            assert platforms == both, f"{image}: {sorted(platforms)}"


def test_images_are_scanned_and_signed_before_they_get_a_tag() -> None:
    job = load(RELEASE)["jobs"]["images"]
    assert job["permissions"]["id-token"] == "write", "keyless signing needs the OIDC token"
    order = [s.get("id") or s.get("name") or s["uses"].split("@")[0] for s in steps(job)]
    build = next(s for s in steps(job) if s.get("id") == "build")
    assert build["uses"].startswith("docker/build-push-action@")
    assert build["with"]["context"] == "."
    assert build["with"]["file"] == "images/${{ matrix.image }}/Dockerfile"
    assert "tags" not in build["with"], "the build must push by digest only"
    assert "push-by-digest=true" in build["with"]["outputs"]
    scans = [s for s in steps(job) if s.get("uses", "").startswith("aquasecurity/trivy-action@")]
    assert {s["env"]["TRIVY_PLATFORM"] for s in scans} == {"linux/amd64", "linux/arm64"}
    for scan in scans:
        settings = scan["with"]
        assert settings["severity"] == "HIGH,CRITICAL"
        assert settings["exit-code"] == "1"
        assert settings["ignore-unfixed"] is True
        assert re.fullmatch(r"v\d+\.\d+\.\d+", settings["version"]), "pin the Trivy release"
        assert settings["image-ref"].endswith("@${{ steps.build.outputs.digest }}")
    sign = order.index("Sign the digest")
    tag = order.index("Tag the signed digest")
    assert order.index("build") < order.index("Scan linux/amd64") < sign < tag
    assert order.index("Scan linux/arm64") < sign
    assert "cosign sign --yes" in steps(job)[sign]["run"]


def test_production_follows_staging_behind_its_environment() -> None:
    jobs = load(RELEASE)["jobs"]
    assert jobs["staging"]["environment"] == "staging"
    assert "images" in jobs["staging"]["needs"]
    assert jobs["production"]["environment"] == "production"
    assert "staging" in jobs["production"]["needs"]
    for name in ("staging", "production"):
        deploy = [
            s for s in steps(jobs[name]) if s.get("uses") == "./.github/actions/deploy-airflow"
        ]
        assert len(deploy) == 1, name
        assert deploy[0]["with"]["environment"] == name
        assert deploy[0]["with"]["image"].endswith("/helmsman-airflow")


def test_the_chart_version_is_pinned_in_one_place() -> None:
    action = load(checks.LOCAL_ACTIONS / "airflow-chart" / "action.yml")
    pull = next(s for s in action["runs"]["steps"] if s.get("id") == "pull")
    assert re.fullmatch(r"\d+\.\d+\.\d+", pull["env"]["CHART_VERSION"])
    assert '--version "$CHART_VERSION"' in pull["run"]
    # Every other file reaches the chart through that action, never a version of its own.
    for path in checks.workflow_files() + checks.action_files():
        if path.parent.name != "airflow-chart":
            assert "helm pull" not in path.read_text(), path
            assert "helm repo add" not in path.read_text(), path
