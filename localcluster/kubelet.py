"""The kubelet: runs the containers of pods bound to localcluster's nodes as local processes.

For each pod it assigns a loopback address of its own (``status.podIP``), resolves each
container's image through the image map (an unknown image fails like a pull:
``ErrImagePull``, then ``ImagePullBackOff``), builds the environment (``value``,
``valueFrom`` with fieldRef / secretKeyRef / configMapKeyRef, ``envFrom``, ``$(VAR)``
expansion), runs init containers in order and then the containers, each in its own process
group, keeps their output as timestamped logs, applies ``restartPolicy`` with the doubling
back-off of ``CrashLoopBackOff``, and reports container states, pod conditions and phases as
the real kubelet does. A deleted pod's processes get SIGTERM, then SIGKILL after the grace
period, before the pod object goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import pty
import shlex
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcluster import errors, events, metrics, podlogs, streams, volumes
from localcluster.config import Config, Runtime
from localcluster.dns import ClusterDns
from localcluster.environment import environment, expand, resolve
from localcluster.probes import Prober
from localcluster.quantity import parse as parse_quantity
from localcluster.resources import NODES, PODS, SERVICES
from localcluster.scheduler import set_condition
from localcluster.store import Obj, Store, now
from localcluster.streams import ATTACH_BACKLOG, AttachTarget, ExecTarget, offer

# The launcher runs with -S as a script: it is on every container's start path (see launch.py).
LAUNCHER = [sys.executable, "-S", str(Path(__file__).with_name("launch.py"))]
# A container's PID namespace: util-linux's unshare makes it (and its /proc) and waits on the
# machine's side; a shell is its PID 1, runs the command in the foreground (a background job
# would start with SIGINT ignored) and ends with its status. Its no-op traps keep it alive
# through signals meant for the command (KPO's sidecar kill signals every "sh" it sees; the
# kubelet's SIGTERM goes to the whole group), and a trapped signal is reset to its default in
# the command, unlike an ignored one.
UNSHARE = ["--fork", "--pid", "--mount-proc", "--kill-child", "--"]
INIT = ["/bin/sh", "-c", 'trap : INT TERM HUP QUIT USR1 USR2; "$@"; exit $?', "sh"]


def init(hosts: Path) -> list[str]:
    """INIT, binding the namespace's cluster-DNS hosts file (localcluster.dns) read-only over
    ``/etc/hosts`` first (the container's mount namespace is unshare's, private). A stop signal
    that arrives while it mounts (the command cannot have seen it) ends the container before
    its command starts, with the status a SIGTERM'd process has."""
    quoted = shlex.quote(str(hosts))
    mount = (
        "stop=; trap 'stop=1' INT TERM QUIT; trap : HUP USR1 USR2; "
        f"mount --bind -o ro {quoted} /etc/hosts"  # util-linux 2.27+: one call, read-only
        " || echo 'localcluster: cluster DNS unavailable: cannot bind /etc/hosts' >&2; "
        '[ -z "$stop" ] || exit 143; '
    )
    return [INIT[0], INIT[1], mount + INIT[2], *INIT[3:]]


COMPONENT = "kubelet"
MAX_BACKOFF = 300.0


OUTPUT_DRAIN_SECONDS = 2.0  # how long a container's output is read after it exits


def rfc3339_nano(moment: dt.datetime | None = None) -> str:
    moment = moment or dt.datetime.now(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


@dataclass
class ContainerRun:
    """One container of a pod: its attempts, log files and current state."""

    name: str
    spec: dict[str, Any]
    restart_count: int = 0
    process: asyncio.subprocess.Process | None = None
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}}
    )
    last_state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    log_dir: Path = Path()
    attempt_done: asyncio.Event = field(default_factory=asyncio.Event)
    # What an exec into the running attempt needs: its environment, working directory and
    # whether its launcher holds namespaces (mount, PID) to enter.
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    isolated: bool = False
    runtime: Runtime | None = None
    # What pods/attach joins: a queue per attached client, fed each line of output, and the
    # running attempt's standard input when the container asks for one (``stdin: true``).
    attached: set[asyncio.Queue[bytes | None]] = field(default_factory=set)
    stdin: asyncio.StreamWriter | None = None
    terminal: int | None = None  # a tty: true container's terminal (master side), for resizes

    def log_path(self, attempt: int | None = None) -> Path:
        return self.log_dir / f"{self.restart_count if attempt is None else attempt}.log"

    def status(self, image: str) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self.name,
            "image": image,
            "imageID": f"localcluster://{image}",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
            "state": self.state,
            "lastState": self.last_state,
        }
        if "running" in self.state or "terminated" in self.state:
            status["containerID"] = f"localcluster://{self.name}-{self.restart_count}"
        return status


