"""Server-side field validation (``?fieldValidation=Strict|Warn|Ignore``), as kubectl uses it.

The schema comes from the real ``kubernetes`` client's generated models (each model's
``openapi_types`` and ``attribute_map`` are Kubernetes' own OpenAPI, generated), so an unknown
or misspelled field is reported with the same path a real API server gives:
``unknown field "spec.containers[0].imagee"``.
"""

from __future__ import annotations

import re
from typing import Any

from kubernetes.client import models

from localcluster.resources import Kind

# Kinds whose model class name does not follow V1<Kind>.
_MODEL = {"Event": "CoreV1Event", "HorizontalPodAutoscaler": "V2HorizontalPodAutoscaler"}


def model_for(kind: Kind) -> type | None:
    name = _MODEL.get(kind.kind) or f"{kind.version.capitalize()}{kind.kind}"
    found: type | None = getattr(models, name, None)
    return found


def unknown_fields(obj: Any, model: type | str, path: str = "") -> list[str]:
    """Paths of fields in ``obj`` that the model does not declare."""
    if isinstance(model, str):
        list_of = re.fullmatch(r"list\[(.+)\]", model)
        if list_of:
            inner = list_of.group(1)
            return [
                u
                for i, item in enumerate(obj if isinstance(obj, list) else [])
                for u in unknown_fields(item, inner, f"{path}[{i}]")
            ]
        if (
            model.startswith("dict(")
            or model.startswith("dict[")
            or model
            in (
                "object",
                "str",
                "int",
                "bool",
                "float",
                "datetime",
                "date",
            )
        ):
            return []
        found = getattr(models, model, None)
        if found is None:
            return []
        model = found
    if not isinstance(obj, dict):
        return []
    types: dict[str, str] = getattr(model, "openapi_types", {})
    by_json = {
        json_name: types[py] for py, json_name in getattr(model, "attribute_map", {}).items()
    }
    problems = []
    for key, value in obj.items():
        here = f"{path}.{key}" if path else key
        if key not in by_json:
            if not key.startswith("$"):  # strategic-merge directives are not fields
                problems.append(here)
            continue
        problems += unknown_fields(value, by_json[key], here)
    return problems


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


def type_errors(obj: Any, model: type | str, path: str = "") -> list[str]:
    """Values whose JSON type cannot decode into the field (a string for ``replicas``, an
    object for a list): what the real server refuses whatever ``fieldValidation`` says."""
    if obj is None:
        return []
    if isinstance(model, str):
        list_of = re.fullmatch(r"list\[(.+)\]", model)
        if list_of:
            if not isinstance(obj, list):
                return [_mismatch(path, obj, "array")]
            return [e for i, item in enumerate(obj)
                    for e in type_errors(item, list_of.group(1), f"{path}[{i}]")]  # fmt: skip
        if model.startswith(("dict(", "dict[")):
            return [] if isinstance(obj, dict) else [_mismatch(path, obj, "object")]
        if model in _SCALARS:
            accepted, name = _SCALARS[model]
            is_bool = isinstance(obj, bool)
            if not isinstance(obj, accepted) or (is_bool and bool not in accepted):
                return [_mismatch(path, obj, name.split()[0])]
            return []
        if model == "object":
            return []
        found = getattr(models, model, None)
        if found is None:
            return []
        model = found
    if not isinstance(obj, dict):
        return [_mismatch(path, obj, "object")]
    types: dict[str, str] = getattr(model, "openapi_types", {})
    by_json = {
        json_name: types[py] for py, json_name in getattr(model, "attribute_map", {}).items()
    }
    return [
        e
        for key, value in obj.items()
        if key in by_json
        for e in type_errors(value, by_json[key], f"{path}.{key}" if path else key)
    ]


def _mismatch(path: str, value: Any, wanted: str) -> str:
    got = _JSON_NAMES.get(type(value), type(value).__name__)
    return f"{path}: cannot decode a JSON {got} into a field that takes a JSON {wanted}"
