"""API errors, rendered as Kubernetes ``Status`` objects by the API server."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error with the HTTP code, ``reason`` and message a real API server would send."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details
        # A 410 on a paged list carries a token to go on from, inconsistently (Status.metadata).
        self.continue_token = ""

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {"continue": self.continue_token} if self.continue_token else {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _object_error(
    code: int, reason: str, message: str, kind: str, name: str, group: str
) -> ApiError:
    return ApiError(code, reason, message, {"name": name, "group": group, "kind": kind})


def _resource(kind: str, group: str) -> str:
    return f"{kind}.{group}" if group else kind


def not_found(kind: str, name: str, group: str = "") -> ApiError:
    message = f'{_resource(kind, group)} "{name}" not found'
    return _object_error(404, "NotFound", message, kind, name, group)


def already_exists(kind: str, name: str, group: str = "") -> ApiError:
    message = f'{_resource(kind, group)} "{name}" already exists'
    return _object_error(409, "AlreadyExists", message, kind, name, group)


def conflict(kind: str, name: str, group: str = "") -> ApiError:
    message = (
        f'Operation cannot be fulfilled on {_resource(kind, group)} "{name}": the object has '
        "been modified; please apply your changes to the latest version and try again"
    )
    return _object_error(409, "Conflict", message, kind, name, group)


def invalid(kind: str, name: str, message: str) -> ApiError:
    return ApiError(
        422, "Invalid", f'{kind} "{name}" is invalid: {message}', {"name": name, "kind": kind}
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid_options(kind: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 for request options (``CreateOptions``, ``ListOptions``, ...) that fail validation.

    ``causes`` are (type, field, body) triples, e.g. ("FieldValueForbidden",
    "resourceVersionMatch", "Forbidden: ..."); the message aggregates them as the real server's
    ``NewInvalid`` does: one error as is, several in brackets.
    """
    texts = [f"{field}: {body}" for _, field, body in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind}.meta.k8s.io "" is invalid: {summary}',
        {
            "group": "meta.k8s.io",
            "kind": kind,
            "causes": [{"reason": t, "message": b, "field": f} for t, f, b in causes],
        },
    )


def expired(message: str, continue_token: str = "") -> ApiError:
    """410 Gone: a resourceVersion or continue token older than what is kept."""
    error = ApiError(410, "Expired", message)
    error.continue_token = continue_token
    return error
