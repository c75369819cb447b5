"""The raw record schema and the model's features, declared once for every stage.

A model's schema is declared in its ``model.yaml`` (``helmsman_steps.spec``) and turned into a
pandera schema here. The constants are churn's: what versions registered before model.yaml
were trained with, and the defaults of a step run without a spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandera.pandas as pa

    from helmsman_steps.spec import RawSchema

ID_COLUMN = "customer_id"
DATE_COLUMN = "event_date"
LABEL = "churned"

# Numeric raw columns with the range a valid row must be in (inclusive).
NUMERIC_RANGES: dict[str, tuple[float, float]] = {
    "age": (18, 100),
    "tenure_months": (0, 240),
    "monthly_charges": (0.01, 1_000.0),
    "total_charges": (0.0, 250_000.0),
    "support_calls": (0, 50),
}
# Categorical raw columns and their closed vocabularies; one-hot encoded in this order.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "plan": ("basic", "standard", "premium"),
    "region": ("north", "south", "east", "west"),
}
RAW_FEATURES = (*NUMERIC_RANGES, *CATEGORIES)
# Columns features.derive adds to the raw ones.
DERIVED = ("charges_per_tenure", "log_monthly_charges", "is_new_customer")
NUMERIC_INPUTS = (*NUMERIC_RANGES, *DERIVED)


def raw_schema(declared: RawSchema | None = None) -> pa.DataFrameSchema:
    """The pandera schema a raw row must satisfy to enter the dataset: derived from a model's
    declared schema (``schema`` in model.yaml), or churn's constants above without one."""
    import pandera.pandas as pa

    if declared is not None:
        return _from_spec(declared)

    columns: dict[str, pa.Column] = {
        ID_COLUMN: pa.Column(str, pa.Check.str_length(min_value=1), nullable=False),
        DATE_COLUMN: pa.Column("datetime64[ns]", nullable=False),
        LABEL: pa.Column(int, pa.Check.isin([0, 1]), nullable=False),
    }
    for name, (low, high) in NUMERIC_RANGES.items():
        columns[name] = pa.Column(float, pa.Check.in_range(low, high), nullable=False)
    for name, vocabulary in CATEGORIES.items():
        columns[name] = pa.Column(str, pa.Check.isin(list(vocabulary)), nullable=False)
    return pa.DataFrameSchema(
        columns,
        unique=[ID_COLUMN, DATE_COLUMN],
        # A repeated record is quarantined; its first occurrence is kept.
        report_duplicates="exclude_first",
        coerce=True,
        strict="filter",
        name="churn_raw",
    )


def _from_spec(declared: RawSchema) -> pa.DataFrameSchema:
    import pandera.pandas as pa

    label = declared.label
    columns: dict[str, pa.Column] = {
        declared.id: pa.Column(str, pa.Check.str_length(min_value=1), nullable=False),
        declared.timestamp: pa.Column("datetime64[ns]", nullable=False),
        label.name: (
            pa.Column(type(label.classes[0]), pa.Check.isin(list(label.classes)), nullable=False)
            if label.classes
            else pa.Column(
                float, [pa.Check.in_range(*label.range)] if label.range else [], nullable=False
            )
        ),
    }
    for name, column in declared.columns.items():
        if column.type == "category":
            check = pa.Check.isin(list(column.vocabulary or ()))
            columns[name] = pa.Column(str, check, nullable=column.nullable)
        else:
            # Whole bounds as integers: the quarantine reason reads in_range(0, 240).
            bounds = [int(b) if float(b).is_integer() else b for b in column.range or ()]
            checks = [pa.Check.in_range(*bounds)] if bounds else []
            # pandas' nullable integer: a missing int stays an int column (a request's int).
            kind = float if column.type == "float" else "Int64"
            columns[name] = pa.Column(kind, checks, nullable=column.nullable)
    return pa.DataFrameSchema(
        columns,
        unique=[declared.id, declared.timestamp],
        report_duplicates="exclude_first",  # a repeated record is quarantined, the first kept
        coerce=True,
        strict="filter",
        name="raw",
    )
