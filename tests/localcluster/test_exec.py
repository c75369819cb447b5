"""pods/exec with real clients: the Python client's stream(), kubectl exec, and what it sees.

The command runs in the container's environment and namespaces: its env, its volumes, and only
its own processes (localcluster.launch gives each container a PID namespace when run as root,
which the test suite is).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes.stream import stream

from tests.cluster_fixtures import Cluster, pod_manifest, tool, wait_for
from tests.localcluster.test_pods import log_of, processes_with

KUBECTL = shutil.which("kubectl")
SLEEPER = "import time; time.sleep(600)"


def running(cluster: Cluster, name: str) -> None:
    def up() -> bool:
        status = cluster.core.read_namespaced_pod(name, "default").status
        return status.phase == "Running" and all(c.ready for c in status.container_statuses)

    wait_for(f"pod {name} to run", up)


@pytest.fixture(scope="module")
def box(cluster: Cluster) -> str:
    """A running pod with an env variable, an emptyDir volume and a file its command wrote."""
    script = "import time; open('/data/greeting', 'w').write('hello from the volume'); " + SLEEPER
    manifest = pod_manifest(
        "box",
        script,
        volumes=[{"name": "data", "emptyDir": {}}],
        container={
            "env": [{"name": "COLOUR", "value": "teal"}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        },
    )
    cluster.core.create_namespaced_pod("default", manifest)
    running(cluster, "box")
    wait_for("the file", lambda: "hello" in exec_out(cluster, "box", ["cat", "/data/greeting"]))
    return "box"


def exec_stream(cluster: Cluster, name: str, command: list[str], **kwargs: Any) -> Any:
    return stream(
        cluster.core.connect_get_namespaced_pod_exec,
        name,
        "default",
        command=command,
        stdout=True,
        stderr=True,
        stdin=kwargs.pop("stdin", False),
        tty=False,
        _preload_content=False,
        **kwargs,
    )


def exec_out(cluster: Cluster, name: str, command: list[str]) -> str:
    client = exec_stream(cluster, name, command)
    client.run_forever(timeout=30)
    out: str = client.read_stdout()
    client.close()
    return out


def test_exec_runs_in_the_containers_environment_and_volumes(cluster: Cluster, box: str) -> None:
    out = exec_out(cluster, box, ["sh", "-c", 'echo "$COLOUR $HOSTNAME"; cat /data/greeting'])
    assert out == "teal box\nhello from the volume"


def test_exec_reports_stdout_stderr_and_the_exit_code_apart(cluster: Cluster, box: str) -> None:
    client = exec_stream(cluster, box, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    client.run_forever(timeout=30)
    assert client.read_stdout() == "out\n"
    assert client.read_stderr() == "err\n"
    assert client.returncode == 3
    client.close()

    client = exec_stream(cluster, box, ["true"])
    client.run_forever(timeout=30)
    assert client.returncode == 0
    client.close()


def test_exec_sees_only_the_containers_processes(cluster: Cluster, box: str) -> None:
    out = exec_out(cluster, box, ["ps", "-e", "-o", "pid=,args="])
    processes = {int(line.split()[0]): line.split(None, 1)[1] for line in out.splitlines()}
    # PID 1 is the container's init, then its command (after the init's short-lived mounts of
    # the cluster-DNS hosts file), then ps itself. Nothing of the machine's.
    assert SLEEPER in processes[min(pid for pid in processes if pid > 1)], processes
    assert len(processes) == 3, processes
    assert "ps -e" in processes[max(processes)], processes


def test_exec_feeds_stdin_until_the_client_closes_it(cluster: Cluster, box: str) -> None:
    client = exec_stream(cluster, box, ["sh", "-c", "tr a-z A-Z; echo done"], stdin=True)
    client.write_stdin("quiet words\n")
    client.close_channel(0)  # v5: the end of stdin
    client.run_forever(timeout=30)
    assert client.read_stdout() == "QUIET WORDS\ndone\n"
    assert client.returncode == 0
    client.close()


def test_exec_with_a_terminal(cluster: Cluster, box: str) -> None:
    client = stream(
        cluster.core.connect_get_namespaced_pod_exec, box, "default",
        command=["sh", "-c", "test -t 0 && test -t 1 && echo terminal"],
        stdin=True, stdout=True, stderr=False, tty=True, _preload_content=False,
    )  # fmt: skip
    client.run_forever(timeout=30)
    assert client.read_stdout().strip() == "terminal"
    assert client.returncode == 0
    client.close()


def test_a_closed_connection_stops_the_command(cluster: Cluster, box: str) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    client = exec_stream(cluster, box, ["sh", "-c", f"echo started; sleep 600 # {marker}"])
    client.update(timeout=10)
    assert "started" in client.read_stdout(timeout=10)
    assert processes_with(marker)
    client.close()
    wait_for("the command to stop", lambda: not processes_with(marker), timeout=10)


def test_bad_exec_requests_get_the_servers_answers(cluster: Cluster, box: str) -> None:
    assert plain_exec(cluster, "nowhere", "command=true") == (404, 'pods "nowhere" not found')
    assert plain_exec(cluster, box, "stdout=true") == (400, "you must specify at least 1 command")
    assert plain_exec(cluster, box, "command=true") == (400, "Upgrade request required")

    client = exec_stream(cluster, box, ["no-such-tool", "x"])
    client.run_forever(timeout=30)
    error = json.loads(client.read_channel(3))
    assert error["status"] == "Failure"
    assert 'exec: "no-such-tool": executable file not found in $PATH' in error["message"]
    client.close()

    cluster.core.create_namespaced_pod("default", pod_manifest("finished", "pass"))
    wait_for(
        "the pod to finish",
        lambda: cluster.core.read_namespaced_pod("finished", "default").status.phase == "Succeeded",
    )
    assert plain_exec(cluster, "finished", "command=true") == (
        400,
        "cannot exec into a container in a completed pod; current phase is Succeeded",
    )


def test_kubectl_exec(cluster: Cluster, box: str, tmp_path: Path) -> None:
    assert KUBECTL, "kubectl is not on PATH"
    base = [KUBECTL, "--kubeconfig", str(cluster.kubeconfig)]

    done = subprocess.run(
        [*base, "exec", box, "--", "sh", "-c", "echo $COLOUR; echo oops >&2; exit 4"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    # kubectl adds the line about the code itself, and exits with it.
    assert done.stdout == "teal\n"
    assert done.stderr == "oops\ncommand terminated with exit code 4\n"
    assert done.returncode == 4

    piped = subprocess.run(
        [*base, "exec", "-i", box, "--", "wc", "-l"],
        input="one\ntwo\nthree\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (piped.stdout.strip(), piped.returncode) == ("3", 0), piped.stderr


def plain_exec(cluster: Cluster, name: str, query: str) -> tuple[int, str]:
    """An exec request without the WebSocket upgrade: (HTTP status, the Status message)."""
    access = cluster.access
    try:
        with access.open(f"/api/v1/namespaces/default/pods/{name}/exec?{query}") as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["message"]


def test_port_forward_with_the_python_client(cluster: Cluster) -> None:
    from kubernetes.stream import portforward

    from tests.localcluster.test_workloads import SERVER

    pod_ip = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    manifest = pod_manifest("web", SERVER, container={"env": [pod_ip]})
    cluster.core.create_namespaced_pod("default", manifest)
    running(cluster, "web")
    ip = cluster.core.read_namespaced_pod("web", "default").status.pod_ip

    def answer() -> str:
        # The pod is ready as soon as its process starts (no probe), maybe before its server
        # listens: a refused tunnel is "not yet" (wait_for fails if it never answers).
        try:
            forward = portforward(
                cluster.core.connect_get_namespaced_pod_portforward, "web", "default", ports="8080"
            )
            sock = forward.socket(8080)
            sock.settimeout(10)
            sock.sendall(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            sock.close()
            forward.close()
        except Exception:  # the client raises several kinds for a refused tunnel
            return ""
        return received.decode()

    body = wait_for("an answer through the tunnel", answer)
    assert body.startswith("HTTP/1.0 200")
    assert body.endswith("v1 web")
    assert ip  # the pod's own address answered, through the API server

    cluster.core.delete_namespaced_pod("web", "default", grace_period_seconds=0)


ECHO = """import os, socketserver, threading
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)
server = socketserver.ThreadingTCPServer((os.environ["POD_IP"], 8081), Echo)
threading.Thread(target=server.serve_forever, daemon=True).start()
"""


@pytest.fixture(scope="module")
def web(cluster: Cluster) -> Iterator[str]:
    """A pod serving HTTP on 8080, echoing what it gets on 8081, and nothing on 9999."""
    from tests.localcluster.test_workloads import SERVER

    pod_ip = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    # Ready once 8080 listens (8081 binds first): a refused first connection would end
    # kubectl's whole forward.
    probe = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    manifest = pod_manifest(
        "web2", ECHO + SERVER, container={"env": [pod_ip], "readinessProbe": probe}
    )
    cluster.core.create_namespaced_pod("default", manifest)
    running(cluster, "web2")
    yield "web2"
    cluster.core.delete_namespaced_pod("web2", "default", grace_period_seconds=0)


@contextlib.contextmanager
def port_forward(
    cluster: Cluster, binary: str, pod: str, *ports: str
) -> Iterator[tuple[dict[int, int], subprocess.Popen[str]]]:
    """``kubectl port-forward`` running: the local port it chose for each pod port, and it."""
    command = [tool(binary), "--kubeconfig", str(cluster.kubeconfig), "port-forward", f"pod/{pod}"]
    forwarder = subprocess.Popen(
        [*command, *(f":{port}" for port in ports)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        local: dict[int, int] = {}
        assert forwarder.stdout is not None
        lines: queue.Queue[str] = queue.Queue()  # read beside, so a silent kubectl cannot hang us

        def read() -> None:
            for line in forwarder.stdout or ():
                lines.put(line)
            lines.put("")  # it ended

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 30
        while len(local) < len(ports):
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError("kubectl port-forward printed no ports in 30 s") from None
            assert line, f"kubectl port-forward ended: {forwarder.communicate(timeout=10)[1]}"
            if match := re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line):
                local[int(match[2])] = int(match[1])
        yield local, forwarder
    finally:
        if forwarder.poll() is None:
            os.killpg(forwarder.pid, signal.SIGTERM)
        forwarder.communicate(timeout=30)


@pytest.mark.parametrize("binary", ["kubectl", "kubectl-1.35"])
def test_kubectl_port_forward_tunnels_spdy_through_the_websocket(
    cluster: Cluster, web: str, binary: str
) -> None:
    """kubectl 1.31+ speaks SPDY inside the WebSocket: connections one after another and at
    once each reach the pod's own server, a megabyte comes back as sent, and a port nothing
    listens on is the error kubectl reports before it stops (client-go ends the whole forward
    on a connection's error, so that a supervisor restarts it)."""
    with port_forward(cluster, binary, web, "8080", "8081", "9999") as (local, forwarder):

        def get(_: int = 0) -> str:
            url = f"http://127.0.0.1:{local[8080]}/"
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read().decode()

        assert get() == f"v1 {web}"
        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(get, range(12))) == {f"v1 {web}"}

        payload = os.urandom(1_000_000)  # many reads' and frames' worth each way
        with socket.create_connection(("127.0.0.1", local[8081]), timeout=10) as sock:
            sending = threading.Thread(target=sock.sendall, args=(payload,))
            sending.start()
            echoed = b""
            while len(echoed) < len(payload) and (chunk := sock.recv(65536)):
                echoed += chunk
            sending.join()
        assert echoed == payload

        refused = socket.create_connection(("127.0.0.1", local[9999]), timeout=10)
        with refused, contextlib.suppress(ConnectionResetError):
            assert refused.recv(1) == b""
        _, stderr = forwarder.communicate(timeout=30)
    assert f"error forwarding port 9999 to pod default/{web}" in stderr
    assert "connect: connection refused" in stderr
    assert "lost connection to pod" in stderr


