"""Server-side apply and field ownership (``metadata.managedFields``), as clients see them.

Every client write records which fields its manager set: a create owns every field it sent, an
update or patch (operation ``Update``) the fields it changed, and an apply (operation
``Apply``) exactly the fields in its configuration. An apply merges its configuration by the
schema's list keys (containers by name, ...), removes the fields its manager applied before
and left out now (unless another manager owns them too), and refuses with 409 to change a
field another manager owns unless ``force=true``, which takes the field over. Re-applying the
same configuration changes nothing: no new resourceVersion, no new generation, no rollout.

Field sets are written in the real server's ``FieldsV1`` form (``f:spec``, ``k:{"name":"web"}``,
``.``). Writes by localcluster's own controllers are not tracked (a real server records them
under ``kube-controller-manager``); lists without a merge key are owned as a whole.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from localcluster import errors, patch

Path = tuple[str, ...]
Obj = dict[str, Any]
_MISSING = object()
# Fields no manager owns: identity, bookkeeping, and status (written through /status).
UNOWNED_METADATA = {
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
}


def _key(field: str, item: Any) -> str | None:
    """The ``k:{...}`` name of a keyed list element, or None if the list is owned whole."""
    key = patch.MERGE_KEYS.get(field)
    if key is None or not isinstance(item, dict) or key not in item:
        return None
    return "k:" + json.dumps({key: item[key]}, separators=(",", ":"))


def fields(obj: Any, path: Path = ()) -> set[Path]:
    """The leaf paths an object sets, in FieldsV1 names."""
    out: set[Path] = set()
    if not isinstance(obj, dict):
        return out
    for name, value in obj.items():
        if not path and name in ("apiVersion", "kind", "status"):
            continue
        if path == ("f:metadata",) and name in UNOWNED_METADATA:
            continue
        here = (*path, f"f:{name}")
        if isinstance(value, dict) and value:
            out |= fields(value, here)
        elif isinstance(value, list) and value and all(_key(name, i) for i in value):
            for item in value:
                element = (*here, str(_key(name, item)))
                out.add((*element, "."))
                out |= fields(item, element)
        else:
            out.add(here)
    return out


def to_fields_v1(paths: set[Path]) -> Obj:
    tree: Obj = {}
    for p in sorted(paths):
        node = tree
        for part in p:
            node = node.setdefault(part, {})
    return tree


def from_fields_v1(tree: Obj, path: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for part, sub in (tree or {}).items():
        here = (*path, part)
        if sub:
            out |= from_fields_v1(sub, here)
        else:
            out.add(here)
    return out


def value_at(obj: Any, path: Path) -> Any:
    node = obj
    for part in path:
        if part == ".":
            return node
        if part.startswith("f:") and isinstance(node, dict):
            node = node.get(part[2:], _MISSING)
        elif part.startswith("k:") and isinstance(node, list):
            (key, wanted), = json.loads(part[2:]).items()  # fmt: skip
            node = next((i for i in node if isinstance(i, dict) and i.get(key) == wanted), _MISSING)
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def _remove(obj: Any, path: Path) -> None:
    """Drop the field at ``path`` (a keyed element as a whole when the path ends in ``.``)."""
    parent_path, last = path[:-1], path[-1]
    if last == ".":
        parent_path, last = path[:-2], path[-2]
    parent = value_at(obj, parent_path) if parent_path else obj
    if last.startswith("f:") and isinstance(parent, dict):
        parent.pop(last[2:], None)
    elif last.startswith("k:") and isinstance(parent, list):
        (key, wanted), = json.loads(last[2:]).items()  # fmt: skip
        parent[:] = [i for i in parent if not (isinstance(i, dict) and i.get(key) == wanted)]


def _dotted(path: Path) -> str:
    return "".join(f".{p[2:]}" if p.startswith("f:") else f"[{p[2:]}]" for p in path if p != ".")


def _entries(obj: Obj) -> list[Obj]:
    return copy.deepcopy(obj.get("metadata", {}).get("managedFields") or [])


def _set_entry(
    entries: list[Obj], manager: str, operation: str, api_version: str, owned: set[Path], at: str
) -> list[Obj]:
    """Entries with this manager's set replaced (its time only moves if its set changed)."""
    kept, previous = [], None
    for entry in entries:
        if (entry.get("manager"), entry.get("operation")) == (manager, operation):
            previous = entry
        else:
            kept.append(entry)
    if not owned:
        return kept
    tree = to_fields_v1(owned)
    same = previous is not None and previous.get("fieldsV1") == tree
    kept.append(
        {
            "manager": manager,
            "operation": operation,
            "apiVersion": api_version,
            "time": previous["time"] if same and previous else at,
            "fieldsType": "FieldsV1",
            "fieldsV1": tree,
        }
    )
    return kept


