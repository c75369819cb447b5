"""Container logs as the kubelet serves them: an attempt's timestamped lines, ``previous``,
``tailLines``, ``sinceSeconds``/``sinceTime``, ``timestamps``, and ``follow`` until the
attempt ends."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localcluster import errors
from localcluster.store import Obj

if TYPE_CHECKING:
    from localcluster.kubelet import ContainerRun, PodWorker


def stream_logs(
    state_dir: Path, worker: PodWorker | None, pod: Obj, container: str, options: dict[str, Any]
) -> AsyncIterator[bytes]:
    """A container's log (an earlier attempt's with ``previous``), followed while it runs."""
    name = pod["metadata"]["name"]
    log_dir = (
        state_dir
        / "pods"
        / f"{pod['metadata']['namespace']}_{pod['metadata']['name']}_{pod['metadata']['uid']}"
        / "logs"
        / container
    )
    run = worker.container(container) if worker else None
    attempt = run.restart_count if run else _latest_attempt(log_dir)
    if options["previous"]:
        if attempt is None or attempt == 0:
            raise errors.bad_request(
                f'previous terminated container "{container}" in pod "{name}" not found'
            )
        attempt -= 1
    if attempt is None:
        raise errors.bad_request(
            f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating'
        )
    path = log_dir / f"{attempt}.log"
    if run is not None and "waiting" in run.state and not path.exists() and not options["previous"]:
        reason = run.state["waiting"].get("reason", "ContainerCreating")
        raise errors.bad_request(
            f'container "{container}" in pod "{name}" is waiting to start: {reason}'
        )
    return _read(path, run if not options["previous"] else None, options)


async def _read(
    path: Path, run: ContainerRun | None, options: dict[str, Any]
) -> AsyncIterator[bytes]:
    since = None
    if options["since_seconds"] is not None:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=options["since_seconds"])
    elif options["since_time"]:
        since = dt.datetime.fromisoformat(options["since_time"].replace("Z", "+00:00"))

    def render(raw: bytes) -> bytes | None:
        stamp, _, text = raw.partition(b" ")
        if since is not None:
            moment = dt.datetime.fromisoformat(stamp[:26].decode() + "+00:00")
            if moment < since:
                return None
        return raw if options["timestamps"] else text

    lines = path.read_bytes().splitlines(keepends=True) if path.exists() else []
    complete = [ln for ln in lines if ln.endswith(b"\n")]
    if options["tail_lines"] is not None:
        complete = complete[-options["tail_lines"] :] if options["tail_lines"] else []
    offset = sum(len(ln) for ln in lines if ln.endswith(b"\n"))
    for line in complete:
        out = render(line)
        if out is not None:
            yield out
    if not options["follow"] or run is None:
        return
    done = run.attempt_done
    if not path.exists():
        return
    with path.open("rb") as handle:
        handle.seek(offset)
        pending = b""
        while True:
            chunk = handle.read()
            if chunk:
                pending += chunk
                *full, pending = pending.split(b"\n")
                for line in full:
                    out = render(line + b"\n")
                    if out is not None:
                        yield out
                continue
            if done.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.2)


def _latest_attempt(log_dir: Path) -> int | None:
    attempts = [int(p.stem) for p in log_dir.glob("*.log") if p.stem.isdigit()]
    return max(attempts) if attempts else None
