"""The fault table: every fault scenario of the suite records what it did and what happened,
and the session prints them as one table at its end (tests/conftest.py).

A row says which fault, through what (``stack``: the real scheduler, KPO and localcluster;
``session``: the rollout session against a real localcluster; ``step``: a step's command), the
outcome the test asserted, how many requests the simulated users saw fail, and the seconds
from the fault to recovery (the pipeline back where it should be) or, for input no retry can
fix, to the task's clear failure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    fault: str
    through: str
    outcome: str
    failures: int | None  # None: no users were sending (nothing serves through this fault)
    seconds: float | None  # None: nothing to recover from (refused before anything started)


TABLE: list[Fault] = []


def record(
    fault: str, through: str, outcome: str, failures: int | None, seconds: float | None
) -> None:
    TABLE.append(Fault(fault, through, outcome, failures, seconds))


def render(rows: list[Fault]) -> str:
    """The rows as an aligned text table, with its header."""
    header = (
        "fault",
        "through",
        "outcome",
        "failed requests",
        "seconds to recovery or clear failure",
    )
    cells = [
        (r.fault, r.through, r.outcome, "-" if r.failures is None else str(r.failures),
         "-" if r.seconds is None else f"{r.seconds:.0f}")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *cells]]  # fmt: skip
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
