"""The lock check passes on the committed locks and fails, saying what to run, when an input
and its lock disagree."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.dev_env import REPO
from tools import lockcheck


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A copy of every lock input and lock, at the same relative paths."""
    for input_path in lockcheck.lock_inputs(REPO):
        for path in (input_path, lockcheck.lock_path(input_path)):
            target = tmp_path / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    return tmp_path


def test_committed_locks_match_their_inputs() -> None:
    assert lockcheck.check(REPO) == []


def test_copied_locks_match(root: Path) -> None:
    assert lockcheck.check(root) == []


def test_an_added_dependency_needs_a_new_lock(root: Path) -> None:
    with (root / "requirements.in").open("a") as f:
        f.write("\nrequests-toolbelt>=1\n")
    problems = lockcheck.check(root)
    assert any("requirements.txt was not resolved from the current requirements.in" in p
               for p in problems), problems  # fmt: skip
    assert "requirements.txt has no pin for requests-toolbelt (requirements.in asks for it)" in (
        problems
    )
    # The dev lock includes requirements.in, so it is stale too.
    assert any(p.startswith("requirements-dev.txt was not resolved") for p in problems), problems


def test_a_comment_change_does_not_invalidate_the_lock(root: Path) -> None:
    text = (root / "requirements.in").read_text()
    (root / "requirements.in").write_text("# a new note about why\n" + text)
    assert lockcheck.check(root) == []


def test_a_hand_edited_pin_outside_the_input_range_fails(root: Path) -> None:
    lock = root / "requirements.txt"
    lock.write_text(re.sub(r"^mlflow==3\.17\.2", "mlflow==3.16.0", lock.read_text(), flags=re.M))
    problems = lockcheck.check(root)
    assert "requirements.txt pins mlflow==3.16.0, outside requirements.in's ==3.17.2" in problems
    # requirements-dev.txt still pins 3.17.2, which now disagrees with its constraint file.
    assert any("pins mlflow==3.17.2 but its constraint requirements.txt pins 3.16.0" in p
               for p in problems), problems  # fmt: skip


def test_an_image_lock_must_agree_with_the_dev_lock(root: Path) -> None:
    lock = root / "images" / "serve" / "requirements.txt"
    lock.write_text(re.sub(r"^numpy==\S+", "numpy==2.0.0", lock.read_text(), flags=re.M))
    problems = lockcheck.check(root)
    assert any(p.startswith("images/serve/requirements.txt pins numpy==2.0.0 but its constraint "
                            "requirements-dev.txt pins") for p in problems), problems  # fmt: skip


def test_a_missing_lock_says_how_to_make_it(root: Path) -> None:
    (root / "requirements-dev.txt").unlink()
    problems = lockcheck.check(root)
    assert problems[0] == "requirements-dev.txt is missing: run `make lock`"
    # The image locks are compiled under the dev lock, so they cannot be checked either.
    assert problems[1:] == [
        f"images/{name}/requirements.txt: its constraint requirements-dev.txt is missing"
        for name in ("pipeline", "serve", "train")
    ]


def test_cli_exit_code(root: Path) -> None:
    assert lockcheck.main(["check", "--root", str(root)]) == 0
    (root / "requirements.txt").write_text("mlflow>=3\n")
    assert lockcheck.main(["check", "--root", str(root)]) == 1