def test_a_bare_spdy_upgrade_is_refused_saying_what_is_served(cluster: Cluster, web: str) -> None:
    """kubectl before 1.31 (or told not to use WebSockets) upgrades HTTP to SPDY itself."""
    request = cluster.access.request(f"/api/v1/namespaces/default/pods/{web}/portforward")
    request.method = "POST"
    for name, value in {
        "Connection": "Upgrade",
        "Upgrade": "SPDY/3.1",
        "X-Stream-Protocol-Version": "portforward.k8s.io",
    }.items():
        request.add_header(name, value)
    with pytest.raises(urllib.error.HTTPError) as refused:
        cluster.access.open(request)
    assert refused.value.code == 400
    message = json.loads(refused.value.read())["message"]
    assert "SPDY/3.1+portforward.k8s.io" in message
    assert "KUBECTL_PORT_FORWARD_WEBSOCKETS" in message


TICKER = """import itertools, time
for i in itertools.count():
    print(f"tick {i}", flush=True)
    time.sleep(0.2)
"""
UPPER = """import sys
for line in sys.stdin:
    print(line.strip().upper(), flush=True)
print("eof", flush=True)
"""


def test_attach_streams_the_containers_output_from_then_on(cluster: Cluster) -> None:
    cluster.core.create_namespaced_pod("default", pod_manifest("ticker", TICKER))
    running(cluster, "ticker")
    wait_for("a few ticks in the log", lambda: log_of(cluster, "ticker").count("tick") >= 3)
    attached = stream(
        cluster.core.connect_get_namespaced_pod_attach, "ticker", "default",
        stdout=True, stderr=True, stdin=False, tty=False, _preload_content=False,
    )  # fmt: skip
    seen = ""
    for _ in range(50):
        attached.update(timeout=1)
        seen += attached.read_stdout() if attached.peek_stdout() else ""
        if seen.count("tick") >= 3:
            break
    attached.close()
    ticks = [int(line.split()[1]) for line in seen.splitlines()]
    assert len(ticks) >= 3, seen
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))  # in order, none lost
    assert ticks[0] >= 3  # from when it attached, not the log's earlier lines
    cluster.core.delete_namespaced_pod("ticker", "default", grace_period_seconds=0)


