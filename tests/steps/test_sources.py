"""Data tests of the synthetic raw source: deterministic per day, drifting, a little dirty."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from helmsman_steps import sources
from helmsman_steps.exitcodes import BadInputError

DAY = dt.date(2026, 5, 4)


def test_a_day_is_reproducible_and_days_differ() -> None:
    source = sources.SyntheticChurn(rows_per_day=2000)
    pd.testing.assert_frame_equal(source.read(DAY), source.read(DAY))
    later = source.read(DAY + dt.timedelta(days=1))
    assert not source.read(DAY)["monthly_charges"].equals(later["monthly_charges"])


def test_seed_changes_the_data() -> None:
    a = sources.SyntheticChurn(rows_per_day=500, seed=1).read(DAY)
    b = sources.SyntheticChurn(rows_per_day=500, seed=2).read(DAY)
    assert not a["age"].equals(b["age"])


def test_dirty_share_is_injected() -> None:
    frame = sources.SyntheticChurn(rows_per_day=20_000, dirty_share=0.02).read(DAY)
    bad = (
        frame["age"].isna()
        | (frame["monthly_charges"] < 0)
        | ~frame["plan"].isin(["basic", "standard", "premium"])
        | (frame["tenure_months"] > 240)
        | frame.duplicated(["customer_id", "event_date"])
    )
    assert 0.015 <= bad.mean() <= 0.025


def test_drift_over_a_year() -> None:
    source = sources.SyntheticChurn(rows_per_day=20_000, dirty_share=0.0)
    early = source.read(dt.date(2024, 2, 1))
    late = source.read(dt.date(2026, 2, 1))
    assert late["monthly_charges"].median() > early["monthly_charges"].median() * 1.1
    assert late["support_calls"].mean() > early["support_calls"].mean() + 0.4


def test_an_injected_shift_moves_charges_and_calls_from_its_day_on() -> None:
    uri = f"synthetic://churn?rows_per_day=20000&dirty_share=0&shift_from={DAY.isoformat()}"
    source, plain = sources.from_uri(uri), sources.SyntheticChurn(20_000, dirty_share=0.0)
    before = DAY - dt.timedelta(days=1)
    pd.testing.assert_frame_equal(source.read(before), plain.read(before))
    moved, still = source.read(DAY), plain.read(DAY)
    ratio = moved["monthly_charges"].median() / still["monthly_charges"].median()
    assert 1.55 < ratio < 1.65
    assert moved["support_calls"].mean() - still["support_calls"].mean() == pytest.approx(2, 0.01)
    pd.testing.assert_series_equal(moved["total_charges"], still["total_charges"])
    assert moved["churned"].mean() > still["churned"].mean() + 0.1  # the label follows


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("synthetic://other", "unknown synthetic source 'other'"),
        ("synthetic://churn?rows=5", "unknown synthetic source options: rows"),
        ("synthetic://churn?rows_per_day=many", "bad synthetic source option"),
        ("synthetic://churn?shift_from=tuesday", "bad synthetic source option"),
        ("", "empty source URI"),
    ],
)
def test_bad_source_uris_say_what_to_fix(uri: str, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        sources.from_uri(uri)


def test_daily_files_read_csv_and_report_missing_days(tmp_path: pytest.TempPathFactory) -> None:
    frame = sources.SyntheticChurn(rows_per_day=50).read(DAY)
    frame.to_csv(f"{tmp_path}/{DAY.isoformat()}.csv", index=False)
    source = sources.from_uri(str(tmp_path))
    assert len(source.read(DAY)) == len(frame)
    with pytest.raises(BadInputError, match="no raw file for 2026-05-05"):
        source.read(DAY + dt.timedelta(days=1))


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("s3://key:secret@bucket/raw?X-Amz-Signature=abc", "s3://bucket/raw"),
        ("https://user:pw@host:8443/raw/?token=t", "https://host:8443/raw/"),
        ("file:///data/raw", "file:///data/raw"),
        ("synthetic://churn?rows_per_day=10", "synthetic://churn?rows_per_day=10"),
        ("/data/raw", "/data/raw"),
    ],
)
def test_a_source_uri_is_shown_without_credentials_or_signatures(uri: str, shown: str) -> None:
    assert sources.redact(uri) == shown
