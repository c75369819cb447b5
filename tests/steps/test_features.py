"""The featurizer: one matrix for the same rows, whichever path builds it."""

from __future__ import annotations

from typing import Any

import numpy as np

from helmsman_steps import features


def test_a_requests_few_rows_get_the_matrix_a_partition_would() -> None:
    """A few rows are built from Python lists (serving's path), more column by column (ETL's
    and training's); for the same rows both give the same matrix, bit for bit, with missing
    numbers (NaN) and missing or unknown categories (all zeros)."""
    rng = np.random.default_rng(5)
    n = features.SMALL_BATCH * 4
    columns: dict[str, Any] = {
        "age": rng.uniform(18, 90, n), "tenure_months": rng.integers(0, 72, n).astype(float),
        "monthly_charges": rng.uniform(10, 150, n), "total_charges": rng.uniform(0, 9000, n),
        "support_calls": rng.integers(0, 10, n).astype(float),
        "plan": rng.choice(["basic", "standard", "premium", "gold"], n).astype(object),
        "region": rng.choice(["north", "south", "east", "west"], n).astype(object),
    }  # fmt: skip
    columns["plan"][::5] = None
    columns["region"][::7] = "mars"
    columns["age"] = columns["age"].astype(object)
    columns["age"][::3] = None
    featurizer = features.Featurizer.churn()
    whole = featurizer.to_matrix(columns)
    assert len(whole) > features.SMALL_BATCH  # the columnar path
    for start in range(0, n, 3):
        few = {k: list(v[start : start + 3]) for k, v in columns.items()}  # as a request sends
        np.testing.assert_array_equal(featurizer.to_matrix(few), whole[start : start + 3])
    assert np.isnan(whole[0, 0])  # a missing number
    assert whole[0, -8:-4].sum() == 0  # a missing plan: no plan column set
