"""SPDY/3.1 framing, as far as Kubernetes' stream protocols use it (draft-mbelshe-httpbis-spdy-00).

kubectl 1.31+ forwards ports by tunnelling SPDY through a WebSocket (the subprotocol
``SPDY/3.1+portforward.k8s.io``): its client (client-go over moby/spdystream) opens two streams
per forwarded connection, an error stream and a data stream, and pings the connection. This
module reads and writes the frames that takes: SYN_STREAM, SYN_REPLY, RST_STREAM, DATA, PING
and GOAWAY; SETTINGS, HEADERS and WINDOW_UPDATE are read and passed on, as spdystream does
(it has no flow control, so neither side waits for a window); control frames of other types
are ignored, as the draft asks.

Header blocks are zlib streams with the protocol's dictionary (section 2.6.10.1), one
compression context per direction for the whole connection, flushed at the end of each frame.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1, 2, 3, 4, 6, 7, 8, 9
)  # fmt: skip
FLAG_FIN = 0x01
# RST_STREAM status codes (section 2.4.2).
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, CANCEL = 1, 2, 3, 5

# The header compression dictionary of SPDY/3 (section 2.6.10.1): the names and values below,
# each with its 32-bit length, then a run of common status lines, dates and types. Byte for
# byte the specification's; a peer's inflate fails on any other.
_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type", "date",
    "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since", "if-none-match",
    "if-range", "if-unmodified-since", "last-modified", "location", "max-forwards", "pragma",
    "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after", "server", "te",
    "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
    "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url",
    "public", "set-cookie", "keep-alive", "origin",
)  # fmt: skip
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


class ProtocolError(Exception):
    """The peer sent what SPDY/3 does not allow; the connection cannot go on."""


@dataclass
class Frame:
    """One frame. ``kind`` is a control frame's type, or 0 for DATA."""

    kind: int
    flags: int = 0
    stream_id: int = 0
    headers: dict[str, list[str]] = field(default_factory=dict)
    data: bytes = b""
    # RST_STREAM's and GOAWAY's status, PING's id, WINDOW_UPDATE's delta.
    value: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


class Codec:
    """Frames from a byte stream that arrives in pieces, and frames to bytes, for one side of
    one connection (the compression contexts live as long as the connection)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zdict=DICTIONARY)

    def feed(self, data: bytes) -> list[Frame]:
        """The frames that ``data`` completes (a frame may span messages, a message frames)."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= 8:
            length = int.from_bytes(self._buffer[5:8], "big")
            if len(self._buffer) < 8 + length:
                break
            head, body = bytes(self._buffer[:8]), bytes(self._buffer[8 : 8 + length])
            del self._buffer[: 8 + length]
            try:
                frames.append(self._parse(head, body))
            except (struct.error, UnicodeDecodeError) as exc:  # a truncated or garbled block
                raise ProtocolError(f"a malformed frame: {exc}") from exc
        return frames

    def _parse(self, head: bytes, body: bytes) -> Frame:
        word, flags = struct.unpack(">I", head[:4])[0], head[4]
        if not word & 0x80000000:
            if not word:
                raise ProtocolError("a DATA frame on stream 0")
            return Frame(0, flags, word & 0x7FFFFFFF, data=body)
        version, kind = (word >> 16) & 0x7FFF, word & 0xFFFF
        if version != VERSION:
            raise ProtocolError(f"SPDY version {version}, only {VERSION} is spoken")
        if kind in (SYN_STREAM, SYN_REPLY, HEADERS):
            offset = 10 if kind == SYN_STREAM else 4
            if len(body) < offset:
                raise ProtocolError(f"a control frame of type {kind} too short")
            stream_id = struct.unpack(">I", body[:4])[0] & 0x7FFFFFFF
            return Frame(kind, flags, stream_id, headers=self._headers(body[offset:]))
        if kind in (RST_STREAM, WINDOW_UPDATE, GOAWAY) and len(body) == 8:
            first, second = struct.unpack(">II", body)
            if kind == GOAWAY:  # last good stream, status
                return Frame(kind, flags, first & 0x7FFFFFFF, value=second)
            return Frame(kind, flags, first & 0x7FFFFFFF, value=second & 0x7FFFFFFF)
        if kind == PING and len(body) == 4:
            return Frame(kind, flags, value=struct.unpack(">I", body)[0])
        if kind in (RST_STREAM, WINDOW_UPDATE, GOAWAY, PING):
            raise ProtocolError(f"a control frame of type {kind} and length {len(body)}")
        return Frame(kind, flags, data=body)  # SETTINGS, or a type to ignore (section 2.2.1)

    def _headers(self, block: bytes) -> dict[str, list[str]]:
        try:
            raw = self._inflate.decompress(block)
        except zlib.error as exc:
            raise ProtocolError(f"a header block that does not inflate: {exc}") from exc
        count, offset, headers = struct.unpack(">I", raw[:4])[0], 4, {}
        for _ in range(count):
            (size,) = struct.unpack(">I", raw[offset : offset + 4])
            name = raw[offset + 4 : offset + 4 + size].decode()
            offset += 4 + size
            (size,) = struct.unpack(">I", raw[offset : offset + 4])
            value = raw[offset + 4 : offset + 4 + size].decode()
            offset += 4 + size
            headers[name.lower()] = value.split("\x00")
        return headers

    def _block(self, headers: dict[str, str]) -> bytes:
        raw = struct.pack(">I", len(headers))
        for name, value in headers.items():
            raw += struct.pack(">I", len(name)) + name.lower().encode()
            raw += struct.pack(">I", len(value.encode())) + value.encode()
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    @staticmethod
    def _control(kind: int, flags: int, body: bytes) -> bytes:
        return struct.pack(">HHI", 0x8000 | VERSION, kind, flags << 24 | len(body)) + body

    def syn_stream(self, stream_id: int, headers: dict[str, str], fin: bool = False) -> bytes:
        """A client's SYN_STREAM (priority 0, no associated stream): what tests send."""
        body = struct.pack(">IIH", stream_id, 0, 0) + self._block(headers)
        return self._control(SYN_STREAM, FLAG_FIN if fin else 0, body)

    def syn_reply(self, stream_id: int, headers: dict[str, str] | None = None) -> bytes:
        body = struct.pack(">I", stream_id) + self._block(headers or {})
        return self._control(SYN_REPLY, 0, body)

    def rst_stream(self, stream_id: int, status: int) -> bytes:
        return self._control(RST_STREAM, 0, struct.pack(">II", stream_id, status))

    def ping(self, ping_id: int) -> bytes:
        return self._control(PING, 0, struct.pack(">I", ping_id))

    def goaway(self, last_stream_id: int, status: int = 0) -> bytes:
        return self._control(GOAWAY, 0, struct.pack(">II", last_stream_id, status))

    @staticmethod
    def data(stream_id: int, payload: bytes, fin: bool = False) -> bytes:
        flags = FLAG_FIN if fin else 0
        return struct.pack(">II", stream_id, flags << 24 | len(payload)) + payload
