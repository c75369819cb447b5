"""The server's request type, derived from the raw columns a model version's spec declares."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from helmsman_steps import spec
from helmsman_steps.serve import DEFAULT_COLUMNS, request_type
from tests.steps.test_spec import REGRESSION, write


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> msgspec.json.Decoder[Any]:
    """The regression example's columns, as a version stores them (spec.to_json)."""
    model = spec.load(write(tmp_path_factory.mktemp("models"), REGRESSION))
    columns = json.loads(spec.to_json(model))["schema"]["columns"]
    return msgspec.json.Decoder(request_type(columns))


def body(**row: Any) -> bytes:
    return json.dumps({"instances": [{"rooms": 3, "area": 80.5, "district": "a", **row}]}).encode()


def test_a_valid_row_decodes_and_a_nullable_column_takes_null(decoder: Any) -> None:
    (row,) = decoder.decode(body()).instances
    assert (row.rooms, row.area, row.district) == (3, 80.5, "a")
    (row,) = decoder.decode(body(area=None)).instances
    assert row.area is None


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"rooms": 0}, "Expected `int` >= 1 - at `$.instances[0].rooms`"),
        ({"rooms": 2.5}, "Expected `int`, got `float` - at `$.instances[0].rooms`"),
        ({"area": 20000}, "Expected `float` <= 10000.0 - at `$.instances[0].area`"),
        ({"district": "c"}, "Invalid enum value 'c' - at `$.instances[0].district`"),
        ({"district": None}, "Expected `str`, got `null` - at `$.instances[0].district`"),
        ({"garden": True}, "Object contains unknown field `garden` - at `$.instances[0]`"),
    ],
)
def test_a_bad_row_is_refused_naming_the_field(
    decoder: Any, row: dict[str, Any], expected: str
) -> None:
    with pytest.raises(msgspec.ValidationError) as failure:
        decoder.decode(body(**row))
    assert str(failure.value) == expected


def test_a_missing_column_is_named() -> None:
    decoder = msgspec.json.Decoder(request_type(DEFAULT_COLUMNS))
    with pytest.raises(msgspec.ValidationError, match=r"missing required field `age`"):
        decoder.decode(b'{"instances": [{"plan": "basic"}]}')
