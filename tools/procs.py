"""Start servers in their own process group, and stop them by PID.

Every long-running process the demo stack or a test starts goes through ``Server``: it runs
in a new session (its own process group), is polled until its health URL answers, and on stop
gets SIGTERM, then SIGKILL for the whole group after a grace period, so no child process
outlives it. ``stop_group`` does the same from a PID alone (``make down``, another process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    cmd: list[str]
    health_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    proc: subprocess.Popen[bytes] | None = None
    # An https health URL is trusted by this CA, which the server writes when it starts.
    ca_file: Path | None = None

    def start(self, timeout: float = 90) -> Server:
        if self.log_path.exists():
            self.log_path.unlink()
        self.start_background()
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90) -> Server:
        """Poll the health URL until it answers 200; stop the server if it never does."""
        assert self.proc is not None, "start the server first"  # noqa: S101
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(  # noqa: S310 - our own server
                    self.health_url, timeout=2, context=self._tls()
                ) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name} did not answer {self.health_url}:\n{self.log()}")

    def _tls(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        # Not there yet: the server has not started; FileNotFoundError is an OSError.
        return ssl.create_default_context(cafile=str(self.ca_file))

    def start_background(self) -> Server:
        """Start without a health URL to poll; the caller checks health its own way."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, grace: float = 10) -> int | None:
        """SIGTERM the server, then SIGKILL its whole process group; return its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return self.proc.returncode


def listeners(port: int) -> int:
    """How many sockets listen on ``port`` (IPv4), from the kernel's table: a server whose
    workers share a port (SO_REUSEPORT) has one each."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[1].endswith(f":{port:04X}") and row[3] == "0A")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a child of ours that exited is reaped (a zombie is not alive)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pid: int, grace: float = 10) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL what is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_alive(pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    while group_alive(pid) and time.monotonic() < deadline + 5:
        time.sleep(0.1)


def stop_left_behind(sessions: list[int], grace: float = 10) -> int:
    """Stop what dead components left running: every process still in the session of one of
    ``sessions`` (each component starts as a session leader, and its workers and their task
    processes stay in its session even in groups of their own) that runs this interpreter.
    The leaders named must be dead. Each such process's group is stopped, never the caller's.
    Returns how many processes were found."""
    import psutil  # type: ignore[import-untyped]

    wanted, interpreter = set(sessions), os.path.realpath(sys.executable)
    groups: set[int] = set()
    found = 0
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(proc.pid) in wanted and os.path.realpath(proc.exe()) == interpreter:
                groups.add(os.getpgid(proc.pid))
                found += 1
    for group in sorted(groups - {os.getpgid(0)}):
        stop_group(group, grace)
    return found


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # A zombie leader keeps the group "alive" until reaped; reap it if it is our child.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    return True


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def localcluster(
    root: Path,
    port: int,
    config_file: Path | None = None,
    audit_log: Path | None = None,
    faults: bool = True,
) -> Server:
    """A ``python -m localcluster serve`` process with its state and kubeconfig under root
    (and an audit log of every API call, when given); for tests and benchmarks, so with the
    fault-injection endpoint unless ``faults`` is False."""

    repo = Path(__file__).resolve().parent.parent
    cmd = [
        sys.executable,
        "-m",
        "localcluster",
        "serve",
        "--state-dir",
        str(root / "state"),
        "--kubeconfig",
        str(root / "kubeconfig"),
        "--port",
        str(port),
        "--grace-seconds",
        "5",
    ]
    if config_file is not None:
        cmd += ["--config", str(config_file)]
    if audit_log is not None:
        cmd += ["--audit-log", str(audit_log)]
    if faults:
        cmd.append("--faults")
    server = Server(
        "localcluster", cmd, f"https://127.0.0.1:{port}/readyz", root / "localcluster.log"
    )
    server.ca_file = root / "state" / "pki" / "ca.crt"
    server.env["PYTHONPATH"] = str(repo)
    return server


def mlflow(root: Path, port: int) -> Server:
    """An MLflow tracking server (SQLite backend, local artifacts) with its state under root."""
    return Server(
        "mlflow",
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        f"http://127.0.0.1:{port}/health",
        root / "server.log",
    )  # fmt: skip
