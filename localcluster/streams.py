"""``pods/exec`` and ``pods/attach`` over WebSocket, with the channel protocol kubectl and the
Kubernetes clients speak (``v5.channel.k8s.io``, ``v4.channel.k8s.io``); port forwarding, which
shares it, is ``localcluster.portforward``.

Every binary message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the error
channel (one ``Status`` when the command ends: ``Success``, or ``NonZeroExitCode`` with the
code as its cause), 4 terminal resize; in v5, 255 closes a channel (the client's end of stdin).
The command runs with the container's environment and working directory, inside its mount and
PID namespaces (``localcluster.launch --enter``), so it sees the container's volumes and only
its processes. A closed connection kills what it started.

Attach joins the container's own process: its output from then on (stdout and stderr, as the
container's log merges them) and, when the container asks for one (``stdin: true``), its
standard input; ``stdinOnce`` closes that input when the first client attached to it ends
its input or detaches, as the kubelet does.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import signal
import struct
import termios
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from localcluster import errors

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")


@dataclass
class ExecTarget:
    """Where a command runs: argv prefix that enters the container, its env and directory."""

    enter: list[str]
    env: dict[str, str]
    cwd: str
    resolve: Any  # Callable[[list[str]], list[str]]: the command's argv as the image runs it
    started: set[asyncio.subprocess.Process] = field(default_factory=set)


@dataclass
class AttachTarget:
    """What an attach joins: its client's queue of the container's output (registered with
    the running attempt, which ends it with None), and the container's standard input."""

    output: asyncio.Queue[bytes | None]
    listeners: set[asyncio.Queue[bytes | None]]
    stdin: asyncio.StreamWriter | None
    stdin_once: bool
    # A tty container's terminal, as it is when asked (None once its attempt ended): the
    # client's resizes go to it.
    terminal: Callable[[], int | None] = lambda: None


class _TerminalProtocol(asyncio.StreamReaderProtocol):
    """A terminal's master reads EIO once no process holds its other side: that is its end of
    output, not an error (what was read before it still reaches the reader)."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(None)


async def terminal(
    master: int,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Callable[[], None]]:
    """A container terminal's master side as a stream of its output and one for its input,
    each on a duplicate of ``master`` (the caller keeps it, for resizes), and what closes
    both."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    reading, _ = await loop.connect_read_pipe(
        lambda: _TerminalProtocol(reader), os.fdopen(os.dup(master), "rb", buffering=0)
    )
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
        os.fdopen(os.dup(master), "wb", buffering=0),
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)

    def close() -> None:
        writer.close()
        reading.close()

    return reader, writer, close


async def lines(stream: asyncio.StreamReader, cap: int = 65536) -> AsyncIterator[bytes]:
    """A container's output line by line, a line longer than ``cap`` in pieces of ``cap``
    (a progress bar redrawn with ``\\r`` has no newline for a long time)."""
    pending = b""
    while chunk := await stream.read(65536):
        pending += chunk
        while (end := pending.find(b"\n")) >= 0 or len(pending) >= cap:
            cut = end + 1 if 0 <= end < cap else cap
            yield pending[:cut]
            pending = pending[cut:]
    if pending:
        yield pending


ATTACH_BACKLOG = 4096  # lines an attached client may fall behind before it misses some


def offer(queue: asyncio.Queue[bytes | None], item: bytes | None) -> None:
    """Queue ``item`` for an attached client; one far behind loses its oldest line instead,
    so the container never waits and the end of output (None) always arrives."""
    while True:
        try:
            queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            queue.get_nowait()


def options(query: Any) -> dict[str, Any]:
    """The PodExecOptions of a query, checked as the real API server checks them."""

    def flag(name: str, default: bool) -> bool:
        value = query.get(name)
        return default if value is None else value.lower() in ("true", "1")

    opts = {
        "command": query.getall("command", []),
        "container": query.get("container", ""),
        "stdin": flag("stdin", False),
        "stdout": flag("stdout", True),
        "stderr": flag("stderr", True),
        "tty": flag("tty", False),
    }
    if not (opts["stdin"] or opts["stdout"] or opts["stderr"]):
        raise errors.bad_request("you must specify at least 1 of stdin, stdout, stderr")
    if opts["tty"] and opts["stderr"]:
        opts["stderr"] = False  # one stream with a terminal, as the kubelet merges them
    return opts


def _status(code: int, command: list[str]) -> dict[str, Any]:
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": (
            f"command terminated with non-zero exit code: error executing command {command}, "
            f"exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def _failure(message: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


async def upgrade(request: web.Request) -> web.WebSocketResponse:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise errors.bad_request("Upgrade request required")
    ws = web.WebSocketResponse(protocols=PROTOCOLS, heartbeat=None, max_msg_size=0)
    await ws.prepare(request)
    return ws


async def send(ws: web.WebSocketResponse, channel: int, data: bytes) -> None:
    if not ws.closed:
        with contextlib.suppress(ConnectionResetError):
            await ws.send_bytes(bytes([channel]) + data)


