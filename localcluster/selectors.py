"""Label and field selectors, parsed as the API server parses them.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x)``,
comma-separated (AND). Field selectors: ``path=value``, ``path==value``, ``path!=value`` on
dotted paths such as ``metadata.name``, ``involvedObject.name`` or ``status.phase``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from localcluster.errors import bad_request

Matcher = Callable[[Mapping[str, str]], bool]

_SET = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def parse_labels(selector: str | None) -> Matcher:
    if not selector or not selector.strip():
        return lambda labels: True
    tests: list[Matcher] = []
    for term in _split(selector):
        eq = _EQ.match(term)
        if eq:
            key, op, value = eq.groups()
            tests.append(_equals(key, value, negate=op == "!="))
            continue
        match = _SET.match(term)
        if not match:
            raise bad_request(f"unable to parse requirement: {term.strip()!r}")
        negate, key, op, values = match.groups()
        if op:
            allowed = {v.strip() for v in values.split(",") if v.strip()}
            tests.append(_member(key, allowed, negate=op == "notin"))
        else:
            tests.append(_exists(key, negate=bool(negate)))
    return lambda labels: all(test(labels) for test in tests)


def _equals(key: str, value: str, negate: bool) -> Matcher:
    def test(labels: Mapping[str, str]) -> bool:
        return (labels.get(key) == value) != negate

    return test


def _member(key: str, allowed: set[str], negate: bool) -> Matcher:
    def test(labels: Mapping[str, str]) -> bool:
        return (labels.get(key) in allowed) != negate

    return test


def _exists(key: str, negate: bool) -> Matcher:
    def test(labels: Mapping[str, str]) -> bool:
        return (key in labels) != negate

    return test


def match_label_selector(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Match a structured LabelSelector (``matchLabels`` + ``matchExpressions``)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def field_value(obj: Mapping[str, Any], path: str) -> str:
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return ""
        current = current.get(part)
    return "" if current is None else str(current)


def parse_fields(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    if not selector or not selector.strip():
        return lambda obj: True
    tests: list[Callable[[Mapping[str, Any]], bool]] = []
    for term in _split(selector):
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not match:
            raise bad_request(f"invalid field selector: {term.strip()!r}")
        path, op, value = match.groups()
        tests.append(_field_equals(path, value, negate=op == "!="))
    return lambda obj: all(test(obj) for test in tests)


def _field_equals(path: str, value: str, negate: bool) -> Callable[[Mapping[str, Any]], bool]:
    def test(obj: Mapping[str, Any]) -> bool:
        return (field_value(obj, path) == value) != negate

    return test
