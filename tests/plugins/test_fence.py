"""The backfill fence's rules, each case named by what it protects."""

from __future__ import annotations

import datetime as dt

import pytest

from helmsman.fence import decide

NOV_1 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
NOV_10 = dt.datetime(2026, 11, 10, tzinfo=dt.UTC)
NOV_20 = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("case", "kwargs", "deploy", "reason"),
    [
        ("scheduled run, promoted", {}, True, "evaluation promoted"),
        ("scheduled run, rejected", {"evaluation": "reject"}, False, "evaluation rejected"),
        ("first model ever", {"champion_interval_end": None}, True, "evaluation promoted"),
        ("backfill never deploys", {"run_type": "backfill"}, False, "backfill run"),
        (
            "backfill beats force",
            {"run_type": "backfill", "deploy": "force"},
            False,
            "backfill run",
        ),
        (
            "older interval than the champion",
            {"interval_end": NOV_1},
            False,
            "before the champion's",
        ),
        (
            "older interval beats force",
            {"interval_end": NOV_1, "deploy": "force"},
            False,
            "before the champion's",
        ),
        ("deploy=never", {"deploy": "never"}, False, "deploy=never"),
        (
            "deploy=force overrides a rejection",
            {"deploy": "force", "evaluation": "reject"},
            True,
            "health gate still applies",
        ),
        ("dry run", {"dry_run": True, "deploy": "force"}, False, "dry run"),
    ],
)
def test_fence(case: str, kwargs: dict, deploy: bool, reason: str) -> None:
    arguments = {
        "run_type": "scheduled",
        "interval_end": NOV_20,
        "champion_interval_end": NOV_10,
        "evaluation": "promote",
        "deploy": "auto",
        "dry_run": False,
        **kwargs,
    }
    decision = decide(**arguments)
    assert decision.deploy is deploy, case
    assert reason in decision.reason, case


def test_same_interval_as_the_champion_may_deploy() -> None:
    """A re-run of the champion's own interval (a retrained fix) is not 'older'."""
    decision = decide(
        run_type="manual", interval_end=NOV_20, champion_interval_end=NOV_20, evaluation="promote"
    )
    assert decision.deploy is True


@pytest.mark.parametrize(("field", "value"), [("deploy", "always"), ("evaluation", "maybe")])
def test_bad_modes_are_refused(field: str, value: str) -> None:
    arguments = {
        "run_type": "manual",
        "interval_end": NOV_20,
        "champion_interval_end": None,
        "evaluation": "promote",
        "deploy": "auto",
        field: value,
    }
    with pytest.raises(ValueError, match=field):
        decide(**arguments)