TERMINAL = """import os, shutil, sys
print("tty", os.isatty(0), os.isatty(1), os.isatty(2), flush=True)
for line in sys.stdin:
    print("got", line.strip(), shutil.get_terminal_size().columns, flush=True)
"""


def test_a_tty_container_runs_on_a_terminal_that_attach_reaches(cluster: Cluster) -> None:
    """tty: true gives the container a terminal (stdin, stdout and stderr), as a runtime
    does: the log has its line endings; an attached client types into it and resizes it."""
    manifest = pod_manifest("term", TERMINAL, container={"tty": True, "stdin": True})
    cluster.core.create_namespaced_pod("default", manifest)
    running(cluster, "term")
    wait_for("the first line", lambda: "tty" in log_of(cluster, "term"))
    assert "tty True True True\r\n" in log_of(cluster, "term")
    attached = stream(
        cluster.core.connect_get_namespaced_pod_attach, "term", "default",
        stdout=True, stderr=False, stdin=True, tty=True, _preload_content=False,
    )  # fmt: skip
    attached.write_channel(4, json.dumps({"Width": 132, "Height": 40}))
    attached.write_stdin("hello\n")
    seen = ""
    for _ in range(50):
        attached.update(timeout=1)
        seen += attached.read_stdout() if attached.peek_stdout() else ""
        if "got hello" in seen:
            break
    attached.close()
    assert "hello\r\n" in seen  # the terminal echoes what is typed, as a real one does
    assert "got hello 132\r\n" in seen  # the process read it, on a terminal 132 wide
    cluster.core.delete_namespaced_pod("term", "default", grace_period_seconds=0)


