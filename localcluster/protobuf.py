"""Protobuf request bodies (``application/vnd.kubernetes.protobuf``), as client-go sends them.

client-go's typed clients (``kubectl create configmap|secret|deployment|job``, Helm's release
Secrets) write bodies as protobuf: the magic ``k8s\\x00``, then a ``runtime.Unknown`` envelope
with the object's apiVersion and kind and its bytes. localcluster stores JSON dicts, so this
module turns such a body into the dict the real API server would have got had the client sent
JSON. Responses stay JSON: clients that send protobuf also accept JSON, and answer by the
response's Content-Type.

Nothing here is a guess at the wire format: the messages come from the published Kubernetes
``generated.proto`` files (vendored under ``proto/``, compiled into ``proto/kubernetes.binpb``
by ``tools/k8s_proto.py``), parsed by the protobuf library. How each field looks in JSON comes
from the Go struct tags of the same types (``proto/json_tags.json``): its JSON name, whether it
is inlined into its parent (a Volume's ``emptyDir``), and whether a zero value is dropped
(``omitempty``) or kept because the Go field is a pointer (``replicas: 0``). client-go's
encoder writes every non-pointer field, zero or not, so without the tags a decoded object
would carry ``namespace: ""`` and ``generation: 0`` where JSON carries nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from localcluster import errors

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"
PROTO_DIR = Path(__file__).resolve().with_name("proto")
_META = "k8s.io.apimachinery.pkg.apis.meta.v1"
_UNKNOWN = "k8s.io.apimachinery.pkg.runtime.Unknown"
# Kinds meta/v1 adds to every group version (``AddToGroupVersion``): client-go sends a
# DeleteOptions as "v1", "apps/v1", "meta.k8s.io/v1", ... depending on the client.
_OPTIONS_KINDS = frozenset(
    {"DeleteOptions", "CreateOptions", "UpdateOptions", "PatchOptions", "GetOptions", "ListOptions"}
)
# The one media type localcluster reads (besides protobuf) and writes, as 406 and 415 list it.
_JSON_TYPES = "application/json"

ApiVersionKind = tuple[str, str]


class Malformed(Exception):
    """The body is not a valid encoding of its message; the API server answers 400."""


@dataclass(frozen=True)
class JsonTag:
    """How one proto field appears in JSON, from the Go struct tag of the same field."""

    name: str
    omitempty: bool = True
    pointer: bool = False
    inline: bool = False

    @classmethod
    def parse(cls, tag: str) -> JsonTag:
        """``*replicas,omitempty`` -> pointer, named "replicas", omitted when empty."""
        pointer = tag.startswith("*")
        name, *options = tag.removeprefix("*").split(",")
        return cls(name, "omitempty" in options, pointer, "inline" in options)


@dataclass(frozen=True)
class Schema:
    pool: descriptor_pool.DescriptorPool
    groups: dict[str, str]  # apiVersion -> proto package
    lists: frozenset[str]  # messages that are a Go slice: JSON is their ``items``
    tags: dict[str, dict[int, JsonTag]]  # message -> field number -> JSON tag

    def message(self, api_version: str, kind: str) -> Descriptor | None:
        """The proto message of a kind, or None if no vendored package declares it."""
        package = _META if kind in _OPTIONS_KINDS else self.groups.get(api_version)
        if package is None:
            return None
        try:
            found: Descriptor = self.pool.FindMessageTypeByName(f"{package}.{kind}")
        except KeyError:
            return None
        return found

    def tag(self, field: FieldDescriptor) -> JsonTag:
        known = self.tags.get(field.containing_type.full_name, {}).get(field.number)
        return known or JsonTag(field.name)


@functools.cache
def schema() -> Schema:
    """The vendored descriptor set and Go JSON tags, loaded once."""
    files = descriptor_pb2.FileDescriptorSet.FromString(
        (PROTO_DIR / "kubernetes.binpb").read_bytes()
    )
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    tags = json.loads((PROTO_DIR / "json_tags.json").read_text())
    return Schema(
        pool=pool,
        groups=tags["groups"],
        lists=frozenset(tags["lists"]),
        tags={
            message: {int(n): JsonTag.parse(t) for n, t in fields.items()}
            for message, fields in tags["messages"].items()
        },
    )


def is_protobuf(content_type: str) -> bool:
    """Whether a Content-Type header names the Kubernetes protobuf encoding."""
    return content_type.split(";")[0].strip().lower() == MEDIA_TYPE


def check_accept(header: str) -> None:
    """406 when a client accepts protobuf only: localcluster answers in JSON, and the real
    server answers 406 Not Acceptable for a media type it cannot produce."""
    ranges = [r.split(";")[0].strip().lower() for r in header.split(",") if r.strip()]
    if ranges and all(r == MEDIA_TYPE for r in ranges):
        raise errors.ApiError(
            406,
            "NotAcceptable",
            f"only the following media types are accepted: {_JSON_TYPES}",
        )


def decode(body: bytes, expected_kind: ApiVersionKind) -> dict[str, Any]:
    """The JSON dict of a protobuf body sent to an endpoint that takes ``expected_kind``
    (apiVersion, kind): 415 if that kind has no protobuf encoding, 400 if the body is not a
    valid encoding of it."""
    types = schema()
    expected = types.message(*expected_kind)
    if expected is None:
        raise errors.ApiError(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: "
            f"{_JSON_TYPES} ({expected_kind[1]} of {expected_kind[0]} has no protobuf encoding)",
        )
    api_version, kind, raw = _envelope(body, expected_kind)
    message = _message_of(types, api_version, kind, expected_kind)
    try:
        parsed = message_factory.GetMessageClass(message).FromString(raw)
        obj = _object(parsed)
    except (DecodeError, Malformed) as exc:
        raise _cannot_handle(api_version, kind, expected_kind, str(exc)) from exc
    return {"kind": kind, "apiVersion": api_version, **obj}


def _cannot_handle(
    api_version: str, kind: str, expected_kind: ApiVersionKind, why: str
) -> errors.ApiError:
    """400 in the words of the real server's decode error for a body of a known kind."""
    version = api_version.rsplit("/", 1)[-1]
    return errors.bad_request(
        f'{kind} in version "{version}" cannot be handled as a {expected_kind[1]}: {why}'
    )