def _strip(entries: list[Obj], taken: set[Path], except_manager: tuple[str, str]) -> list[Obj]:
    """Other managers lose the fields in ``taken``."""
    out = []
    for entry in entries:
        if (entry.get("manager"), entry.get("operation")) == except_manager:
            out.append(entry)
            continue
        left = from_fields_v1(entry.get("fieldsV1") or {}) - taken
        if left:
            out.append({**entry, "fieldsV1": to_fields_v1(left)})
    return out


def record_update(old: Obj | None, new: Obj, manager: str, at: str) -> None:
    """A create, update or non-apply patch by ``manager``: it now owns what it set or changed."""
    changed = {p for p in fields(new) if old is None or value_at(old, p) != value_at(new, p)}
    entries = _entries(old) if old is not None else []
    key = (manager, "Update")
    entries = _strip(entries, changed, key)
    mine = next(
        (from_fields_v1(e["fieldsV1"]) for e in entries if (e["manager"], e["operation"]) == key),
        set(),
    )
    # Fields this manager owned that the write removed are no longer anyone's.
    present = fields(new)
    owned = {p for p in mine | changed if p in present}
    entries = _set_entry(entries, manager, "Update", new.get("apiVersion", ""), owned, at)
    new.setdefault("metadata", {})["managedFields"] = entries


def server_side_apply(current: Obj | None, config: Obj, manager: str, force: bool, at: str) -> Obj:
    """The object after ``manager`` applies ``config`` (a new object if ``current`` is None)."""
    if not manager:
        raise errors.bad_request("PATCH of type apply requires a fieldManager")
    config = copy.deepcopy(config)
    config.get("metadata", {}).pop("managedFields", None)
    wanted = fields(config)
    api_version = config.get("apiVersion") or (current or {}).get("apiVersion", "")
    key = (manager, "Apply")
    if current is None:
        new = config
        new.setdefault("metadata", {})["managedFields"] = _set_entry(
            [], manager, "Apply", api_version, wanted, at
        )
        return new
    entries = _entries(current)
    conflicts: list[tuple[str, str, Path]] = []
    for entry in entries:
        if (entry.get("manager"), entry.get("operation")) == key:
            continue
        for p in from_fields_v1(entry.get("fieldsV1") or {}) & wanted:
            # "." marks a keyed element's existence: two managers may both want it.
            if p[-1] != "." and value_at(current, p) != value_at(config, p):
                conflicts.append((entry["manager"], entry.get("apiVersion", ""), p))
    if conflicts and not force:
        raise _conflict(conflicts)
    mine_before = next(
        (from_fields_v1(e["fieldsV1"]) for e in entries if (e["manager"], e["operation"]) == key),
        set(),
    )
    entries = _strip(entries, {p for _, _, p in conflicts}, key)
    others = set().union(
        *(from_fields_v1(e.get("fieldsV1") or {}) for e in entries
          if (e.get("manager"), e.get("operation")) != key)
    )  # fmt: skip
    merged = patch.strategic_merge_patch(current, config)
    for p in sorted(mine_before - wanted - others, key=len, reverse=True):
        _remove(merged, p)
    merged.setdefault("metadata", {})["managedFields"] = _set_entry(
        entries, manager, "Apply", api_version, wanted, at
    )
    return dict(merged)


def _conflict(conflicts: list[tuple[str, str, Path]]) -> errors.ApiError:
    lines = [f'conflict with "{m}" using {v}: {_dotted(p)}' for m, v, p in conflicts]
    count = len(conflicts)
    message = f"Apply failed with {count} conflict{'s' if count > 1 else ''}: " + (
        lines[0] if count == 1 else "\n" + "\n".join(f"* {line}" for line in lines)
    )
    causes = [
        {"reason": "FieldManagerConflict", "message": f'conflict with "{m}" using {v}',
         "field": _dotted(p)}
        for m, v, p in conflicts
    ]  # fmt: skip
    return errors.ApiError(409, "Conflict", message, {"causes": causes})
