"""Exit codes every step command uses, so a pod's exit code says what went wrong.

Airflow and Kubernetes see only the container's exit code. Keeping bad input apart from an
internal failure lets a retry policy skip the first (retrying cannot fix the data) and lets a
person triaging a failed task know where to look before reading the log.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

# Set by helmsman_steps.torchrun for its workers: a folder where a worker that exits with bad
# input leaves a mark, so the launcher can end with BAD_INPUT whichever worker it saw fail first.
MARK_DIR_ENV = "HELMSMAN_EXIT_MARKS"


class ExitCode(enum.IntEnum):
    OK = 0
    # Something inside the step broke (a bug, an unreachable MLflow, a full disk): retry-worthy.
    INTERNAL = 1
    # The input is wrong (bad options, data that fails validation): fix the input, not the code.
    BAD_INPUT = 2
    # Nothing to do, and nothing wrong (a monitor with no traffic to judge): the task is skipped.
    SKIPPED = 3


class Skipped(Exception):  # an outcome, not an error
    """Nothing to do and nothing wrong (a monitor with no traffic to judge); the CLI maps it to
    ExitCode.SKIPPED, which the task turns into "skipped"."""


class BadInputError(Exception):
    """Raised for input a person must fix; the CLI maps it to ExitCode.BAD_INPUT."""


def record_bad_input() -> None:
    """Leave the bad-input mark for a launcher that asked for it (MARK_DIR_ENV)."""
    folder = os.environ.get(MARK_DIR_ENV)
    if folder:
        (Path(folder) / f"bad-input-{os.getpid()}").touch()


def bad_input_recorded(folder: str) -> bool:
    return any(Path(folder).glob("bad-input-*"))
