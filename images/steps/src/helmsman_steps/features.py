"""Feature derivation shared by ETL (whole partitions) and serving (one request).

One function on plain column arrays serves both, so what the model saw in training is what it
sees in production (no training/serving skew). numpy only: the serving image has no pandas.

A model's inputs follow from its declared schema (``schema.columns`` in model.yaml): every
numeric column as it is, then the columns its feature function (``features``) derives, then
each category column one-hot in its vocabulary's order. :class:`Featurizer` builds that matrix
for any model; the module-level functions are churn's (``helmsman_steps.features:derive``), and
what versions registered before model.yaml were trained with.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from helmsman_steps.schema import CATEGORIES, NUMERIC_INPUTS, NUMERIC_RANGES

Columns = Mapping[str, npt.ArrayLike]
# Up to this many rows (a served request, mostly one) the one-hot columns are set value by
# value: an index array per category column costs more than the model there.
SMALL_BATCH = 16
Derive = Callable[[Columns], Mapping[str, npt.ArrayLike]]


def derive(columns: Columns) -> dict[str, npt.NDArray[np.float64]]:
    """Churn's derived numeric features, from validated raw columns."""
    tenure = np.asarray(columns["tenure_months"], dtype=np.float64)
    monthly = np.asarray(columns["monthly_charges"], dtype=np.float64)
    total = np.asarray(columns["total_charges"], dtype=np.float64)
    return {
        "charges_per_tenure": total / (tenure + 1.0),
        "log_monthly_charges": np.log1p(monthly),
        "is_new_customer": (tenure < 6).astype(np.float64),
    }


def load_function(entrypoint: str, model: str = "churn") -> Derive:
    """A model's ``features``: ``module:function``, or ``file.py:function`` in its folder."""
    from helmsman_steps import usercode

    return usercode.load(model, entrypoint, "features")


@dataclass(frozen=True)
class Featurizer:
    """Raw columns -> the model's input matrix, for one model's declared schema."""

    numeric: tuple[str, ...]  # raw numeric columns, in declared order
    categories: Mapping[str, tuple[str, ...]]
    function: Derive | None = None
    derived: tuple[str, ...] = ()

    @classmethod
    def from_columns(
        cls,
        columns: Mapping[str, Mapping[str, Any]],
        entrypoint: str | None = None,
        model: str = "churn",
    ) -> Featurizer:
        """From ``schema.columns`` as plain data (the spec's JSON) and ``features``."""
        numeric = tuple(n for n, c in columns.items() if c["type"] != "category")
        categories = {n: tuple(c["vocabulary"]) for n, c in columns.items()
                      if c["type"] == "category"}  # fmt: skip
        if entrypoint is None:
            return cls(numeric, categories)
        function = load_function(entrypoint, model)
        sample = _sample(columns)
        derived = tuple(k for k in function(sample) if k not in columns)
        return cls(numeric, categories, function, derived)

    @classmethod
    def churn(cls) -> Featurizer:
        """Churn's inputs: what versions registered without a spec were trained on."""
        return cls(tuple(NUMERIC_RANGES), dict(CATEGORIES), derive,
                   tuple(n for n in NUMERIC_INPUTS if n not in NUMERIC_RANGES))  # fmt: skip

    def derive(self, columns: Columns) -> dict[str, npt.ArrayLike]:
        """The derived columns (none without a feature function)."""
        if self.function is None:
            return {}
        return {k: v for k, v in self.function(columns).items() if k in self.derived}

    def input_names(self) -> list[str]:
        names = [*self.numeric, *self.derived]
        for column, vocabulary in self.categories.items():
            names += [f"{column}={value}" for value in vocabulary]
        return names

    @cached_property
    def _positions(self) -> dict[str, dict[str, int]]:
        """Each category column's value -> its one-hot column in the matrix."""
        start, positions = len(self.numeric) + len(self.derived), {}
        for column, vocabulary in self.categories.items():
            positions[column] = {v: start + i for i, v in enumerate(vocabulary)}
            start += len(vocabulary)
        return positions

    def to_matrix(self, columns: Columns) -> npt.NDArray[np.float32]:
        """The input matrix (rows x input_names()). Derived columns are recomputed unless
        present (ETL stores them; a request does not send them); a missing value is NaN, a
        missing or unknown category all zeros.

        Every number goes through float64 and is rounded to float32 once, whatever the
        columns' containers (a request's lists, ETL's arrays). The numeric columns are
        converted in one numpy call: a served request is one row, where an array per column
        costs more than the model itself. A column of another length than the others, or a
        cell holding a sequence (list, tuple, dict, array), is a ``ValueError``."""
        merged: dict[str, Any] = dict(columns)
        if any(n not in columns for n in self.derived):
            merged |= self.derive(columns)
        numeric = (*self.numeric, *self.derived)
        rows = len(merged[numeric[0] if numeric else next(iter(self.categories))])
        width = len(numeric) + sum(len(v) for v in self.categories.values())
        matrix = np.zeros((rows, width), dtype=np.float32)
        if numeric:
            matrix[:, : len(numeric)] = _numbers([merged[name] for name in numeric], rows).T
        for column, positions in self._positions.items():
            listed = _listed(merged[column])
            if len(listed) != rows:
                raise ValueError(f"column {column!r} has {len(listed)} values, not {rows}")
            if rows <= SMALL_BATCH:  # a few rows: no arrays
                for i, value in enumerate(listed):
                    if isinstance(value, str) and value in positions:
                        matrix[i, positions[value]] = 1.0
                continue
            try:  # the lookups in C: a third of the time of a loop in Python
                hot = np.fromiter(map(positions.get, listed, itertools.repeat(-1)), np.int64, rows)
            except TypeError:  # an unhashable value (a list): not a category, like any other
                hot = np.array([positions.get(v, -1) if isinstance(v, str) else -1
                                for v in listed], dtype=np.int64)  # fmt: skip
            known = np.flatnonzero(hot >= 0)
            matrix[known, hot[known]] = 1.0
        return matrix