def _unrecognized(body: bytes, expected_kind: ApiVersionKind, why: str) -> errors.ApiError:
    """400 for a body that is not even an envelope, with its first bytes in hex as the real
    server shows them."""
    summary = body[:30].hex() + (" ..." if len(body) > 30 else "") if body else "<empty>"
    return errors.bad_request(
        f"the object provided is unrecognized (must be of type {expected_kind[1]}): "
        f"{why} ({summary})"
    )


def _envelope(body: bytes, expected_kind: ApiVersionKind) -> tuple[str, str, bytes]:
    """apiVersion, kind and the object's bytes from the ``runtime.Unknown`` envelope; a
    missing apiVersion or kind defaults to the endpoint's, as the real decoder does."""
    if not body.startswith(MAGIC):
        prefix = "[" + " ".join(str(b) for b in MAGIC) + "]"
        why = f"provided data does not appear to be a protobuf message, expected prefix {prefix}"
        raise _unrecognized(body, expected_kind, why)
    if len(body) == len(MAGIC):
        raise _unrecognized(body, expected_kind, "empty body")
    try:
        unknown = _unknown(body[len(MAGIC) :])
    except DecodeError as exc:
        raise _unrecognized(body, expected_kind, f"the runtime.Unknown envelope: {exc}") from exc
    api_version = unknown.typeMeta.apiVersion or expected_kind[0]
    kind = unknown.typeMeta.kind or expected_kind[1]
    if unknown.contentEncoding:
        why = f'content encoding "{unknown.contentEncoding}" is not supported'
        raise _cannot_handle(api_version, kind, expected_kind, why)
    if unknown.contentType not in ("", MEDIA_TYPE):
        why = f'the envelope holds "{unknown.contentType}", not {MEDIA_TYPE}'
        raise _cannot_handle(api_version, kind, expected_kind, why)
    return api_version, kind, bytes(unknown.raw)


def _unknown(data: bytes) -> Any:
    """The ``runtime.Unknown`` envelope parsed from ``data`` (DecodeError if it is not one)."""
    envelope = schema().pool.FindMessageTypeByName(_UNKNOWN)
    return message_factory.GetMessageClass(envelope).FromString(data)


def _message_of(
    types: Schema, api_version: str, kind: str, expected_kind: ApiVersionKind
) -> Descriptor:
    """The message of the envelope's kind, which must be the one the endpoint takes (any
    group version for DeleteOptions and the other option kinds)."""
    message = types.message(api_version, kind)
    if message is None:
        why = f'no kind "{kind}" is registered for version "{api_version}"'
        raise _cannot_handle(api_version, kind, expected_kind, why)
    same_version = api_version == expected_kind[0] or kind in _OPTIONS_KINDS
    if kind != expected_kind[1] or not same_version:
        why = f"the body is a {kind} of {api_version}, this endpoint takes {expected_kind[1]}"
        raise _cannot_handle(api_version, kind, expected_kind, why)
    return message


# -- proto message -> JSON ------------------------------------------------------------------


