"""``pods/portforward`` in the two forms clients speak over WebSocket.

- **Channels** (``v4.channel.k8s.io``, the Python and other clients' portforward): the ports
  come in the query; per port ``i`` a data channel ``2i`` and an error channel ``2i+1``, each
  opened with the port number (two bytes, little-endian), then the bytes of one TCP connection.
- **SPDY tunnelled through the WebSocket** (``SPDY/3.1+portforward.k8s.io``, kubectl 1.31+):
  each forwarded connection is a pair of SPDY streams with the same ``requestID`` header, an
  error stream and a data stream, both naming the ``port``. Each connection to the pod ends as
  the kubelet's runtime ends it: when one direction is done the other gets a second to finish,
  then both streams close (FIN); a refused connection writes ``error forwarding port ...`` on
  the error stream, which kubectl prints. The client's PINGs are answered.

kubectl before 1.31 (or with ``KUBECTL_PORT_FORWARD_WEBSOCKETS=false``) upgrades the HTTP
connection to SPDY itself, without a WebSocket: that is not served, and the 400 says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from localcluster import errors, spdy
from localcluster.streams import PROTOCOLS, send, upgrade

SPDY_TUNNEL = "SPDY/3.1+portforward.k8s.io"
LINGER = 1.0  # seconds the other direction gets once one is done (containerd's figure)


def offered(request: web.Request) -> set[str]:
    return {p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")}


def tunnels_spdy(request: web.Request) -> bool:
    return SPDY_TUNNEL in offered(request)


def require_channels(request: web.Request) -> None:
    """400 unless the client offers a protocol served here (see the module's docstring)."""
    if not offered(request) & {*PROTOCOLS, SPDY_TUNNEL}:
        raise errors.bad_request(
            "localcluster serves port forwarding over WebSocket only: the v4.channel.k8s.io "
            f"protocol or SPDY tunnelled through it ({SPDY_TUNNEL}, kubectl 1.31 and later); "
            "unset KUBECTL_PORT_FORWARD_WEBSOCKETS=false"
        )


async def run_channels(request: web.Request, host: str, ports: list[int]) -> web.StreamResponse:
    ws = await upgrade(request)
    writers: dict[int, asyncio.StreamWriter] = {}
    pumps = []
    for index, port in enumerate(ports):
        prefix = port.to_bytes(2, "little")
        await send(ws, 2 * index, prefix)
        await send(ws, 2 * index + 1, prefix)
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            await send(ws, 2 * index + 1, f"error forwarding port {port} to pod: {exc}".encode())
            continue
        writers[2 * index] = writer
        pumps.append(asyncio.ensure_future(_pump_channel(reader, 2 * index, ws)))
    closer = asyncio.ensure_future(_close_when_done(pumps, ws)) if pumps else None
    try:
        async for frame in ws:
            if frame.type != WSMsgType.BINARY or not frame.data:
                continue
            target = writers.get(frame.data[0])
            if target is not None and len(frame.data) > 1:
                target.write(frame.data[1:])
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    await target.drain()
    finally:
        for pump in [*pumps, *([closer] if closer else [])]:
            pump.cancel()
        for writer in writers.values():
            writer.close()
        await ws.close()
    return ws


async def _pump_channel(
    reader: asyncio.StreamReader, channel: int, ws: web.WebSocketResponse
) -> None:
    while chunk := await reader.read(65536):
        await send(ws, channel, chunk)


async def _close_when_done(pumps: list[asyncio.Task[None]], ws: web.WebSocketResponse) -> None:
    """The pod's side closed every connection: end the stream, as the real server does."""
    await asyncio.gather(*pumps, return_exceptions=True)
    await ws.close()


@dataclass
class _Pair:
    """One forwarded connection: its two streams, what the client sent before the pod's
    connection was open (None: the client's end of it), the task that serves it and its two
    copying tasks, and the streams the client reset (nothing more is sent on those)."""

    port: int
    error: int = 0
    data: int = 0
    inbound: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    reset: set[int] = field(default_factory=set)


class _Tunnel:
    def __init__(self, ws: web.WebSocketResponse, host: str, pod: str) -> None:
        self.ws, self.host, self.pod = ws, host, pod
        self.codec = spdy.Codec()
        self.pairs: dict[str, _Pair] = {}
        self.by_stream: dict[int, _Pair] = {}
        self.last_stream = 0

    async def write(self, data: bytes) -> None:
        if not self.ws.closed:
            with contextlib.suppress(ConnectionResetError):
                await self.ws.send_bytes(data)

    async def handle(self, frame: spdy.Frame) -> bool:
        """Act on one frame from the client; False once the client has gone away."""
        if frame.kind == spdy.SYN_STREAM:
            await self._open(frame)
        elif frame.kind == 0:
            pair = self.by_stream.get(frame.stream_id)
            if pair is not None and frame.stream_id == pair.data:
                if frame.data:
                    pair.inbound.put_nowait(frame.data)
                if frame.fin:
                    pair.inbound.put_nowait(None)
        elif frame.kind == spdy.RST_STREAM:
            # client-go resets the data stream once it has the pod's end, then waits for the
            # error stream to end: stop copying, and let _forward close what is still open.
            pair = self.by_stream.get(frame.stream_id)
            if pair is not None:
                pair.reset.add(frame.stream_id)
                for pump in pair.pumps:
                    pump.cancel()
        elif frame.kind == spdy.PING and frame.value % 2:  # the client's (odd): answer it
            await self.write(self.codec.ping(frame.value))
        elif frame.kind == spdy.GOAWAY:
            return False
        return True

    async def _open(self, frame: spdy.Frame) -> None:
        headers = {name: values[0] for name, values in frame.headers.items() if values}
        kind, request, port = (headers.get(k, "") for k in ("streamtype", "requestid", "port"))
        self.last_stream = max(self.last_stream, frame.stream_id)
        if (
            kind not in ("error", "data")
            or not port.isascii()
            or not port.isdigit()
            or not (0 < int(port) < 65536)
        ):
            await self.write(self.codec.rst_stream(frame.stream_id, spdy.PROTOCOL_ERROR))
            return
        await self.write(self.codec.syn_reply(frame.stream_id))
        pair = self.pairs.setdefault(request, _Pair(int(port)))
        setattr(pair, kind, frame.stream_id)
        self.by_stream[frame.stream_id] = pair
        if kind == "data" and frame.fin:  # opened and ended at once: nothing to send
            pair.inbound.put_nowait(None)
        if pair.error and pair.data and pair.task is None:
            pair.task = asyncio.ensure_future(self._forward(request, pair))

    async def _forward(self, request: str, pair: _Pair) -> None:
        writer = None
        try:
            try:
                reader, writer = await asyncio.open_connection(self.host, pair.port)
            except OSError as exc:
                # worded as containerd does: "dial tcp4 10.0.0.5:99: connect: connection refused"
                reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                dial = f"dial tcp4 {self.host}:{pair.port}: connect: {reason}"
                message = f"error forwarding port {pair.port} to pod {self.pod}: {dial}"
                await self.write(self.codec.data(pair.error, message.encode()))
                return
            pair.pumps = [
                asyncio.ensure_future(self._upstream(pair, writer)),
                asyncio.ensure_future(self._downstream(pair, reader)),
            ]
            if pair.data in pair.reset:  # reset before the connection was open
                for pump in pair.pumps:
                    pump.cancel()
            try:
                _, pending = await asyncio.wait(pair.pumps, return_when=asyncio.FIRST_COMPLETED)
                if pending:
                    await asyncio.wait(pending, timeout=LINGER)
            finally:
                for pump in pair.pumps:
                    pump.cancel()
        finally:
            if writer is not None:
                writer.close()
            self.pairs.pop(request, None)
            self.by_stream.pop(pair.error, None)
            self.by_stream.pop(pair.data, None)
            # Both ends in one message, so nothing can come between them.
            ends = [self.codec.data(s, b"", fin=True) for s in (pair.data, pair.error)
                    if s not in pair.reset]  # fmt: skip
            if ends:
                await self.write(b"".join(ends))

    @staticmethod
    async def _upstream(pair: _Pair, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            while (chunk := await pair.inbound.get()) is not None:
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    async def _downstream(self, pair: _Pair, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                await self.write(self.codec.data(pair.data, chunk))

    async def close(self) -> None:
        tasks = [pair.task for pair in self.pairs.values() if pair.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_spdy(request: web.Request, host: str, pod: str) -> web.StreamResponse:
    # kubectl answers WebSocket pings: a client gone without closing is noticed within 60 s.
    ws = web.WebSocketResponse(protocols=(SPDY_TUNNEL,), heartbeat=30, max_msg_size=0)
    await ws.prepare(request)
    tunnel = _Tunnel(ws, host, pod)
    try:
        async for message in ws:
            if message.type != WSMsgType.BINARY:
                continue
            going = [await tunnel.handle(frame) for frame in tunnel.codec.feed(message.data)]
            if not all(going):
                break
    except spdy.ProtocolError:
        await tunnel.write(tunnel.codec.goaway(tunnel.last_stream, status=1))
    finally:
        await tunnel.close()
        await ws.close()
    return ws
