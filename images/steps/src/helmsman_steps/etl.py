"""ETL: raw records of a data interval -> validated, featurized dataset partitions.

For each day of [start, end): read the raw rows from the source, validate them against the
declared schema, quarantine the rows that fail (with their reasons), derive features, and write
the day's partition atomically. Every day of the interval is validated before any is written,
so a day over the bad-row limit fails the step with nothing changed. Re-running an interval
rewrites each day whole with the same content (the source is deterministic per day).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from helmsman_steps import logs
from helmsman_steps.exitcodes import BadInputError
from helmsman_steps.features import Featurizer
from helmsman_steps.schema import DATE_COLUMN, ID_COLUMN, raw_schema
from helmsman_steps.sources import RawSource
from helmsman_steps.store import DatasetStore, content_hash, days_in

if TYPE_CHECKING:
    import pandas as pd

    from helmsman_steps.spec import RawSchema

log = logs.get(__name__)


@dataclass(frozen=True)
class DayResult:
    day: dt.date
    features: pd.DataFrame
    quarantine: pd.DataFrame
    report: dict[str, Any]


def validate(
    raw: pd.DataFrame, declared: RawSchema | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw rows into (valid rows, coerced to the schema) and (bad rows + reasons).

    The schema is the model's declared one (``model.yaml``) when given, else churn's."""
    import pandas as pd
    import pandera.errors

    schema = raw_schema(declared)
    missing = [c for c in schema.columns if c not in raw.columns]
    if missing:
        raise BadInputError(f"raw data lacks required columns: {', '.join(missing)}")
    raw = raw.reset_index(drop=True)
    try:
        return schema.validate(raw, lazy=True), raw.iloc[0:0].assign(reasons=[])
    except pandera.errors.SchemaErrors as errors:
        cases = errors.failure_cases
    row_cases = cases[cases["index"].notna()]
    if len(row_cases) < len(cases):
        whole = cases[cases["index"].isna()][["column", "check"]].drop_duplicates()
        raise BadInputError(f"raw data fails schema checks as a whole: {whole.to_dict('records')}")
    reasons = (
        row_cases.assign(
            index=row_cases["index"].astype(int),
            reason=row_cases["column"].astype(str) + ": " + row_cases["check"].astype(str),
        )
        .groupby("index")["reason"]
        .agg(lambda r: "; ".join(sorted(set(r))))
    )
    bad = raw.index.isin(reasons.index)
    quarantine = raw[bad].astype(str).assign(reasons=reasons.reindex(raw.index[bad]).to_numpy())
    valid = schema.validate(raw[~bad], lazy=False)
    return valid.reset_index(drop=True), pd.DataFrame(quarantine).reset_index(drop=True)


def build_day(
    source: RawSource,
    day: dt.date,
    max_bad_share: float,
    declared: RawSchema | None = None,
    featurizer: Featurizer | None = None,
) -> DayResult:
    """One day: validate, quarantine, derive the model's features (churn's without a spec)."""
    raw = source.read(day)
    valid, quarantine = validate(raw, declared)
    bad_share = len(quarantine) / max(len(raw), 1)
    if bad_share > max_bad_share:
        top = quarantine["reasons"].value_counts().head(3).to_dict() if len(quarantine) else {}
        raise BadInputError(
            f"{day}: {bad_share:.2%} of {len(raw)} raw rows fail validation, over the "
            f"--max-bad-share limit of {max_bad_share:.2%}; most common reasons: {top}"
        )
    order = [declared.timestamp, declared.id] if declared else [DATE_COLUMN, ID_COLUMN]
    derived = (featurizer or Featurizer.churn()).derive(valid)
    features = valid.assign(**derived).sort_values(order)
    features = features.reset_index(drop=True)
    report = {
        "day": day.isoformat(),
        "raw_rows": len(raw),
        "valid_rows": len(features),
        "quarantined_rows": len(quarantine),
        "bad_row_share": round(bad_share, 6),
        "reasons": quarantine["reasons"].value_counts().to_dict() if len(quarantine) else {},
        "content_hash": content_hash(features),
    }
    return DayResult(day, features, quarantine, report)


def run(
    source: RawSource,
    store: DatasetStore,
    start: dt.date,
    end: dt.date,
    max_bad_share: float,
    declared: RawSchema | None = None,
    featurizer: Featurizer | None = None,
) -> list[dict[str, Any]]:
    """Build and write every day of [start, end); return the days' reports."""
    results = []
    for day in days_in(start, end):
        result = build_day(source, day, max_bad_share, declared, featurizer)
        log.info("validated day", **{k: v for k, v in result.report.items() if k != "reasons"})
        results.append(result)
    for result in results:
        store.write_day(result.day, result.features, result.quarantine, result.report)
        log.info(
            "wrote partition", day=result.day.isoformat(), path=store.features_path(result.day)
        )
    return [r.report for r in results]
