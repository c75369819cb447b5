"""The SPDY/3.1 codec on its own: what kubectl's client sends, parsed back, and what breaks it.

kubectl itself drives the whole tunnel in test_exec.py; these cover what it rarely does."""

from __future__ import annotations

import struct
import zlib

import pytest

from localcluster import spdy


def test_the_dictionary_is_the_specifications() -> None:
    # draft-mbelshe-httpbis-spdy-00 section 2.6.10.1: 1423 bytes; zlib names a dictionary by
    # its Adler-32, and this is the id Chromium's and Go's SPDY/3 code declare.
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2


def test_frames_round_trip_across_message_boundaries() -> None:
    client, server = spdy.Codec(), spdy.Codec()
    headers = {"streamtype": "data", "port": "8080", "requestid": "0"}
    wire = (
        client.syn_stream(1, headers)
        + client.syn_stream(3, {**headers, "requestid": "1"}, fin=True)
        + client.data(1, b"hello", fin=True)
        + client.ping(7)
        + client.rst_stream(3, spdy.CANCEL)
    )
    frames = [f for i in range(0, len(wire), 5) for f in server.feed(wire[i : i + 5])]
    assert [f.kind for f in frames] == [spdy.SYN_STREAM, spdy.SYN_STREAM, 0, spdy.PING,
                                        spdy.RST_STREAM]  # fmt: skip
    first, second, data, ping, reset = frames
    assert first.headers == {"streamtype": ["data"], "port": ["8080"], "requestid": ["0"]}
    assert (first.stream_id, first.fin) == (1, False)
    assert (second.stream_id, second.fin, second.headers["requestid"]) == (3, True, ["1"])
    assert (data.stream_id, data.data, data.fin) == (1, b"hello", True)
    assert ping.value == 7
    assert (reset.stream_id, reset.value) == (3, spdy.CANCEL)


def test_an_unknown_control_frame_is_passed_over() -> None:
    unknown = struct.pack(">HHI", 0x8000 | spdy.VERSION, 0x20, 4) + b"abcd"
    (frame,) = spdy.Codec().feed(unknown)
    assert frame.kind == 0x20


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (struct.pack(">HHI", 0x8000 | 2, spdy.PING, 4) + b"\0\0\0\1", "SPDY version 2"),
        (struct.pack(">HHI", 0x8000 | 3, spdy.PING, 2) + b"\0\1", "type 6 and length 2"),
        (struct.pack(">HHI", 0x8000 | 3, spdy.SYN_REPLY, 8) + b"\0\0\0\1junk", "does not inflate"),
        (struct.pack(">II", 0, 0), "stream 0"),
    ],
)
def test_a_broken_frame_is_a_protocol_error(wire: bytes, reason: str) -> None:
    with pytest.raises(spdy.ProtocolError, match=reason):
        spdy.Codec().feed(wire)
