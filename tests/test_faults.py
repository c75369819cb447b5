"""The fault table's layout (tests/faults.py): columns aligned, absent figures shown as '-'."""

from __future__ import annotations

from tests.faults import Fault, render


def test_the_table_aligns_its_columns_and_marks_what_does_not_apply() -> None:
    rows = [
        Fault("pod deleted", "stack", "retried; succeeded", 0, 91.6),
        Fault("bad conf", "stack", "400", None, None),
    ]
    assert render(rows).splitlines() == [
        "fault       | through | outcome            | failed requests | "
        "seconds to recovery or clear failure",
        "------------+---------+--------------------+-----------------+-"
        "------------------------------------",
        "pod deleted | stack   | retried; succeeded | 0               | 92",
        "bad conf    | stack   | 400                | -               | -",
    ]
