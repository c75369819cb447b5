"""The Dockerfiles, checked by reading them: no Docker engine runs here.

Each check is a rule a reviewer would otherwise enforce by eye: pinned bases, a non-root
numeric user in the final stage, hash-checked installs from the image's own lock, every
copied path present in the build context, and commands that exist in the step CLI.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dev_env import REPO

IMAGES = sorted(p.parent.name for p in (REPO / "images").glob("*/Dockerfile"))
STEP_IMAGES = ("pipeline", "serve", "train")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip()))
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def exec_form(args: str) -> list[str]:
    import json

    value: list[str] = json.loads(args)
    return value


@pytest.fixture(params=IMAGES)
def image(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_every_expected_image_exists() -> None:
    assert set(IMAGES) == {"airflow", "localcluster", "pipeline", "serve", "train"}


def test_bases_are_pinned(image: str) -> None:
    for ins in parse(REPO / "images" / image / "Dockerfile"):
        if ins.keyword == "FROM":
            ref = ins.args.split()[0]
            if "@sha256:" in ref:
                continue
            _, _, tag = ref.rpartition("/")[2].partition(":")
            assert tag, f"{image}: FROM {ref} has no tag"
            assert tag != "latest", f"{image}: FROM {ref} is mutable"
            assert re.search(r"\d+\.\d+\.\d+", tag), f"{image}: pin {ref} to a patch release"


def test_final_stage_runs_as_a_numeric_non_root_user(image: str) -> None:
    final = stages(parse(REPO / "images" / image / "Dockerfile"))[-1]
    users = [ins.args for ins in final if ins.keyword == "USER"]
    assert users, f"{image}: the final stage sets no USER, so it runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"{image}: USER {users[-1]} must be numeric for runAsNonRoot checks"
    assert int(uid) != 0, f"{image}: USER is root"


def test_installs_are_hash_checked_from_a_lock_without_cache(image: str) -> None:
    runs = [i.args for i in parse(REPO / "images" / image / "Dockerfile") if i.keyword == "RUN"]
    installs = [r for r in runs if "pip install" in r and "-r " in r]
    assert installs, f"{image}: no locked dependency install"
    for command in installs:
        assert "--require-hashes" in command, command
        assert "--no-cache-dir" in command, command
    for command in (r for r in runs if "pip install" in r):
        assert "-r " in command or "--no-deps" in command, f"{image}: unlocked install {command}"


def test_copied_paths_exist_and_pass_the_dockerignore(image: str) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def sent_to_builder(path: str) -> bool:
        included = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            glob = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, glob) or fnmatch.fnmatch(
                path, glob.removesuffix("/**") + "/*"
            ):
                included = negated
        return included

    for ins in parse(REPO / "images" / image / "Dockerfile"):
        if ins.keyword != "COPY" or "--from=" in ins.args:
            continue
        sources = [a for a in shlex.split(ins.args) if not a.startswith("--")][:-1]
        for source in sources:
            path = REPO / source
            assert path.exists(), f"{image}: COPY {source} does not exist"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            files = [f for f in files if "__pycache__" not in f.parts]
            assert files, f"{image}: COPY {source} copies nothing"
            for file in files:
                rel = str(file.relative_to(REPO))
                assert sent_to_builder(rel), f"{image}: .dockerignore keeps {rel} out"


@pytest.mark.parametrize("image", STEP_IMAGES)
def test_step_images_run_commands_the_cli_has(image: str) -> None:
    from typer.main import get_command

    from helmsman_steps.cli import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    final = stages(parse(REPO / "images" / image / "Dockerfile"))[-1]
    entrypoint = next(exec_form(i.args) for i in final if i.keyword == "ENTRYPOINT")
    cmd = next(exec_form(i.args) for i in final if i.keyword == "CMD")
    assert entrypoint == ["helmsman-step"]
    assert cmd[0] in commands | {"--help"}, f"{image}: CMD {cmd} is not a helmsman-step command"
    scripts = (REPO / "images" / "steps" / "pyproject.toml").read_text()
    assert 'helmsman-step = "helmsman_steps.cli:main"' in scripts


@pytest.mark.parametrize("image", STEP_IMAGES)
def test_each_step_image_has_its_own_lock(image: str) -> None:
    dockerfile = (REPO / "images" / image / "Dockerfile").read_text()
    assert f"COPY images/{image}/requirements.txt" in dockerfile
    assert (REPO / "images" / image / "requirements.in").exists()


def test_training_base_carries_the_torch_the_tests_use() -> None:
    pinned = re.search(r"^torch==(\S+)", (REPO / "requirements-torch.txt").read_text(), re.M)
    base = next(
        i.args for i in parse(REPO / "images" / "train" / "Dockerfile") if i.keyword == "FROM"
    )
    assert pinned is not None
    assert base.startswith(f"pytorch/pytorch:{pinned.group(1)}-cuda"), base


def test_serving_image_has_no_training_dependencies() -> None:
    lock = (REPO / "images" / "serve" / "requirements.txt").read_text()
    for heavy in ("torch==", "pandas==", "scikit-learn==", "matplotlib=="):
        assert f"\n{heavy}" not in lock, f"the serving lock pulls in {heavy.rstrip('=')}"


def test_airflow_image_matches_the_locked_airflow() -> None:
    pinned = re.search(r"^apache-airflow==(\S+)", (REPO / "requirements.txt").read_text(), re.M)
    base = next(
        i.args for i in parse(REPO / "images" / "airflow" / "Dockerfile") if i.keyword == "FROM"
    )
    assert pinned is not None
    assert base.startswith(f"apache/airflow:{pinned.group(1)}-python3.11"), base