def _object(message: Message) -> Any:
    """The JSON value of a message: a well-known type's own form, or an object of its fields
    named, inlined and omitted as their Go JSON tags say."""
    name = message.DESCRIPTOR.full_name
    special = CUSTOM_JSON.get(name)
    if special is not None:
        return special(message)
    if name in schema().lists:
        (items,) = message.DESCRIPTOR.fields
        return _repeated(items, getattr(message, items.name))
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        tag = schema().tag(field)
        if tag.name == "-":
            continue
        if field.is_repeated:
            out[tag.name] = _repeated(field, value)
        elif tag.inline:
            out.update(_object(value))
        elif not _dropped(field, value, tag):
            out[tag.name] = _single(field, value)
    return out


def _dropped(field: FieldDescriptor, value: Any, tag: JsonTag) -> bool:
    """Whether Go's JSON encoder leaves a set field out: a zero value of an ``omitempty``
    field that is not a pointer. A plain message is never left out (Go writes ``{}``); a
    well-known type is, when zero, like a scalar."""
    if not tag.omitempty or tag.pointer:
        return False
    if field.message_type is None:
        return _zero(value)
    if field.message_type.full_name not in CUSTOM_JSON:
        return False
    return all(_zero(v) for _, v in value.ListFields())


def _zero(value: Any) -> bool:
    return value in (0, "", b"", False)


def _repeated(field: FieldDescriptor, values: Any) -> Any:
    """A list, or a JSON object for a map field."""
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        value_field = message.fields_by_name["value"]
        return {str(k): _single(value_field, values[k]) for k in values}
    return [_single(field, v) for v in values]


def _single(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        return _object(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def _time(message: Any, fraction: bool) -> str | None:
    """metav1.Time (RFC 3339 to the second) or MicroTime (to the microsecond); a zero time is
    JSON null, as Go writes it."""
    if not message.seconds and not message.nanos:
        return None
    try:
        moment = dt.datetime.fromtimestamp(message.seconds, dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise Malformed(f"time {message.seconds}s is out of range") from exc
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += f".{message.nanos // 1000:06d}"
    return text + "Z"


def _int_or_string(message: Any) -> int | str:
    if message.type == 0:
        return int(message.intVal)
    if message.type == 1:
        return str(message.strVal)
    raise Malformed(f"impossible IntOrString.Type {message.type}")


def _embedded_json(raw: bytes, what: str) -> Any:
    """A RawExtension or FieldsV1: JSON as is, or a nested protobuf object decoded too."""
    if not raw:
        return None
    if raw.startswith(MAGIC):
        return _nested(raw)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise Malformed(f"{what} is neither JSON nor protobuf: {exc}") from exc


def _nested(raw: bytes) -> Any:
    """An object embedded as protobuf (a RawExtension's): any kind the schema knows."""
    unknown = _unknown(raw[len(MAGIC) :])
    api_version, kind = unknown.typeMeta.apiVersion, unknown.typeMeta.kind
    message = schema().message(api_version, kind)
    if message is None:
        raise Malformed(f'no kind "{kind}" is registered for version "{api_version}"')
    parsed = message_factory.GetMessageClass(message).FromString(unknown.raw)
    return {"kind": kind, "apiVersion": api_version, **_object(parsed)}


def _duration(message: Any) -> str:
    """metav1.Duration as Go's ``time.Duration.String`` writes it: "1h2m3.5s", "1.5ms"."""
    nanos = int(message.duration)
    if nanos == 0:
        return "0s"
    sign, nanos = ("-" if nanos < 0 else ""), abs(nanos)
    if nanos < 10**9:
        units = (("ms", 10**6), ("µs", 10**3), ("ns", 1))
        unit, size = next((u, s) for u, s in units if nanos >= s)
        return sign + _decimal(nanos, size) + unit
    hours, rest = divmod(nanos, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = _decimal(rest, 10**9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    return f"{sign}{minutes}m{text}" if minutes else sign + text


def _decimal(value: int, unit: int) -> str:
    """``value / unit`` without trailing zeros: 1500, 1000 -> "1.5"."""
    whole, fraction = divmod(value, unit)
    digits = str(fraction).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


# Messages whose JSON form Go writes by hand (MarshalJSON) rather than from struct tags.
CUSTOM_JSON: dict[str, Callable[[Any], Any]] = {
    f"{_META}.Time": lambda m: _time(m, fraction=False),
    f"{_META}.MicroTime": lambda m: _time(m, fraction=True),
    f"{_META}.Duration": _duration,
    f"{_META}.FieldsV1": lambda m: _embedded_json(m.Raw, "fieldsV1"),
    "k8s.io.apimachinery.pkg.api.resource.Quantity": lambda m: str(m.string),
    "k8s.io.apimachinery.pkg.api.resource.QuantityValue": lambda m: str(m.string),
    "k8s.io.apimachinery.pkg.util.intstr.IntOrString": _int_or_string,
    "k8s.io.apimachinery.pkg.runtime.RawExtension": lambda m: _embedded_json(m.raw, "raw"),
}
