"""The three patch types the API server accepts, plus the merge keys strategic merge uses.

- JSON merge patch (RFC 7386): objects merge, ``null`` deletes, lists replace.
- Strategic merge patch: like merge patch, but lists of objects with a merge key (containers
  by ``name``, ports by ``containerPort``, ...) merge element by element, so patching one
  container's image keeps the others; ``$patch: delete|replace`` and ``$retainKeys``
  directives; ``$setElementOrder/<list>`` and ``$deleteFromPrimitiveList/<list>`` as sent by
  ``kubectl apply``.
- JSON patch (RFC 6902): add, remove, replace, move, copy, test.
"""

from __future__ import annotations

import copy
from typing import Any

from localcluster.errors import ApiError

# Field name -> merge key, for the lists Kubernetes' types declare with patchStrategy=merge.
# Keyed by field name alone: in the core and apps types these names are unambiguous.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
}
# Lists of scalars merged as sets.
MERGE_SETS = {"finalizers"}
# A Service's ports merge on (port, protocol); "port" is enough locally.
SERVICE_PORT_KEY = "port"


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target)
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field, []) if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, key, path)
        else:
            result[key] = strategic_merge_patch(result.get(key), value, (*path, key))
    if retain is not None:
        result = {k: v for k, v in result.items() if k in retain or k not in target}
    return result


def _merge_key(field: str, path: tuple[str, ...], items: list[Any]) -> str | None:
    if field == "ports" and path and path[-1] == "spec" and any("port" in i for i in items):
        return SERVICE_PORT_KEY
    return MERGE_KEYS.get(field)


def _merge_list(current: Any, patch: list[Any], field: str, path: tuple[str, ...]) -> list[Any]:
    current_items: list[Any] = list(current or [])
    if field in MERGE_SETS:
        return current_items + [v for v in patch if v not in current_items]
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    key = _merge_key(field, path, [i for i in patch if isinstance(i, dict)])
    if key is None or not all(isinstance(i, dict) for i in patch):
        return copy.deepcopy(patch)
    merged = list(current_items)
    for item in patch:
        index = next((n for n, c in enumerate(merged) if c.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                merged.pop(index)
        elif index is None:
            merged.append(strategic_merge_patch({}, item, (*path, field)))
        else:
            merged[index] = strategic_merge_patch(merged[index], item, (*path, field))
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"JSON patch path {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def json_patch(target: Any, operations: list[dict[str, Any]]) -> Any:
    doc = copy.deepcopy(target)
    for op in operations:
        try:
            kind, parts = op["op"], _pointer(op["path"])
            parent: Any = _walk(doc, parts[:-1]) if parts else None
            last: Any = parts[-1] if parts else None
            if kind == "test":
                if _walk(doc, parts) != op["value"]:
                    raise ApiError(422, "Invalid", f"JSON patch test failed at {op['path']}")
            elif kind == "remove":
                if isinstance(parent, list):
                    parent.pop(int(last))
                else:
                    del parent[last]
            elif kind in ("add", "replace", "move", "copy"):
                if kind in ("move", "copy"):
                    source = _pointer(op["from"])
                    value = copy.deepcopy(_walk(doc, source))
                    if kind == "move":
                        holder = _walk(doc, source[:-1])
                        if isinstance(holder, list):
                            holder.pop(int(source[-1]))
                        else:
                            del holder[source[-1]]
                else:
                    value = copy.deepcopy(op["value"])
                if parent is None:
                    doc = value
                elif isinstance(parent, list):
                    if last == "-":
                        parent.append(value)
                    elif kind == "replace":
                        parent[int(last)] = value
                    else:
                        parent.insert(int(last), value)
                else:
                    if kind == "replace" and last not in parent:
                        raise ApiError(
                            422, "Invalid", f"JSON patch replace of missing {op['path']}"
                        )
                    parent[last] = value
            else:
                raise ApiError(422, "Invalid", f"unknown JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"JSON patch {op!r} does not apply: {exc}") from exc
    return doc