async def run_exec(
    request: web.Request, target: ExecTarget, opts: dict[str, Any]
) -> web.StreamResponse:
    ws = await upgrade(request)
    command: list[str] = opts["command"]
    try:
        argv = target.resolve(command)
    except FileNotFoundError as exc:
        message = (
            f"error executing command in container: failed to exec in container: exec: "
            f'"{command[0]}": executable file not found in $PATH: {exc}'
        )
        await send(ws, ERROR, json.dumps(_failure(message)).encode())
        await ws.close()
        return ws
    master = slave = -1
    if opts["tty"]:
        master, slave = pty.openpty()
        streams: dict[str, Any] = {"stdin": slave, "stdout": slave, "stderr": slave}
    else:
        streams = {
            "stdin": asyncio.subprocess.PIPE if opts["stdin"] else asyncio.subprocess.DEVNULL,
            "stdout": asyncio.subprocess.PIPE if opts["stdout"] else asyncio.subprocess.DEVNULL,
            "stderr": asyncio.subprocess.PIPE if opts["stderr"] else asyncio.subprocess.DEVNULL,
        }
    process = await asyncio.create_subprocess_exec(
        *target.enter, *argv, env=target.env, cwd=target.cwd, start_new_session=True, **streams
    )
    target.started.add(process)
    if slave >= 0:
        os.close(slave)
    pumps = []
    if opts["tty"]:
        pumps.append(asyncio.ensure_future(_pump_pty(master, ws)))
    else:
        for stream, channel in ((process.stdout, STDOUT), (process.stderr, STDERR)):
            if stream is not None:
                pumps.append(asyncio.ensure_future(_pump(stream, channel, ws)))
    reader = asyncio.ensure_future(_read_client(ws, process, master))
    try:
        waiter = asyncio.ensure_future(process.wait())
        await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():  # the client went away: stop what it started
            _kill(process)
        code = await waiter
        await asyncio.gather(*pumps, return_exceptions=True)
        await send(ws, ERROR, json.dumps(_status(code, command)).encode())
    finally:
        reader.cancel()
        for pump in pumps:
            pump.cancel()
        _kill(process)
        target.started.discard(process)
        if master >= 0:
            os.close(master)
        await ws.close()
    return ws


async def run_attach(
    request: web.Request, target: AttachTarget, opts: dict[str, Any]
) -> web.StreamResponse:
    output, stdin = target.output, target.stdin if opts["stdin"] else None
    try:
        ws = await upgrade(request)
    except BaseException:
        target.listeners.discard(output)
        raise

    async def pump() -> None:
        while (line := await output.get()) is not None:
            if opts["stdout"] or opts["tty"]:
                await send(ws, STDOUT, line)

    def detach_stdin() -> None:
        if stdin is not None and target.stdin_once:
            stdin.close()  # the container reads its end of input

    async def read() -> None:
        async for message in ws:
            if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                continue
            data = message.data if isinstance(message.data, bytes) else message.data.encode()
            channel, payload = (data[0], data[1:]) if data else (-1, b"")
            if channel == STDIN and payload and stdin is not None and not stdin.is_closing():
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    stdin.write(payload)
                    await stdin.drain()
            elif channel == CLOSE and payload[:1] == bytes([STDIN]):
                detach_stdin()  # the client's input ended; its output keeps coming
            elif channel == RESIZE and opts["tty"] and (master := target.terminal()) is not None:
                _resize(master, payload)

    pumping, reading = asyncio.ensure_future(pump()), asyncio.ensure_future(read())
    try:
        await asyncio.wait({pumping, reading}, return_when=asyncio.FIRST_COMPLETED)
        if pumping.done():  # the container exited (its output ended), or sending failed
            failed = pumping.exception()
            status = _failure(f"error attaching to container: {failed}") if failed else {
                "metadata": {}, "status": "Success"
            }  # fmt: skip
            await send(ws, ERROR, json.dumps(status).encode())
    finally:
        target.listeners.discard(output)
        pumping.cancel()
        reading.cancel()
        detach_stdin()
        await ws.close()
    return ws


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


async def _pump(stream: asyncio.StreamReader, channel: int, ws: web.WebSocketResponse) -> None:
    while chunk := await stream.read(65536):
        await send(ws, channel, chunk)


async def _pump_pty(master: int, ws: web.WebSocketResponse) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await loop.run_in_executor(None, os.read, master, 65536)
        except OSError:  # EIO: every holder of the terminal's other end has gone
            return
        if not chunk:
            return
        await send(ws, STDOUT, chunk)


async def _read_client(
    ws: web.WebSocketResponse, process: asyncio.subprocess.Process, master: int
) -> None:
    """Stdin and resizes from the client, until it closes the connection."""
    async for message in ws:
        if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
            continue
        data = message.data if isinstance(message.data, bytes) else message.data.encode()
        if not data:
            continue
        channel, payload = data[0], data[1:]
        if channel == STDIN and payload:
            if master >= 0:
                os.write(master, payload)
            elif process.stdin is not None:
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    process.stdin.write(payload)
                    await process.stdin.drain()
        elif channel == RESIZE and master >= 0:
            _resize(master, payload)
        elif channel == CLOSE and payload[:1] == bytes([STDIN]) and process.stdin is not None:
            process.stdin.close()


def _resize(master: int, payload: bytes) -> None:
    """A terminal resize from the client (``{"Width": 80, "Height": 24}``)."""
    with contextlib.suppress(ValueError, OSError):  # a bad message, or the terminal is gone
        size = json.loads(payload or b"{}")
        winsize = struct.pack("HHHH", size.get("Height", 24), size.get("Width", 80), 0, 0)
        fcntl.ioctl(master, termios.TIOCSWINSZ, winsize)
