"""Start one container process with its volumes mounted, or run a command inside a container.

``python -S launch.py [--mount SRC:DST[:ro]]... [--keep PATH]... -- ARGV``

In a mount namespace of its own (``unshare(CLONE_NEWNS)``, private propagation) it bind-mounts
each volume's folder at its ``mountPath``, so the process -- and only it -- sees
``/etc/config/...`` or ``/data`` exactly as in a real pod, then ``exec``s ARGV. Mount points
that do not exist on the machine are created as empty folders (the one trace a pod leaves
outside the state folder).

A real container has a root filesystem of its own, so a volume at ``/tmp`` hides nothing it
needs. Here the container shares the machine's: its interpreter, its code and its pod folder
may live under a mount point (a checkout in ``/tmp``, say). Every ``--keep`` path under a mount
point is therefore bound back into place from the original folder (reached through a file
descriptor opened before the mount), so the volume hides everything but what the container
runs from.

The kubelet puts the PID namespace in ARGV (see ``isolated``): util-linux's ``unshare`` makes
it and mounts its ``/proc``, and a shell as its PID 1 starts the command and ends with its
status; ``unshare`` stays on the machine's side, waiting, so the kubelet's process is the
container's for its whole life, and a SIGTERM to the group reaches the command.

``python -S launch.py --enter PID -- ARGV`` runs ARGV inside the mount and PID namespaces of the
container whose kubelet-side process is PID (``kubectl exec``), and ends with its status.

It imports nothing but the standard library and runs with ``-S``: it is on every container's
start path. Mounts and namespaces need CAP_SYS_ADMIN (root); without it a container with
volumes fails to start with a message that says so.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import NoReturn

CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
# Signals the launcher's side ignores: the kubelet signals the whole process group, so the
# command gets them directly; the launcher must outlive it to report its exit status.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)  # fmt: skip

# This process's own C library (find_library would spawn ldconfig: 15 ms a container).
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _parse(argv: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    split = argv.index("--")
    options: dict[str, list[str]] = {"--mount": [], "--keep": [], "--enter": []}
    flags = argv[:split]
    i = 0
    while i < len(flags):
        options[flags[i]].append(flags[i + 1])
        i += 2
    return options, argv[split + 1 :]


def _under(path: str, folder: str) -> str | None:
    """``path`` relative to ``folder`` if it lies strictly inside it."""
    rel = os.path.relpath(path, folder)
    return None if rel == "." or rel.startswith("..") else rel


def _mount_volumes(mounts: list[str], keep: list[str]) -> None:
    for spec in mounts:
        source, target, *mode = spec.split(":")
        if os.path.isdir(source):
            os.makedirs(target, exist_ok=True)
        elif not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        hidden = [(k, rel) for k in keep if (rel := _under(k, target)) and os.path.isdir(k)]
        original = os.open(target, os.O_PATH | os.O_DIRECTORY) if hidden else -1
        _check(_libc.mount(source.encode(), target.encode(), None, MS_BIND, None), f"bind {target}")
        for _, rel in hidden:
            inside = os.path.join(target, rel)
            os.makedirs(inside, exist_ok=True)
            origin = f"/proc/self/fd/{original}/{rel}".encode()
            _check(
                _libc.mount(origin, inside.encode(), None, MS_BIND | MS_REC, None),
                f"keep {inside}",
            )
        if original >= 0:
            os.close(original)
        if mode == ["ro"]:
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY
            _check(_libc.mount(source.encode(), target.encode(), None, flags, None), f"ro {target}")


def _exit_status(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _exec(command: list[str]) -> NoReturn:
    # Python ignores SIGPIPE and SIGXFSZ; a program started from it must not inherit that.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    os.execvp(command[0], command)  # noqa: S606 - running the pod spec's command is the point


def _wait_as_the_machine_side(child: int) -> NoReturn:
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_IGN)
    _, status = os.waitpid(child, 0)
    sys.stdout.flush()
    os._exit(_exit_status(status))


def start(options: dict[str, list[str]], command: list[str]) -> NoReturn:
    if options["--mount"]:
        try:
            _check(_libc.unshare(CLONE_NEWNS), "unshare")
            _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
            _mount_volumes(options["--mount"], options["--keep"])
        except OSError as exc:
            print(
                f"localcluster: cannot mount the pod's volumes ({exc}); volumes need root",
                file=sys.stderr,
            )
            sys.exit(128)
    _exec(command)


def enter(launcher: int, command: list[str]) -> NoReturn:
    """Run ``command`` in the mount and PID namespaces of the container ``launcher`` started."""
    cwd = os.getcwd()
    try:
        # Both opened first: inside the container's mount namespace /proc is the container's.
        namespaces = [
            (os.open(f"/proc/{launcher}/ns/{name}", os.O_RDONLY), flag, name)
            for name, flag in (("mnt", CLONE_NEWNS), ("pid_for_children", CLONE_NEWPID))
        ]
        for fd, flag, name in namespaces:
            _check(_libc.setns(fd, flag), f"setns {name}")
            os.close(fd)
    except OSError as exc:
        print(f"localcluster: cannot enter the container: {exc}", file=sys.stderr)
        sys.exit(126)
    child = os.fork()
    if child == 0:
        os.chdir(cwd if os.path.isdir(cwd) else "/")
        try:
            _exec(command)
        except OSError as exc:
            # What a runtime answers for a command it cannot find or run.
            print(f"exec: {command[0]!r}: {exc.strerror}", file=sys.stderr)
            os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
    _wait_as_the_machine_side(child)


def main(argv: list[str]) -> NoReturn:
    options, command = _parse(argv)
    if options["--enter"]:
        enter(int(options["--enter"][0]), command)
    start(options, command)


if __name__ == "__main__":
    main(sys.argv[1:])
