"""Keep each dependency lock in step with the human-edited input it was resolved from.

Every ``*.in`` file in LOCK_INPUTS and IMAGE_INPUTS_GLOB (what we depend on, and why) has a
resolved lock beside it (``*.txt``, every package pinned with hashes). ``compile`` resolves the
inputs and stamps each lock with a digest of its inputs; ``check`` fails when an input changed
after its lock was made, or when a pin no longer satisfies what an input asks for. ``check``
needs no network.

Usage: python tools/lockcheck.py {compile,check} [--root DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

# Inputs in dependency order: a lock that another input constrains on comes first.
LOCK_INPUTS = (
    "requirements.in",
    "requirements-dev.in",
    "requirements-policy.in",
    "requirements-kserve.in",
)
IMAGE_INPUTS_GLOB = "images/*/requirements.in"
PYTHON_VERSION = "3.11"
# Image locks are resolved under the dev lock, so the images ship the versions the tests ran.
IMAGE_CONSTRAINT = "requirements-dev.txt"
STAMP = "# inputs-sha256: "
COMPILE_COMMAND = "make lock"


@dataclass
class Input:
    """One parsed requirements input, with the files it pulls in."""

    path: Path
    requirements: list[Requirement] = field(default_factory=list)
    constraint_files: list[Path] = field(default_factory=list)
    normalized: list[str] = field(default_factory=list)


def lock_inputs(root: Path) -> list[Path]:
    found = [root / name for name in LOCK_INPUTS if (root / name).exists()]
    return found + sorted(root.glob(IMAGE_INPUTS_GLOB))


def lock_path(input_path: Path) -> Path:
    return input_path.with_suffix(".txt")


def load_input(root: Path, input_path: Path) -> Input:
    """Parse an input together with the constraint its lock is compiled under, if any."""
    parsed = parse_input(input_path)
    if input_path.parent.parent == root / "images":
        constraint = root / IMAGE_CONSTRAINT
        if not constraint.exists():
            lock = lock_path(input_path).relative_to(root)
            raise ValueError(f"{lock}: its constraint {IMAGE_CONSTRAINT} is missing")
        parsed.constraint_files.append(constraint)
        parsed.normalized.extend(_logical_lines(constraint))
    return parsed


def _logical_lines(path: Path) -> list[str]:
    """Lines without comments and blanks, with backslash continuations joined."""
    text = path.read_text().replace("\\\n", " ")
    lines = []
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line:
            lines.append(" ".join(line.split()))
    return lines


def parse_input(path: Path, seen: frozenset[Path] = frozenset()) -> Input:
    """Parse a requirements input, following ``-r`` includes and recording ``-c`` files."""
    if path in seen:
        raise ValueError(f"{path}: include cycle through {sorted(str(p) for p in seen)}")
    parsed = Input(path)
    for line in _logical_lines(path):
        parsed.normalized.append(line)
        option = re.match(r"^(-r|--requirement|-c|--constraint)\s*(\S+)$", line)
        if option:
            target = (path.parent / option.group(2)).resolve()
            if option.group(1) in ("-c", "--constraint"):
                parsed.constraint_files.append(target)
                parsed.normalized.extend(_logical_lines(target))
            else:
                included = parse_input(target, seen | {path})
                parsed.requirements.extend(included.requirements)
                parsed.constraint_files.extend(included.constraint_files)
                parsed.normalized.extend(included.normalized)
            continue
        if line.startswith("-"):
            raise ValueError(f"{path}: option {line!r} is not supported in a lock input")
        try:
            parsed.requirements.append(Requirement(line))
        except InvalidRequirement as exc:
            raise ValueError(f"{path}: {line!r} is not a valid requirement: {exc}") from exc
    return parsed


def inputs_digest(parsed: Input) -> str:
    return hashlib.sha256("\n".join(parsed.normalized).encode()).hexdigest()


def read_pins(lock: Path) -> dict[str, str]:
    """Map canonical package name to pinned version for a lock file."""
    pins: dict[str, str] = {}
    for line in _logical_lines(lock):
        if line.startswith("-"):
            continue
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        if not match:
            raise ValueError(f"{lock}: {line!r} is not an exact pin")
        pins[canonicalize_name(match.group(1))] = match.group(3)
    return pins


def check(root: Path) -> list[str]:
    """Return one message per disagreement between the inputs and their locks."""
    problems: list[str] = []
    for input_path in lock_inputs(root):
        lock = lock_path(input_path)
        if not lock.exists():
            problems.append(f"{lock.relative_to(root)} is missing: run `{COMPILE_COMMAND}`")
            continue
        try:
            problems.extend(_compare(root, input_path, lock))
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def _compare(root: Path, input_path: Path, lock: Path) -> list[str]:
    problems: list[str] = []
    rel_in, rel_lock = input_path.relative_to(root), lock.relative_to(root)
    parsed = load_input(root, input_path)
    pins = read_pins(lock)
    stamp = next((ln for ln in lock.read_text().splitlines() if ln.startswith(STAMP)), None)
    if stamp is None or stamp[len(STAMP) :].strip() != inputs_digest(parsed):
        problems.append(
            f"{rel_lock} was not resolved from the current {rel_in} (or a file it "
            f"includes): run `{COMPILE_COMMAND}` and commit both"
        )
    for req in parsed.requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{rel_lock} has no pin for {req.name} ({rel_in} asks for it)")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(
                f"{rel_lock} pins {req.name}=={pinned}, outside {rel_in}'s {req.specifier}"
            )
    for constraint_file in parsed.constraint_files:
        for name, version in read_pins(constraint_file).items():
            if name in pins and pins[name] != version:
                problems.append(
                    f"{rel_lock} pins {name}=={pins[name]} but its constraint "
                    f"{constraint_file.relative_to(root)} pins {version}"
                )
    return problems


def compile_locks(root: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("uv is not on PATH: run `make setup` first")
    for input_path in lock_inputs(root):
        lock = lock_path(input_path)
        parsed = load_input(root, input_path)
        constraints = [f"--constraint={c.relative_to(root)}" for c in parsed.constraint_files
                       if c.name == IMAGE_CONSTRAINT]  # fmt: skip
        subprocess.run(
            [uv, "pip", "compile", "--quiet", "--generate-hashes",
             "--python-version", PYTHON_VERSION, "--custom-compile-command", COMPILE_COMMAND,
             *constraints, "--output-file", str(lock.relative_to(root)),
             str(input_path.relative_to(root))],
            cwd=root,
            check=True,
        )  # fmt: skip
        body = lock.read_text().splitlines(keepends=True)
        stamped = [ln for ln in body if not ln.startswith(STAMP)]
        header_end = next(i for i, ln in enumerate(stamped) if not ln.startswith("#"))
        stamped.insert(header_end, f"{STAMP}{inputs_digest(parsed)}\n")
        lock.write_text("".join(stamped))
        print(f"locked {lock.relative_to(root)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["compile", "check"])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.command == "compile":
        compile_locks(root)
        return 0
    problems = check(root)
    for problem in problems:
        print(f"lock check: {problem}", file=sys.stderr)
    if not problems:
        print(f"lock check: {len(lock_inputs(root))} locks match their inputs")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