def _numbers(columns: list[Any], rows: int) -> npt.NDArray[np.float64]:
    """Numeric columns (lists or arrays of ``rows`` values each) as float64, a column a row;
    None, pandas' NA or a string that is not a number is NaN. Columns of another length, or
    holding sequences, are an error, never NaN."""
    try:  # numpy makes None NaN itself
        matrix = np.array(columns, dtype=np.float64)
    except (TypeError, ValueError):  # pandas.NA, a string, ragged columns: value by value
        listed = [_listed(c) for c in columns]
        if any(len(c) != rows for c in listed):
            lengths = sorted({len(c) for c in listed})
            raise ValueError(f"numeric columns hold {lengths} values, not {rows} each") from None
        matrix = np.array([[_number(v) for v in c] for c in listed], dtype=np.float64)
    if matrix.shape != (len(columns), rows):
        raise ValueError(f"numeric columns must hold {rows} numbers each, not {matrix.shape}")
    return matrix


def _listed(values: Any) -> list[Any]:
    """A column's values as a Python list (a request's list as it is)."""
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _number(value: Any) -> float:
    if isinstance(value, (list, tuple, dict, np.ndarray)):
        raise ValueError(f"a numeric column holds a {type(value).__name__}, not a number")
    try:
        return float(value)
    except (TypeError, ValueError):  # None, pandas.NA
        return float("nan")


def _sample(columns: Mapping[str, Mapping[str, Any]]) -> dict[str, npt.NDArray[Any]]:
    """One valid row (each range's low end, each vocabulary's first value) to learn which
    columns a feature function derives."""
    row: dict[str, npt.NDArray[Any]] = {}
    for name, column in columns.items():
        if column["type"] == "category":
            row[name] = np.asarray([column["vocabulary"][0]], dtype=object)
        else:
            low = (column.get("range") or (0.0, 0.0))[0]
            row[name] = np.asarray([low], dtype=np.float64)
    return row


_CHURN = Featurizer.churn()


def input_names() -> list[str]:
    """Churn's input columns, in order."""
    return _CHURN.input_names()


def to_matrix(columns: Columns) -> npt.NDArray[np.float32]:
    """Churn's input matrix from raw columns."""
    return _CHURN.to_matrix(columns)
