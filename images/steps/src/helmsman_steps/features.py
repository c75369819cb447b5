"""Feature derivation shared by ETL (whole partitions) and serving (one request).

One function on plain column arrays serves both, so what the model saw in training is what it
sees in production (no training/serving skew). numpy only: the serving image has no pandas.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from helmsman_steps.schema import CATEGORIES, NUMERIC_INPUTS

Columns = Mapping[str, npt.ArrayLike]


def derive(columns: Columns) -> dict[str, npt.NDArray[np.float64]]:
    """The derived numeric features, from validated raw columns."""
    tenure = np.asarray(columns["tenure_months"], dtype=np.float64)
    monthly = np.asarray(columns["monthly_charges"], dtype=np.float64)
    total = np.asarray(columns["total_charges"], dtype=np.float64)
    return {
        "charges_per_tenure": total / (tenure + 1.0),
        "log_monthly_charges": np.log1p(monthly),
        "is_new_customer": (tenure < 6).astype(np.float64),
    }


def input_names() -> list[str]:
    """Names of the model's input columns, in order."""
    names = list(NUMERIC_INPUTS)
    for column, vocabulary in CATEGORIES.items():
        names += [f"{column}={value}" for value in vocabulary]
    return names


def to_matrix(columns: Columns) -> npt.NDArray[np.float32]:
    """The model's input matrix (rows x input_names()) from raw columns.

    Derived columns are recomputed unless present (ETL stores them; a request does not send
    them). Categories are one-hot in the schema's fixed vocabulary order.
    """
    derived = {k: v for k, v in derive(columns).items() if k not in columns}
    merged = {**columns, **derived}
    parts = [np.asarray(merged[name], dtype=np.float64) for name in NUMERIC_INPUTS]
    for column, vocabulary in CATEGORIES.items():
        values = np.asarray(columns[column])
        parts += [(values == value).astype(np.float64) for value in vocabulary]
    return np.column_stack(parts).astype(np.float32)