@pytest.mark.parametrize("tty", [False, True])
def test_a_container_whose_command_is_missing_fails_to_start(cluster: Cluster, tty: bool) -> None:
    name = f"missing-{str(tty).lower()}"
    manifest = pod_manifest(name, "", container={"command": ["no-such-binary"], "tty": tty})
    cluster.core.create_namespaced_pod("default", manifest)

    def terminated() -> Any:
        statuses = cluster.core.read_namespaced_pod(name, "default").status.container_statuses
        return statuses and statuses[0].state.terminated

    state = wait_for("the start to fail", terminated)
    assert (state.reason, state.exit_code) == ("StartError", 128)
    assert "no-such-binary" in state.message
    cluster.core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_kubectl_attach_feeds_the_containers_stdin_once(cluster: Cluster) -> None:
    assert KUBECTL, "kubectl is not on PATH"
    base = [KUBECTL, "--kubeconfig", str(cluster.kubeconfig)]
    manifest = pod_manifest("upper", UPPER, container={"stdin": True, "stdinOnce": True})
    cluster.core.create_namespaced_pod("default", manifest)
    running(cluster, "upper")
    done = subprocess.run(
        [*base, "attach", "-i", "upper"], input="one\ntwo\n", capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    # The input reached the container's own process; its end (stdinOnce) ended the process.
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ONE", "TWO", "eof"], (done.stdout, done.stderr)

    def ended() -> bool:
        return cluster.core.read_namespaced_pod("upper", "default").status.phase == "Succeeded"

    wait_for("the container to end with its input", ended)
    refused = subprocess.run(
        [*base, "attach", "upper"], capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode != 0
    assert "cannot attach a container in a completed pod" in refused.stderr, refused.stderr
    cluster.core.delete_namespaced_pod("upper", "default", grace_period_seconds=0)
