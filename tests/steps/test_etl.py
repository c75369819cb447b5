"""ETL: validation and quarantine, atomic and idempotent partitions, exit codes."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from helmsman_steps import etl, sources
from helmsman_steps.exitcodes import BadInputError
from helmsman_steps.schema import CATEGORIES, ID_COLUMN, LABEL, NUMERIC_RANGES
from helmsman_steps.store import DatasetStore, content_hash
from tests.mlflow_fixtures import STEPS_SRC

DAY = dt.date(2026, 4, 10)
NEXT = DAY + dt.timedelta(days=1)
SOURCE = sources.SyntheticChurn(rows_per_day=4000)


def build(root: Path, source: sources.RawSource = SOURCE, end: dt.date = NEXT) -> list[Any]:
    return etl.run(source, DatasetStore(str(root)), DAY, end, max_bad_share=0.05)


def test_rerunning_an_interval_gives_an_identical_partition(tmp_path: Path) -> None:
    store = DatasetStore(str(tmp_path))
    first = build(tmp_path)
    before = store.read_features([DAY])
    second = build(tmp_path)
    pd.testing.assert_frame_equal(before, store.read_features([DAY]))
    assert first == second
    assert first[0]["content_hash"] == content_hash(before)
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == ["date=2026-04-10.parquet"]


class DiskFullError(OSError):
    pass


def test_a_crash_mid_write_leaves_the_old_partition_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DatasetStore(str(tmp_path))
    build(tmp_path)
    before = store.read_features([DAY])

    def half_then_fail(self: pd.DataFrame, handle: Any, **kwargs: Any) -> None:
        handle.write(b"PAR1" + b"\0" * 1000)  # half a file reaches the disk, then it fails
        raise DiskFullError("No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_then_fail)
    with pytest.raises(DiskFullError):
        build(tmp_path, sources.SyntheticChurn(rows_per_day=4000, seed=99))
    monkeypatch.undo()
    pd.testing.assert_frame_equal(before, store.read_features([DAY]))
    leftovers = [p.name for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


def test_bad_rows_are_quarantined_with_reasons(tmp_path: Path) -> None:
    report = build(tmp_path)[0]
    quarantine = pd.read_parquet(tmp_path / "quarantine" / "date=2026-04-10.parquet")
    assert report["quarantined_rows"] == len(quarantine) > 0
    assert report["raw_rows"] == report["valid_rows"] + report["quarantined_rows"]
    reasons = " ".join(quarantine["reasons"])
    for expected in (
        "age: not_nullable",
        "monthly_charges: in_range",
        "plan: isin",
        "tenure_months: in_range",
        "multiple_fields_uniqueness",
    ):
        assert expected in reasons
    assert (quarantine["plan"] == "platinum").any()


def test_over_the_bad_row_limit_fails_and_writes_nothing(tmp_path: Path) -> None:
    class DirtySecondDay:
        def read(self, day: dt.date) -> pd.DataFrame:
            share = 0.2 if day == NEXT else 0.0
            return sources.SyntheticChurn(rows_per_day=1000, dirty_share=share).read(day)

    with pytest.raises(BadInputError, match=r"2026-04-11: .* over the --max-bad-share limit"):
        build(tmp_path, DirtySecondDay(), end=NEXT + dt.timedelta(days=1))
    assert not (tmp_path / "features").exists()


def test_missing_columns_are_bad_input(tmp_path: Path) -> None:
    class NoRegion:
        def read(self, day: dt.date) -> pd.DataFrame:
            return SOURCE.read(day).drop(columns=["region"])

    with pytest.raises(BadInputError, match="lacks required columns: region"):
        build(tmp_path, NoRegion())


def test_written_partition_meets_the_schema_expectations(tmp_path: Path) -> None:
    """Data test: what training reads is clean, typed, unique and plausibly balanced."""
    build(tmp_path)
    frame = DatasetStore(str(tmp_path)).read_features([DAY])
    assert not frame.isna().any().any()
    assert frame[ID_COLUMN].is_unique
    for name, (low, high) in NUMERIC_RANGES.items():
        assert frame[name].between(low, high).all(), name
    for name, vocabulary in CATEGORIES.items():
        assert set(frame[name]) <= set(vocabulary), name
    assert 0.1 < frame[LABEL].mean() < 0.5
    assert {"charges_per_tenure", "log_monthly_charges", "is_new_customer"} <= set(frame.columns)


def run_etl_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``helmsman-step etl`` as a pod runs it, with a local MLflow store under tmp_path."""
    return subprocess.run(
        [sys.executable, "-m", "helmsman_steps", "etl", *args],
        env={
            **os.environ,
            "PYTHONPATH": str(STEPS_SRC),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "2026-04-10", "--end", "2026-04-10"], "empty data interval"),
        (
            ["--start", "2026-04-10", "--end", "2026-04-11", "--source-uri", "synthetic://x"],
            "unknown synthetic source",
        ),
        (["--start", "not-a-date", "--end", "2026-04-11"], "Invalid value for '--start'"),
        (
            ["--start", "2026-04-10", "--end", "2026-04-11", "--max-bad-share", "2"],
            "Invalid value for '--max-bad-share'",
        ),
    ],
)
def test_cli_bad_input_exits_2(args: list[str], message: str, tmp_path: Path) -> None:
    proc = run_etl_cli(tmp_path, "--dataset-uri", str(tmp_path), *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_cli_accepts_airflow_rendered_timestamps(tmp_path: Path) -> None:
    """{{ data_interval_start }} renders as ISO 8601 with an offset; the CLI takes it as is."""
    proc = run_etl_cli(
        tmp_path,
        "--dataset-uri",
        str(tmp_path / "ds"),
        "--start",
        "2026-04-10T00:00:00+00:00",
        "--end",
        "2026-04-11T00:00:00+00:00",
        "--source-uri",
        "synthetic://churn?rows_per_day=200",
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ds" / "features" / "date=2026-04-10.parquet").exists()


def test_the_schema_derived_from_the_model_spec_splits_rows_as_the_built_in_one(
    tmp_path: Path,
) -> None:
    """models/churn/model.yaml declares churn's schema; ETL validating against the schema
    derived from it keeps and quarantines exactly the rows the built-in schema does."""
    from helmsman_steps import spec

    declared = spec.load(Path(__file__).resolve().parents[2] / "models" / "churn").raw_schema
    raw = SOURCE.read(DAY)
    valid, quarantine = etl.validate(raw)
    from_spec, quarantine_from_spec = etl.validate(raw, declared)
    assert len(quarantine) > 0
    pd.testing.assert_frame_equal(from_spec[valid.columns], valid, check_dtype=False)

    def why(frame: pd.DataFrame) -> list[tuple[str, str]]:
        """Each quarantined row and its failed checks (bounds as written: 1000 or 1000.0)."""
        checks = frame["reasons"].str.replace(r"\([^)]*\)", "", regex=True)
        return sorted(zip(frame[ID_COLUMN], checks, strict=True))

    assert why(quarantine_from_spec) == why(quarantine)


def test_a_write_leaves_another_writers_fresh_temporary_file_alone(tmp_path: Path) -> None:
    """Backfill runs write overlapping windows at once: one writer must not delete the file
    another is still writing; a crashed writer's leftover (over an hour old) is cleaned up."""
    import os
    import time

    build(tmp_path)
    folder = tmp_path / "features"
    working = folder / f".date={DAY}.parquet.tmp-another-writer"
    crashed = folder / f".date={DAY}.parquet.tmp-crashed-yesterday"
    working.write_bytes(b"PAR1")
    crashed.write_bytes(b"PAR1")
    day_ago = time.time() - 86_400
    os.utime(crashed, (day_ago, day_ago))
    build(tmp_path)
    assert working.exists()
    assert not crashed.exists()