class PodWorker:
    def __init__(self, kubelet: Kubelet, pod: Obj, ip: str) -> None:
        self.kubelet, self.store = kubelet, kubelet.store
        self.ns, self.name, self.uid = (
            pod["metadata"]["namespace"],
            pod["metadata"]["name"],
            pod["metadata"]["uid"],
        )
        self.ip = ip
        self.dir = kubelet.state_dir / "pods" / f"{self.ns}_{self.name}_{self.uid}"
        spec = pod["spec"]
        self.init = [ContainerRun(c["name"], c) for c in spec.get("initContainers", [])]
        self.main = [ContainerRun(c["name"], c) for c in spec.get("containers", [])]
        for run in self.init + self.main:
            run.log_dir = self.dir / "logs" / run.name
            run.log_dir.mkdir(parents=True, exist_ok=True)
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self.execs: set[asyncio.subprocess.Process] = set()  # commands run by pods/exec

    # -- status ----------------------------------------------------------------------------
    def publish(self, phase: str | None = None, reason: str = "", message: str = "") -> None:
        def write(pod: Obj) -> None:
            status = pod.setdefault("status", {})
            if phase:
                status["phase"] = phase
            status.setdefault("phase", "Pending")
            status["podIP"], status["hostIP"] = self.ip, "127.0.0.1"
            status["podIPs"], status["hostIPs"] = [{"ip": self.ip}], [{"ip": "127.0.0.1"}]
            status.setdefault("startTime", now())
            images = {
                c["name"]: c.get("image", "")
                for c in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", [])
            }
            status["containerStatuses"] = [r.status(images[r.name]) for r in self.main]
            if self.init:
                status["initContainerStatuses"] = [r.status(images[r.name]) for r in self.init]
            initialized = all(
                "terminated" in r.state and r.state["terminated"]["exitCode"] == 0
                for r in self.init
            )
            ready = bool(self.main) and all(r.ready for r in self.main)
            set_condition(pod, "PodReadyToStartContainers", "True")
            set_condition(
                pod,
                "Initialized",
                "True" if initialized else "False",
                "" if initialized else "ContainersNotInitialized",
            )
            set_condition(
                pod,
                "ContainersReady",
                "True" if ready else "False",
                "" if ready else "ContainersNotReady",
            )
            set_condition(
                pod, "Ready", "True" if ready else "False", "" if ready else "ContainersNotReady"
            )
            if reason:
                status["reason"], status["message"] = reason, message

        with contextlib.suppress(errors.ApiError):
            self.store.update(PODS, self.ns, self.name, write, "status")

    def event(self, type_: str, reason: str, message: str) -> None:
        pod = self.store.find(PODS, self.ns, self.name)
        if pod is not None:
            events.record(self.store, pod, type_, reason, message, COMPONENT)

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        pod = self.store.get(PODS, self.ns, self.name)
        runtimes = await self._pull_images(pod)
        if runtimes is None:
            return
        for run in self.init:
            while True:
                code = await self._run_once(pod, run, runtimes[run.name])
                if code == 0 or self.stopping:
                    break
                if self.restart_policy == "Never":
                    self.publish("Failed")
                    return
                await self._back_off(run)
            if self.stopping:
                return
        self.publish("Running")
        await asyncio.gather(
            *(self._keep_running(pod, run, runtimes[run.name]) for run in self.main)
        )
        if not self.stopping:
            failed = any(r.state.get("terminated", {}).get("exitCode", 0) != 0 for r in self.main)
            self.publish("Failed" if failed else "Succeeded")

    async def _pull_images(self, pod: Obj) -> dict[str, Runtime] | None:
        runtimes: dict[str, Runtime] = {}
        delay = self.kubelet.config.restart_backoff_seconds
        while not self.stopping:
            missing = []
            for run in self.init + self.main:
                image = run.spec.get("image", "")
                runtime = self.kubelet.config.runtime_for(image)
                if runtime is None or self.kubelet.image_fails(image):
                    missing.append(run)
                else:
                    runtimes[run.name] = runtime
            if not missing:
                return runtimes
            for run in missing:
                image = run.spec.get("image", "")
                message = (
                    f'failed to pull and unpack image "{image}": failed to resolve reference '
                    f'"{image}": not found in the localcluster image map (map it to a local '
                    "runtime under `images:` in the --config file; localcluster's README shows how)"
                )
                self.event("Normal", "Pulling", f'Pulling image "{image}"')
                self.event("Warning", "Failed", f'Failed to pull image "{image}": {message}')
                self.event("Warning", "Failed", "Error: ErrImagePull")
                run.state = {"waiting": {"reason": "ErrImagePull", "message": message}}
            self.publish("Pending")
            await asyncio.sleep(min(delay, 2.0))
            for run in missing:
                image = run.spec.get("image", "")
                run.state = {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{image}"',
                    }
                }
                self.event("Normal", "BackOff", f'Back-off pulling image "{image}"')
                self.event("Warning", "Failed", "Error: ImagePullBackOff")
            self.publish("Pending")
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)
        return None

    async def _keep_running(self, pod: Obj, run: ContainerRun, runtime: Runtime) -> None:
        while not self.stopping:
            code = await self._run_once(pod, run, runtime)
            if self.stopping or self.restart_policy == "Never":
                return
            if self.restart_policy == "OnFailure" and code == 0:
                return
            await self._back_off(run)

    async def _back_off(self, run: ContainerRun) -> None:
        delay = min(
            self.kubelet.config.restart_backoff_seconds * 2 ** max(run.restart_count - 1, 0),
            MAX_BACKOFF,
        )
        run.last_state = {"terminated": run.state.get("terminated", {})}
        run.restart_count += 1
        run.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {delay:.0f}s restarting failed container="
                f"{run.name} pod={self.name}_{self.ns}({self.uid})",
            }
        }
        self.event("Warning", "BackOff", "Back-off restarting failed container")
        self.publish()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped(), delay)

    async def _stopped(self) -> None:
        while not self.stopping:
            await asyncio.sleep(0.1)

    async def _run_once(self, pod: Obj, run: ContainerRun, runtime: Runtime) -> int:
        run.attempt_done = asyncio.Event()
        missing = None
        try:
            argv, env, cwd = self._command(pod, run, runtime)
        except FileNotFoundError as exc:
            argv, env, cwd, missing = [], {}, str(self.dir), str(exc)
        except errors.ApiError as exc:
            run.state = {
                "waiting": {"reason": "CreateContainerConfigError", "message": exc.message}
            }
            self.event("Warning", "Failed", f"Error: {exc.message}")
            self.publish()
            run.attempt_done.set()
            await asyncio.sleep(self.kubelet.config.restart_backoff_seconds)
            return 1
        log_file = run.log_path().open("ab")
        started = rfc3339_nano()
        master = slave = None
        try:
            if missing is not None:
                raise FileNotFoundError(missing)
            # tty: true runs the container on a terminal of its own, as a runtime does: its
            # output (with the terminal's line endings) and input go through the master side.
            master, slave = pty.openpty() if run.spec.get("tty") else (None, None)
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    env=env,
                    cwd=cwd,
                    stdin=slave
                    if slave is not None
                    else asyncio.subprocess.PIPE
                    if run.spec.get("stdin")
                    else asyncio.subprocess.DEVNULL,
                    stdout=slave if slave is not None else asyncio.subprocess.PIPE,
                    stderr=slave if slave is not None else asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            finally:
                if slave is not None:
                    os.close(slave)
        except OSError as exc:
            if master is not None:
                os.close(master)
            log_file.close()
            message = missing or f"exec: {argv[0]!r}: {exc.strerror}"
            run.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": message,
                    "startedAt": started,
                    "finishedAt": now(),
                }
            }
            self.event("Warning", "Failed", f"Error: failed to start container: {message}")
            self.publish()
            run.attempt_done.set()
            return 128
        if self.stopping:
            # Deleted while it started: stop() has already collected the running processes.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        run.process, run.env, run.cwd, run.runtime = process, env, cwd, runtime
        run.stdin, run.terminal = process.stdin, master
        output, close_terminal = process.stdout, None
        if master is not None:  # the kubelet keeps master (resizes); reader and writer dups
            output, run.stdin, close_terminal = await streams.terminal(master)
        run.isolated = self.kubelet.unshare is not None
        run.started, run.ready = True, "readinessProbe" not in run.spec
        run.state = {"running": {"startedAt": started[:19] + "Z"}}
        if run.restart_count == 0:
            image = run.spec.get("image")
            self.event("Normal", "Pulled", f'Container image "{image}" already present on machine')
        self.event("Normal", "Created", f"Created container {run.name}")
        self.event("Normal", "Started", f"Started container {run.name}")
        self.publish()
        probes = [asyncio.ensure_future(Prober(self).run(run, process, env))]
        oom = asyncio.Event()
        limit = ((run.spec.get("resources") or {}).get("limits") or {}).get("memory")
        if limit:
            probes.append(
                asyncio.ensure_future(
                    self._memory_watch(run, process, int(parse_quantity(limit)), oom)
                )
            )
        if output is None:  # never: stdout is a pipe or the terminal
            raise RuntimeError("container stdout is not captured")

        async def copy_output() -> None:
            async for line in streams.lines(output):
                ended = line if line.endswith(b"\n") else line + b"\n"  # one log line each
                log_file.write(rfc3339_nano().encode() + b" " + ended)
                log_file.flush()
                for client in run.attached:
                    offer(client, line)

        copying = asyncio.ensure_future(copy_output())
        try:
            code = await process.wait()
            # What it wrote last is read; a child it left holding the output cannot keep
            # the container running.
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(asyncio.shield(copying), OUTPUT_DRAIN_SECONDS)
        finally:
            copying.cancel()
            log_file.close()
            if close_terminal is not None and master is not None:
                run.terminal = None
                close_terminal()
                os.close(master)
            for client in run.attached:  # the output ended: attached clients detach
                offer(client, None)
            for probe in probes:
                probe.cancel()
        exit_code = 128 - code if code < 0 else code
        reason = "Completed" if exit_code == 0 else "Error"
        if oom.is_set():
            reason = "OOMKilled"
        run.state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": started[:19] + "Z",
                "finishedAt": now(),
                "containerID": f"localcluster://{run.name}-{run.restart_count}",
            }
        }
        run.ready, run.process = False, None
        self.publish(self._final_phase())
        run.attempt_done.set()
        return exit_code

    def _final_phase(self) -> str | None:
        """The pod's phase once no container will run again, in the same write as the exit."""
        if self.stopping or not self.main or self.restart_policy == "Always":
            return None
        codes = [r.state.get("terminated", {}).get("exitCode") for r in self.main]
        if any(code is None for code in codes):
            return None
        if self.restart_policy == "OnFailure" and any(codes):
            return None
        return "Failed" if any(codes) else "Succeeded"

    def _command(
        self, pod: Obj, run: ContainerRun, runtime: Runtime
    ) -> tuple[list[str], dict[str, str], str]:
        spec = run.spec
        env = environment(
            self.store,
            pod,
            spec,
            runtime,
            ip=self.ip,
            home=str(self.dir),
            api=self.kubelet.api_address,
            services=self.kubelet.service_env(self.ns),
        )
        command = list(spec.get("command") or runtime.default_command)
        args = list(spec.get("args") or [])
        argv = [expand(a, env) for a in command + args]
        if not argv:
            raise errors.bad_request(
                f"container {run.name} has no command and its image no entrypoint"
            )
        argv = resolve(argv, env, runtime)
        if "/" not in argv[0]:  # not on the image's PATH: what the runtime answers
            raise FileNotFoundError(f'exec: "{argv[0]}": executable file not found in $PATH')
        cwd = spec.get("workingDir") or runtime.working_dir or str(self.dir)
        mounts = volumes.mounts(
            self.store, pod, spec, self.dir, self.kubelet.state_dir, self.kubelet.credentials
        )
        hosts = None
        if self.kubelet.unshare is not None:
            hosts = self.kubelet.dns.hosts_file(self.ns)
            argv = [self.kubelet.unshare, *UNSHARE, *init(hosts), *argv]
        if mounts:
            launcher = [*LAUNCHER]
            for source, target, read_only in mounts:
                launcher += ["--mount", f"{source}:{target}" + (":ro" if read_only else "")]
            for path in volumes.runtime_paths(runtime, env, cwd, self.dir):
                launcher += ["--keep", path]
            if hosts is not None:  # a volume over its folder must not hide it from the init
                launcher += ["--keep", str(hosts.parent)]
            argv = [*launcher, "--", *argv]
        else:
            Path(cwd).mkdir(parents=True, exist_ok=True)
        return argv, env, cwd

    async def _memory_watch(
        self, run: ContainerRun, process: asyncio.subprocess.Process, limit: int, oom: asyncio.Event
    ) -> None:
        """The memory cgroup's job: SIGKILL the container when its processes exceed the limit."""
        while process.returncode is None:
            _, used = metrics.group_usage(process.pid, run.isolated)
            if used > limit:
                oom.set()
                self.event(
                    "Warning",
                    "OOMKilling",
                    f"Memory cgroup out of memory: container "
                    f"used {used} bytes over its {limit} byte limit",
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                return
            await asyncio.sleep(0.2)

    async def kill(self, process: asyncio.subprocess.Process, grace: float) -> None:
        """SIGTERM the container's process group, SIGKILL it after ``grace`` seconds."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    async def stop(self, grace: float) -> None:
        """SIGTERM every container's process group, SIGKILL after ``grace`` seconds."""
        self.stopping = True
        running = [
            r.process for r in self.init + self.main if r.process and r.process.returncode is None
        ]
        running += [p for p in self.execs if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        if running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), grace)
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if running:
            # A process that left its group (setsid) may still hold the output pipe, and
            # Process.wait() waits for the pipe too: never wait for it forever.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), 5)
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self.task, 5)

    # -- logs ------------------------------------------------------------------------------
    def container(self, name: str) -> ContainerRun | None:
        return next((r for r in self.init + self.main if r.name == name), None)


