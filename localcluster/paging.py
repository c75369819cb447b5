"""Continue tokens for paged lists, in the real API server's format.

A token is unpadded base64url of ``{"v": "meta.k8s.io/v1", "rv": REVISION, "start": KEY}``:
the revision the first page was read at and the key (relative to the list's prefix,
``NAME`` inside a namespace, ``NAMESPACE/NAME`` across them) to start the next page from.
``rv`` -1 means "go on from that key at the latest revision", which the server hands out with
a 410 when the first page's revision is no longer kept. Clients treat tokens as opaque; the
format is kept so that a token from localcluster reads like one from a real cluster.
"""

from __future__ import annotations

import base64
import binascii
import json

from localcluster import errors

VERSION = "meta.k8s.io/v1"
LATEST = -1

# The real server's answers (k8s.io/apiserver storage/continue.go and etcd3/store.go).
_INVALID = "continue key is not valid"
TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list."
)


def encode(start: str, revision: int) -> str:
    body = json.dumps({"v": VERSION, "rv": revision, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()


def decode(token: str) -> tuple[str, int]:
    """``(start key, revision)`` of a token; 400 BadRequest for anything else."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        content = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise _invalid(f"{_INVALID}: {exc}") from exc
    if not isinstance(content, dict) or content.get("v") != VERSION:
        raise _invalid(f"{_INVALID}: server does not recognize this encoded version")
    revision, start = content.get("rv"), content.get("start")
    if not isinstance(revision, int) or revision == 0:
        raise _invalid(
            f"{_INVALID}: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        )
    if not isinstance(start, str) or not start:
        raise _invalid(f"{_INVALID}: encoded start key empty (version meta.k8s.io/v1)")
    return start, revision


def _invalid(reason: str) -> errors.ApiError:
    return errors.bad_request(f"invalid continue token: {reason}")
