"""Start one container process with its volumes mounted where the pod spec says.

The kubelet runs ``python -m localcluster.launch --mount SRC:DST[:ro] ... --keep PATH ... --
ARGV...``. In a mount namespace of its own (``unshare(CLONE_NEWNS)``, private propagation) it
bind-mounts each volume's folder at its ``mountPath`` and then ``exec``s the container's
command, so the process -- and only it -- sees ``/etc/config/...`` or ``/data`` exactly as in a
real pod. This needs CAP_SYS_ADMIN (root); without it the container fails to start with a
message that says so. Mount points that do not exist on the machine are created as empty
folders (the one trace a pod leaves outside the state folder).

A real container has a root filesystem of its own, so a volume at ``/tmp`` hides nothing it
needs. Here the container shares the machine's: its interpreter, its code and its pod folder
may live under a mount point (a checkout in ``/tmp``, say). Every ``--keep`` path under a mount
point is therefore bound back into place from the original folder (reached through a file
descriptor opened before the mount), so the volume hides everything but what the container
runs from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _parse(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    split = argv.index("--")
    options = list(zip(argv[:split:2], argv[1:split:2], strict=True))
    mounts = [value for flag, value in options if flag == "--mount"]
    keep = [value for flag, value in options if flag == "--keep"]
    return mounts, keep, argv[split + 1 :]


def _under(path: str, folder: str) -> str | None:
    """``path`` relative to ``folder`` if it lies strictly inside it."""
    rel = os.path.relpath(path, folder)
    return None if rel == "." or rel.startswith("..") else rel


def main(argv: list[str]) -> None:
    mounts, keep, command = _parse(argv)
    if mounts:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        try:
            _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
            for spec in mounts:
                source, target, *mode = spec.split(":")
                if os.path.isdir(source):
                    os.makedirs(target, exist_ok=True)
                elif not os.path.exists(target):
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    open(target, "a").close()
                hidden = [(k, rel) for k in keep if (rel := _under(k, target)) and os.path.isdir(k)]
                original = os.open(target, os.O_PATH | os.O_DIRECTORY) if hidden else -1
                _check(
                    libc.mount(source.encode(), target.encode(), None, MS_BIND, None),
                    f"bind {target}",
                )
                for _, rel in hidden:
                    inside = os.path.join(target, rel)
                    os.makedirs(inside, exist_ok=True)
                    origin = f"/proc/self/fd/{original}/{rel}".encode()
                    _check(
                        libc.mount(origin, inside.encode(), None, MS_BIND | MS_REC, None),
                        f"keep {inside}",
                    )
                if original >= 0:
                    os.close(original)
                if mode == ["ro"]:
                    flags = MS_BIND | MS_REMOUNT | MS_RDONLY
                    _check(
                        libc.mount(source.encode(), target.encode(), None, flags, None),
                        f"ro {target}",
                    )
        except OSError as exc:
            print(
                f"localcluster: cannot mount volumes ({exc}); volume mounts need root",
                file=sys.stderr,
            )
            sys.exit(128)
    os.execvp(command[0], command)  # noqa: S606 - running the pod spec's command is the point


if __name__ == "__main__":
    main(sys.argv[1:])
