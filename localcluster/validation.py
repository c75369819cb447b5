"""Server-side field validation (``?fieldValidation=Strict|Warn|Ignore``), as kubectl uses it.

The schema comes from the real ``kubernetes`` client's generated models (each model's
``openapi_types`` and ``attribute_map`` are Kubernetes' own OpenAPI, generated), so an unknown
or misspelled field is reported with the same path a real API server gives:
``unknown field "spec.containers[0].imagee"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from kubernetes.client import models

from localcluster.resources import Kind

# Kinds whose model class name does not follow V1<Kind>.
_MODEL = {"Event": "CoreV1Event", "HorizontalPodAutoscaler": "V2HorizontalPodAutoscaler"}


def model_for(kind: Kind) -> type | None:
    name = _MODEL.get(kind.kind) or f"{kind.version.capitalize()}{kind.kind}"
    found: type | None = getattr(models, name, None)
    return found


def unknown_fields(obj: Any, model: type | str) -> list[str]:
    """Paths of fields in ``obj`` that the model does not declare."""
    return [detail for kind, detail in _walk(obj, model, "") if kind == "unknown"]


def type_errors(obj: Any, model: type | str) -> list[str]:
    """Values whose JSON type cannot decode into the field (a string for ``replicas``, an
    object for a list): what the real server refuses whatever ``fieldValidation`` says."""
    return [detail for kind, detail in _walk(obj, model, "") if kind == "type"]


# The Python client's scalar type names -> (accepted Python types, the JSON and Go names).
_SCALARS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "number into Go value of type int"),
    "str": ((str,), "string"),
    "bool": ((bool,), "bool"),
    "float": ((int, float), "number"),
    "datetime": ((str,), "string"),
}
_JSON_NAMES = {bool: "bool", int: "number", float: "number", str: "string", list: "array",
               dict: "object"}  # fmt: skip


def _walk(obj: Any, model: type | str, path: str) -> Iterator[tuple[str, str]]:
    """("unknown", path) for each undeclared field and ("type", message) for each value of the
    wrong JSON type, through the Python client's generated models."""
    if obj is None:
        return
    if isinstance(model, str):
        list_of = re.fullmatch(r"list\[(.+)\]", model)
        if list_of:
            if not isinstance(obj, list):
                yield "type", _mismatch(path, obj, "array")
                return
            for i, item in enumerate(obj):
                yield from _walk(item, list_of.group(1), f"{path}[{i}]")
            return
        if model.startswith(("dict(", "dict[")):
            if not isinstance(obj, dict):
                yield "type", _mismatch(path, obj, "object")
            return
        if model in _SCALARS:
            accepted, name = _SCALARS[model]
            if not isinstance(obj, accepted) or (isinstance(obj, bool) and bool not in accepted):
                yield "type", _mismatch(path, obj, name.split()[0])
            return
        found = getattr(models, model, None)
        if found is None:  # "object", "date": anything goes
            return
        model = found
    if not isinstance(obj, dict):
        yield "type", _mismatch(path, obj, "object")
        return
    types: dict[str, str] = getattr(model, "openapi_types", {})
    by_json = {
        json_name: types[py] for py, json_name in getattr(model, "attribute_map", {}).items()
    }
    for key, value in obj.items():
        here = f"{path}.{key}" if path else key
        if key in by_json:
            yield from _walk(value, by_json[key], here)
        elif not key.startswith("$"):  # strategic-merge directives are not fields
            yield "unknown", here


def _mismatch(path: str, value: Any, wanted: str) -> str:
    got = _JSON_NAMES.get(type(value), type(value).__name__)
    return f"{path}: cannot decode a JSON {got} into a field that takes a JSON {wanted}"
