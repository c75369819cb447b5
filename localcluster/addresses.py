"""Which /16s of 127.0.0.0/8 this cluster's pods and Services take, reserved machine-wide.

Pods listen on their own loopback address (``127.<pod octet>.x.y``) and the service proxy on
``127.<service octet>.x.y``. Two clusters on one machine (a test cluster beside the demo, or
beside the end-to-end stack) that drew the same octet would hand out the same addresses, and a
pod would fail to bind its port, or a probe would reach another cluster's pod. So each server
holds an exclusive ``flock`` on one file per octet for as long as it lives: the kernel releases
it when the process exits, however it exits, so no reservation outlives its cluster.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import tempfile
from pathlib import Path
from typing import IO

OCTETS = range(16, 250)
LOCK_DIR = Path(tempfile.gettempdir()) / "localcluster-addresses"


class Reservation:
    """Octets this process holds until :meth:`release` or its exit."""

    def __init__(self, lock_dir: Path = LOCK_DIR) -> None:
        self.lock_dir = lock_dir
        self._held: dict[int, IO[bytes]] = {}

    def take(self, count: int) -> list[int]:
        """Reserve ``count`` octets no other live cluster holds; in random order."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        candidates = list(OCTETS)
        random.shuffle(candidates)
        taken: list[int] = []
        for octet in candidates:
            if len(taken) == count:
                break
            if self._lock(octet):
                taken.append(octet)
        if len(taken) < count:
            self.release()
            raise RuntimeError(
                f"every loopback /16 from 127.{OCTETS[0]} to 127.{OCTETS[-1]} is held by another "
                f"running localcluster (see {self.lock_dir}); stop one of them"
            )
        return taken

    def _lock(self, octet: int) -> bool:
        handle = (self.lock_dir / f"127.{octet}.lock").open("a+b")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._held[octet] = handle
        return True

    def release(self) -> None:
        for handle in self._held.values():
            with contextlib.suppress(OSError):
                handle.close()
        self._held.clear()