class Kubelet:
    def __init__(
        self, store: Store, config: Config, state_dir: Path, api_address: tuple[str, int]
    ) -> None:
        self.store, self.config, self.state_dir = store, config, state_dir
        self.dns = ClusterDns(store, state_dir / "dns")
        self.api_address = api_address
        self.nodes = {n.name for n in config.nodes}
        self.workers: dict[str, PodWorker] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_ip = 0
        self.faults: Any = None  # a FaultInjector, set by the server
        # Each container in PID and mount namespaces of its own, as a runtime gives it; that
        # needs root and util-linux's unshare. Without them containers are plain process
        # groups (and exec sees the machine).
        self.unshare = shutil.which("unshare") if os.geteuid() == 0 else None
        # Set by the server: the API's token issuer and CA, for projected volumes.
        self.credentials: volumes.Credentials | None = None
        self.sampler = metrics.Sampler(window=config.metrics_resolution_seconds)

    def _allocate_ip(self) -> str:
        self._next_ip += 1
        n = self._next_ip
        return f"127.{self.store.pod_octet}.{(n // 250) % 250}.{n % 250 + 2}"

    def service_env(self, namespace: str) -> dict[str, str]:
        """``<NAME>_SERVICE_HOST`` / ``_PORT`` for the namespace's Services, as Kubernetes sets."""
        env: dict[str, str] = {}
        for svc in self.store.list(SERVICES, namespace):
            ip = svc["spec"].get("clusterIP")
            ports = svc["spec"].get("ports") or []
            if not ip or ip == "None" or not ports:
                continue
            prefix = svc["metadata"]["name"].upper().replace("-", "_")
            env[f"{prefix}_SERVICE_HOST"] = ip
            env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
            for port in ports:
                if port.get("name"):
                    env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(
                        port["port"]
                    )
        return env

    def register_nodes(self) -> None:
        for spec in self.config.nodes:
            if self.store.find(NODES, "", spec.name) is not None:
                continue
            self.store.create(
                NODES,
                "",
                {
                    "metadata": {
                        "name": spec.name,
                        "labels": {"kubernetes.io/hostname": spec.name, **spec.labels},
                    },
                    "spec": {"taints": list(spec.taints)} if spec.taints else {},
                    "status": {
                        "capacity": dict(spec.capacity),
                        "allocatable": dict(spec.capacity),
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True",
                                "reason": "KubeletReady",
                                "message": "kubelet is posting ready status",
                                "lastHeartbeatTime": now(),
                                "lastTransitionTime": now(),
                            }
                        ],
                        "addresses": [
                            {"type": "InternalIP", "address": "127.0.0.1"},
                            {"type": "Hostname", "address": spec.name},
                        ],
                        "nodeInfo": {
                            "architecture": "amd64",
                            "bootID": spec.name,
                            "machineID": spec.name,
                            "systemUUID": spec.name,
                            "containerRuntimeVersion": "localcluster://1",
                            "kernelVersion": os.uname().release,
                            "kubeProxyVersion": "v1.32.0-localcluster",
                            "kubeletVersion": "v1.32.0-localcluster",
                            "operatingSystem": "linux",
                            "osImage": "localcluster",
                        },
                    },
                },
            )

    async def run(self) -> None:
        self._background(self._sample_forever())
        self._background(self.dns.run())
        watch, replay = self.store.watch(PODS, None, "0")
        try:
            for event in replay:
                self._handle(event.type, event.obj)
            while True:
                event = await watch.queue.get()
                self._handle(event.type, event.obj)
        finally:
            self.store.unwatch(watch)

    # -- resource metrics (metrics.k8s.io) --------------------------------------------------
    async def _sample_forever(self) -> None:
        """Read every running container's usage a few times per resolution window."""
        period = max(self.config.metrics_resolution_seconds / 3, 0.2)
        while True:
            alive = []
            for worker in list(self.workers.values()):
                for run in worker.main:
                    process = run.process
                    if process is not None and process.returncode is None:
                        key = (worker.uid, run.name)
                        self.sampler.record(key, process.pid, run.isolated)
                        alive.append(key)
            self.sampler.forget(alive)
            await asyncio.sleep(period)

    def pod_metrics(self, namespace: str | None, name: str | None = None) -> list[Obj]:
        """PodMetrics of running pods whose every container has a usage yet."""
        found = []
        for worker in list(self.workers.values()):
            if (namespace and worker.ns != namespace) or (name and worker.name != name):
                continue
            pod = self.store.find(PODS, worker.ns, worker.name)
            usages = [(r.name, self.sampler.usage((worker.uid, r.name))) for r in worker.main]
            if pod is None or not usages or any(u is None for _, u in usages):
                continue
            window = min(self.sampler.window_of((worker.uid, r.name)) for r in worker.main)
            found.append(
                metrics.pod_metrics(pod, [(n, u) for n, u in usages if u is not None], window)
            )
        return found

    def node_metrics(self) -> list[Obj]:
        """NodeMetrics: what the pods bound to each node use."""
        totals = {node: [0.0, 0] for node in sorted(self.nodes)}
        for worker in list(self.workers.values()):
            pod = self.store.find(PODS, worker.ns, worker.name)
            node = (pod or {}).get("spec", {}).get("nodeName")
            for run in worker.main:
                usage = self.sampler.usage((worker.uid, run.name))
                if node in totals and usage is not None:
                    totals[node][0] += usage.cpu_cores
                    totals[node][1] += usage.memory_bytes
        window = self.config.metrics_resolution_seconds
        return [
            metrics.node_metrics(node, metrics.Usage(cpu, int(memory)), window)
            for node, (cpu, memory) in totals.items()
        ]

    def image_fails(self, image: str) -> bool:
        """Whether fault injection makes pulls of this image fail."""
        return self.faults is not None and self.faults.image_fails(image)

    async def kill_container(self, namespace: str, pod: str, container: str | None) -> None:
        worker = self._worker(namespace, pod)
        for run in worker.init + worker.main:
            if run.process is not None and container in (None, run.name):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.process.pid, signal.SIGKILL)

    async def evict(self, namespace: str, pod: str, message: str) -> None:
        worker = self._worker(namespace, pod)
        worker.event("Warning", "Evicted", message or "The node was low on resource: memory.")
        await worker.stop(0)
        worker.publish("Failed", "Evicted", message or "The node was low on resource: memory.")
        self.workers.pop(worker.uid, None)

    def _worker(self, namespace: str, pod: str) -> PodWorker:
        obj = self.store.get(PODS, namespace, pod)
        worker = self.workers.get(obj["metadata"]["uid"])
        if worker is None:
            raise errors.bad_request(f"pod {namespace}/{pod} has no running containers here")
        return worker

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _handle(self, type_: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        if pod["spec"].get("nodeName") not in self.nodes:
            return
        worker = self.workers.get(uid)
        if type_ == "DELETED":
            if worker is not None:
                self._background(self._finish(worker, 0, remove=False))
            return
        if pod["metadata"].get("deletionTimestamp"):
            if worker is not None and not worker.stopping:
                grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
                self._background(self._finish(worker, grace, remove=True))
            elif worker is None:
                self._remove(pod)
            return
        if worker is None and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            worker = PodWorker(self, pod, self._allocate_ip())
            self.workers[uid] = worker
            worker.task = asyncio.ensure_future(self._guard(worker))

    async def _guard(self, worker: PodWorker) -> None:
        try:
            await worker.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must show on the pod, not vanish
            worker.event("Warning", "FailedKubelet", f"localcluster kubelet error: {exc!r}")

    async def _finish(self, worker: PodWorker, grace: float, remove: bool) -> None:
        await worker.stop(grace)
        self.workers.pop(worker.uid, None)
        if remove:
            pod = self.store.find(PODS, worker.ns, worker.name)
            if pod is not None and pod["metadata"]["uid"] == worker.uid:
                self._remove(pod)

    def _remove(self, pod: Obj) -> None:
        with contextlib.suppress(errors.ApiError):
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            current = self.store.get(PODS, ns, name)
            if current["metadata"].get("uid") != pod["metadata"]["uid"]:
                return  # a new pod of the same name: not ours to delete
            if current["metadata"].get("finalizers"):
                return  # someone else's finalizer holds it; they remove it
            self.store.delete(PODS, ns, name, 0)  # the kubelet's final delete (grace 0)

    async def shutdown(self, grace: float = 10) -> None:
        """Stop every pod's processes: SIGTERM, then SIGKILL after ``grace`` seconds."""
        await asyncio.gather(*(w.stop(grace) for w in list(self.workers.values())))

    # -- exec ------------------------------------------------------------------------------
    def exec_target(self, pod: Obj, container: str) -> ExecTarget:
        """Where ``pods/exec`` runs a command: the running container, entered."""
        worker, run, process, runtime = self._running(pod, container, "exec into")
        env = dict(run.env)
        return ExecTarget(
            enter=[*LAUNCHER, "--enter", str(process.pid), "--"] if run.isolated else [],
            env=env,
            cwd=run.cwd,
            resolve=lambda argv: _found(resolve(argv, env, runtime)),
            started=worker.execs,
        )

    def attach_target(self, pod: Obj, container: str) -> AttachTarget:
        """What ``pods/attach`` joins: the running container's output and standard input."""
        _, run, _, _ = self._running(pod, container, "attach")
        # Registered now, while the attempt is known to run: its end reaches this client.
        output: asyncio.Queue[bytes | None] = asyncio.Queue(ATTACH_BACKLOG)
        run.attached.add(output)
        once = bool(run.spec.get("stdinOnce"))
        stdin = run.stdin if run.spec.get("stdin") else None
        return AttachTarget(output, run.attached, stdin, once, lambda: run.terminal)

    def _running(
        self, pod: Obj, container: str, verb: str
    ) -> tuple[PodWorker, ContainerRun, asyncio.subprocess.Process, Runtime]:
        """The worker, run, process and runtime of a running container; 400 as the API
        server answers otherwise."""
        name, phase = pod["metadata"]["name"], pod.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            raise errors.bad_request(
                f"cannot {verb} a container in a completed pod; current phase is {phase}"
            )
        if not pod["spec"].get("nodeName"):
            raise errors.bad_request(f"pod {name} does not have a host assigned")
        worker = self.workers.get(pod["metadata"]["uid"])
        run = worker.container(container) if worker else None
        process = run.process if run else None
        runtime = run.runtime if run else None
        if (
            worker is None
            or run is None
            or process is None
            or runtime is None
            or process.returncode is not None
        ):
            raise errors.bad_request(
                f'unable to upgrade connection: container not found ("{container}")'
            )
        return worker, run, process, runtime

    # -- logs ------------------------------------------------------------------------------
    def stream_logs(
        self, pod: Obj, container: str, options: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        worker = self.workers.get(pod["metadata"]["uid"])
        return podlogs.stream_logs(self.state_dir, worker, pod, container, options)


def _found(argv: list[str]) -> list[str]:
    if not os.path.exists(argv[0]):
        raise FileNotFoundError(argv[0])
    return argv


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
