"""The model contract (models/<name>/model.yaml): every field's bad value gets a message that
names the file, the field and what it allows."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from helmsman_steps import schema, spec
from helmsman_steps.spec import ModelSpecError

REPO = Path(__file__).resolve().parents[2]
CHURN = REPO / "models" / "churn"

REGRESSION: dict[str, Any] = {
    "name": "prices",
    "task": "regression",
    "source": "file:///data/prices",
    "schema": {
        "id": "house_id",
        "timestamp": "sold_on",
        "label": {"name": "price", "range": [0, 5_000_000]},
        "columns": {
            "rooms": {"type": "int", "range": [1, 20]},
            "area": {"type": "float", "range": [5, 10000], "nullable": True},
            "district": {"type": "category", "vocabulary": ["a", "b"]},
        },
    },
    "trainer": {"kind": "lightgbm", "params": {"num_leaves": 31}},
    "evaluation": {"metric": "rmse", "floor": 1.0},
}


def write(root: Path, data: dict[str, Any] | str, folder: str | None = None) -> Path:
    name = folder or (data["name"] if isinstance(data, dict) else "broken")
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else yaml.safe_dump(data)
    (path / spec.SPEC_FILE).write_text(text)
    return path


def with_value(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    result = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = result
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return result


DELETE = object()

# (field, bad value, what the message must say besides the file and the field)
BAD = [
    ("name", "Prices_1", "should match pattern"),
    ("task", "ranking", "'binary', 'multiclass' or 'regression'"),
    ("source", "/data/prices", "should match pattern"),
    ("schema.id", "house id", "should match pattern"),
    ("schema.timestamp", DELETE, "required field is missing"),
    (
        "schema.label",
        {"name": "price", "classes": [0, 1], "range": [0, 1]},
        "a label has classes (classification) or a range (regression)",
    ),
    ("schema.label", {"name": "price", "classes": [0, 1]}, "a regression label has a range"),
    ("schema.label", {"name": "price"}, "a regression label has a range [low, high]"),
    ("schema.label.range", [5, 5], "range low 5.0 must be below high 5.0"),
    ("evaluation.holdout", "week", "'interval' or 'window'"),
    ("schema.columns", {}, "at least 1 item"),
    ("schema.columns.rooms", {"type": "decimal"}, "'float', 'int' or 'category'"),
    ("schema.columns.rooms", {"type": "int", "range": [20, 1]}, "range low 20.0 is above high"),
    ("schema.columns.district", {"type": "category"}, "needs a vocabulary"),
    ("schema.columns.district", {"type": "category", "vocabulary": ["a", "a"]}, "repeats"),
    ("schema.columns.area", {"type": "float", "vocabulary": ["x"]}, "not a vocabulary"),
    ("schema.columns.house_id", {"type": "float"}, "already the id column"),
    ("schema.columns.rooms.nullable", "sometimes", "valid boolean"),
    ("features", "derive", "should match pattern"),
    ("trainer.kind", "catboost", "'mlp', 'sklearn', 'lightgbm' or 'custom'"),
    ("trainer", {"kind": "custom"}, "needs an entrypoint"),
    ("trainer", {"kind": "lightgbm", "entrypoint": "train.py:fit"}, "built in"),
    ("trainer.params", {"num leaves": 3}, "should match pattern"),
    ("evaluation.metric", "roc_auc", "does not judge a regression model"),
    ("evaluation.metric", "auc", "'roc_auc', 'accuracy', 'f1_macro', 'rmse', 'mae' or 'r2'"),
    ("evaluation.floor", "high", "valid number"),
    ("evaluation.min_improvement", 2, "less than or equal to 1"),
    ("serving", {"replicas": 0}, "greater than or equal to 1"),
    ("serving", {"resources": {"cpu": "two"}}, "should match pattern"),
    ("serving", {"resources": {"memory": "1GB"}}, "should match pattern"),
    ("serving", {"strategy": "big-bang"}, "'canary', 'blue-green' or 'rolling'"),
    ("serving", {"canary_steps": [50, 25]}, "must increase"),
    ("serving", {"canary_steps": [5, 100]}, "less than 100"),
    ("serving", {"thresholds": {"max p99": 1}}, "should match pattern"),
    ("schedule", "every day", "not a cron expression"),
    ("schedule", "@fortnightly", "unknown preset"),
    ("monitoring", {"schedule": "hourly"}, "not a cron expression"),
    ("monitoring", {"psi": 0}, "greater than 0"),
    ("monitoring", {"ks_pvalue": 1}, "less than 1"),
    ("monitoring", {"window_hours": 0}, "greater than or equal to 1"),
    ("monitoring", {"drift": 0.2}, "unknown field"),
    ("gpus", -1, "greater than or equal to 0"),
    ("gpus", 2, "runs on CPU; set gpus: 0"),
    ("colour", "blue", "unknown field"),
]


@pytest.mark.parametrize(("field", "value", "expected"), BAD, ids=[f"{b[0]}={b[1]!r}" for b in BAD])
def test_a_bad_value_is_named_with_its_file_field_and_what_is_allowed(
    tmp_path: Path, field: str, value: Any, expected: str
) -> None:
    folder = write(tmp_path / "models", with_value(REGRESSION, field, value), "prices")
    with pytest.raises(ModelSpecError) as failure:
        spec.load(folder)
    message = str(failure.value)
    assert message.startswith("models/prices/model.yaml: "), message
    assert expected in message, message
    # The message names the field that is wrong (or, for a rule across fields, its section).
    assert field.split(".")[0] in message, message


def test_a_valid_spec_loads_with_its_defaults(tmp_path: Path) -> None:
    model = spec.load(write(tmp_path / "models", REGRESSION))
    assert (model.name, model.task, model.trainer.kind) == ("prices", "regression", "lightgbm")
    assert model.raw_schema.columns["area"].nullable
    assert not model.higher_is_better  # rmse: lower is better
    assert model.serving.replicas == 2
    assert model.serving.strategy == "canary"
    assert model.instance == "prices-serving"
    assert model.gpus == 0
    assert model.schedule == "0 3 * * *"
    assert (model.monitoring.schedule, model.monitoring.psi) == ("@hourly", 0.2)
    assert model.monitoring.retrain


def test_the_folder_name_must_be_the_model_name(tmp_path: Path) -> None:
    folder = write(tmp_path / "models", REGRESSION, "houses")
    with pytest.raises(ModelSpecError, match="name: 'prices' must be the folder's name, 'houses'"):
        spec.load(folder)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: [unclosed\n", "not valid YAML (line 2, column 1)"),
        ("- a list\n", "must be a mapping of fields, got list"),
    ],
)
def test_a_file_that_is_not_a_mapping_says_so(tmp_path: Path, text: str, expected: str) -> None:
    folder = write(tmp_path / "models", text, "prices")
    with pytest.raises(ModelSpecError, match=r"models/prices/model\.yaml: ") as failure:
        spec.load(folder)
    assert expected in str(failure.value)


def test_a_folder_without_a_spec_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "models" / "empty").mkdir(parents=True)
    with pytest.raises(ModelSpecError, match=r"models/empty/model\.yaml: no such file"):
        spec.load(tmp_path / "models" / "empty")


def test_discover_finds_model_folders_only(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write(root, REGRESSION)
    write(root, with_value(REGRESSION, "name", "other"), "other")
    (root / "notes").mkdir()
    (root / "_template").mkdir()
    (root / "_template" / spec.SPEC_FILE).write_text("name: _template\n")
    assert [p.name for p in spec.discover(root)] == ["other", "prices"]


def test_the_churn_spec_declares_the_schema_the_steps_use() -> None:
    """Until the steps read their schema from the spec, the two must say the same thing."""
    model = spec.load(CHURN)
    raw = model.raw_schema
    assert (raw.id, raw.timestamp, raw.label.name) == (schema.ID_COLUMN, schema.DATE_COLUMN,
                                                       schema.LABEL)  # fmt: skip
    assert raw.label.classes == (0, 1)
    numeric = {n: c.range for n, c in raw.columns.items() if c.type != "category"}
    categories = {n: c.vocabulary for n, c in raw.columns.items() if c.type == "category"}
    assert numeric == {n: (float(lo), float(hi)) for n, (lo, hi) in schema.NUMERIC_RANGES.items()}
    assert categories == schema.CATEGORIES
    assert not any(c.nullable for c in raw.columns.values())
