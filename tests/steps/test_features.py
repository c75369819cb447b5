"""The featurizer: one matrix for the same rows, whichever path builds it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from helmsman_steps import features


def test_a_requests_few_rows_get_the_matrix_a_partition_would() -> None:
    """A few rows, as a request's lists, set their categories value by value (serving's path);
    more, as a partition's arrays, by index arrays (ETL's and training's). For the same rows
    both give the same matrix, bit for bit, with missing numbers (NaN) and missing or unknown
    categories (all zeros)."""
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


def test_columns_of_another_length_or_holding_sequences_are_an_error_not_nan() -> None:
    """A shape problem is never read as missing values: a column shorter or longer than the
    others, or a cell holding a list, is an error that names it."""
    featurizer = features.Featurizer.churn()
    row: dict[str, Any] = {
        "age": [30.0], "tenure_months": [3.0], "monthly_charges": [20.0],
        "total_charges": [60.0], "support_calls": [1.0], "plan": ["basic"], "region": ["north"],
    }  # fmt: skip
    assert featurizer.to_matrix(row).shape == (1, len(features.input_names()))
    for name, values, message in [
        ("age", [30.0, 31.0], "numeric columns hold"),
        ("age", [None, 31.0], "numeric columns hold"),
        ("support_calls", [[1.0]], "list"),
        ("region", ["north", "south"], "'region' has 2 values"),
        ("plan", [], "'plan' has 0 values"),
    ]:
        with pytest.raises(ValueError, match=message):
            featurizer.to_matrix(row | {name: values})
    # every numeric cell a one-number list: numpy converts it in one call, to the wrong shape
    nested = row | {n: [[row[n][0]]] for n in features.Featurizer.churn().numeric}
    with pytest.raises(ValueError, match="must hold 1 numbers each"):
        featurizer.to_matrix(nested)


def test_a_category_cell_that_is_not_a_value_is_unknown_in_a_batch_as_in_a_request() -> None:
    """A cell holding a list (unhashable) in a category column sets none of its one-hot
    columns, in a batch (the lookups in C fall back to Python) as in a few rows."""
    featurizer = features.Featurizer.churn()
    n = features.SMALL_BATCH + 4
    row: dict[str, Any] = {
        "age": 30.0, "tenure_months": 3.0, "monthly_charges": 20.0, "total_charges": 60.0,
        "support_calls": 1.0, "plan": "basic", "region": "north",
    }  # fmt: skip
    columns = {k: [v] * n for k, v in row.items()}
    columns["plan"][1] = ["basic"]
    batch = featurizer.to_matrix(columns)
    plan = [i for i, name in enumerate(features.input_names()) if name.startswith("plan=")]
    assert batch[1, plan].sum() == 0
    assert batch[0, plan].sum() == 1
    few = featurizer.to_matrix({k: v[:3] for k, v in columns.items()})
    np.testing.assert_array_equal(few, batch[:3])
