"""OpenAPI v3 documents, one per group-version, as the real API server publishes them.

The schemas are Kubernetes' own: the definitions of the release localcluster reports, as the
``kubernetes-validate`` package ships them (converted from the real OpenAPI spec, with every
description, required list, ``x-kubernetes-group-version-kind`` and list/patch extension). They
are put back into OpenAPI 3 form: ``#/components/schemas/...`` references, a reference with
siblings wrapped in ``allOf`` (OpenAPI 3.0 ignores a ``$ref``'s siblings), nullable type lists
narrowed to their type, and the converter's ``apiVersion``/``kind`` enums dropped.

What reads them: ``kubectl explain`` (fields, types, descriptions, ``-required-``), and kubectl's
check that the server takes ``fieldValidation``. PATCH operations declare no request body on
purpose: kubectl then computes client-side apply patches from its compiled-in types as before,
not from these schemas. Kinds with no upstream definition (the Gateway API's, the metrics API's)
get a schema that names their GVK and keeps unknown fields, as a CRD without a schema does.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from typing import Any

from localcluster.resources import KINDS, Kind, groups

# The release localcluster reports in /version.
KUBERNETES_VERSION = "v1.32.0"
_REF = "#/$defs/"
_COMPONENTS = "#/components/schemas/"
_OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# Upstream's own format for IntOrString, which the converter leaves out of its oneOf.
_FORMATS = {"io.k8s.apimachinery.pkg.util.intstr.IntOrString": "int-or-string"}
# The query parameters of every write (``fieldValidation`` on PATCH is what kubectl looks for).
_WRITES = [
    {"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
    for n in ("dryRun", "fieldManager", "fieldValidation")
]


@cache
def _definitions() -> dict[str, Any]:
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    text = (folder / f"{KUBERNETES_VERSION}-local" / "_definitions.json").read_text()
    found: dict[str, Any] = json.loads(text)["$defs"]
    return found


def _openapi3(schema: Any) -> Any:
    """One JSON Schema node of the converted definitions, in OpenAPI 3.0 form."""
    if isinstance(schema, list):
        return [_openapi3(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            out[key] = types[0] if len(types) == 1 else types
        elif key == "$ref":
            out[key] = _COMPONENTS + value.removeprefix(_REF)
        elif key == "properties":
            out[key] = {name: _property(name, sub) for name, sub in value.items()}
        elif key in {"x-kubernetes-group-version-kind", "required", "enum"}:
            out[key] = value
        else:
            out[key] = _openapi3(value)
    if "$ref" in out and len(out) > 1:
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    return out


def _property(name: str, schema: dict[str, Any]) -> Any:
    converted = _openapi3(schema)
    if name in {"apiVersion", "kind"}:
        converted.pop("enum", None)  # added by the converter; the API's schema has none
    return converted


def _referenced(schema: Any) -> set[str]:
    if isinstance(schema, list):
        return set().union(*(_referenced(item) for item in schema)) if schema else set()
    if not isinstance(schema, dict):
        return set()
    found = {schema["$ref"].removeprefix(_REF)} if isinstance(schema.get("$ref"), str) else set()
    for value in schema.values():
        found |= _referenced(value)
    return found


def _kinds(group: str, version: str) -> list[Kind]:
    return [k for k in KINDS if (k.group, k.version) == (group, version)]


def _gvk(gvk: dict[str, str]) -> tuple[str, str, str]:
    return gvk.get("group", ""), gvk["version"], gvk["kind"]


def _named(group: str, version: str) -> list[str]:
    """The definitions whose GVK is a kind localcluster serves in this group-version, or that
    kind's list."""
    kinds = [k.kind for k in _kinds(group, version)]
    served = {(group, version, kind) for kind in kinds + [f"{kind}List" for kind in kinds]}
    return [
        name
        for name, schema in _definitions().items()
        if any(_gvk(gvk) in served for gvk in schema.get("x-kubernetes-group-version-kind", []))
    ]


def _schemas(group: str, version: str) -> dict[str, Any]:
    """The group-version's kinds and lists, everything they refer to, and a schema-less
    entry for each served kind upstream does not define."""
    definitions = _definitions()
    named = _named(group, version)
    defined = {
        _gvk(gvk) for name in named for gvk in definitions[name]["x-kubernetes-group-version-kind"]
    }
    undefined = [k for k in _kinds(group, version) if (group, version, k.kind) not in defined]
    wanted: set[str] = set()
    todo = named + ([_OBJECT_META] if undefined else [])
    while todo:
        name = todo.pop()
        if name in wanted or name not in definitions:
            continue
        wanted.add(name)
        todo.extend(_referenced(definitions[name]))
    schemas: dict[str, Any] = {}
    for name in sorted(wanted):
        schema = _openapi3(definitions[name])
        if name in _FORMATS:
            schema["format"] = _FORMATS[name]
        schemas[name] = schema
    for kind in undefined:
        schemas[_schemaless_name(kind)] = _schemaless(kind)
    return schemas


def _schemaless_name(kind: Kind) -> str:
    reversed_group = ".".join(reversed(kind.group.split(".")))
    return f"{reversed_group}.{kind.version}.{kind.kind}"


def _schemaless(kind: Kind) -> dict[str, Any]:
    """What a custom resource without a structural schema publishes: its GVK and any field."""
    meta = _COMPONENTS + _OBJECT_META
    return {
        "type": "object",
        "x-kubernetes-group-version-kind": [
            {"group": kind.group, "version": kind.version, "kind": kind.kind}
        ],
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"allOf": [{"$ref": meta}]},
        },
    }


def _paths(group: str, version: str) -> dict[str, Any]:
    """Each kind's collection and item paths with the operations' GVK and parameters."""
    paths: dict[str, Any] = {}
    prefix = "/" + path_of(group, version)
    for k in _kinds(group, version):
        gvk = {"group": k.group, "version": k.version, "kind": k.kind}
        base = (
            f"{prefix}/namespaces/{{namespace}}/{k.plural}"
            if k.namespaced
            else f"{prefix}/{k.plural}"
        )

        def op(action: str, params: list[dict[str, Any]], gvk: dict[str, str] = gvk) -> Any:
            return {"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
                    "parameters": params}  # fmt: skip

        # POST, PUT and PATCH for every kind, even the create-only reviews: kubectl checks a
        # kind's PATCH for ``fieldValidation`` before any write, and without one it falls back
        # to /openapi/v2, which is not served (a real server has both).
        collection = {"post": op("post", _WRITES)}
        item = {"put": op("put", _WRITES), "patch": op("patch", _WRITES)}
        if "list" in k.verbs:
            collection["get"] = op("list", [])
        if "get" in k.verbs:
            item["get"] = op("get", [])
        if "delete" in k.verbs:
            item["delete"] = op("delete", [_WRITES[0]])
        paths[base] = collection
        paths[f"{base}/{{name}}"] = item
    return paths


@cache
def document(group: str, version: str) -> bytes:
    """The group-version's OpenAPI v3 document, serialised once."""
    doc = {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": _paths(group, version),
        "components": {"schemas": _schemas(group, version)},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def digest(group: str, version: str) -> str:
    """The hash a real server puts in each document's URL (SHA-512, upper-case hex), so that
    clients cache a document until it changes."""
    return hashlib.sha512(document(group, version)).hexdigest().upper()


def group_versions() -> list[tuple[str, str]]:
    """The core group's one version, then every group's, in the order kinds are declared."""
    return [("", "v1"), *((g, v) for g, versions in groups().items() for v in versions)]


def path_of(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"
