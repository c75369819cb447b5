"""Container probes as the kubelet runs them: startup first, then readiness and liveness,
each with its delay, period, timeout and thresholds, over exec, httpGet or tcpSocket."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from localcluster.environment import expand

if TYPE_CHECKING:
    from localcluster.kubelet import ContainerRun, PodWorker


class Prober:
    """The probes of one pod's containers; what they learn goes to the pod's status."""

    def __init__(self, worker: PodWorker) -> None:
        self.worker = worker

    async def run(
        self, run: ContainerRun, process: asyncio.subprocess.Process, env: dict[str, str]
    ) -> None:
        """The startup probe first; readiness and liveness only once it has succeeded."""
        startup = run.spec.get("startupProbe")
        if startup is not None:
            run.started = False
            self.worker.publish()
            if not await self._loop(run, "Startup", startup, process, env):
                return
            run.started = True
            self.worker.publish()
        await asyncio.gather(
            *(
                self._loop(run, kind_, run.spec[key], process, env)
                for kind_, key in (("Readiness", "readinessProbe"), ("Liveness", "livenessProbe"))
                if key in run.spec
            )
        )

    async def _loop(
        self,
        run: ContainerRun,
        kind_: str,
        probe: dict[str, Any],
        process: asyncio.subprocess.Process,
        env: dict[str, str],
    ) -> bool:
        """Run one probe as the kubelet does: delay, period, timeout and both thresholds.

        A startup probe returns True at its first success (False if the container dies or
        is killed first); readiness and liveness probes run until the container exits.
        """
        period = probe.get("periodSeconds", 10)
        timeout = probe.get("timeoutSeconds", 1)
        failure_threshold = probe.get("failureThreshold", 3)
        success_threshold = probe.get("successThreshold", 1)
        await asyncio.sleep(probe.get("initialDelaySeconds", 0))
        successes = failures = 0
        while process.returncode is None and not self.worker.stopping:
            error = await self._once(probe, timeout, env, run)
            if error is None:
                successes, failures = successes + 1, 0
                if kind_ == "Startup":
                    return True
                if kind_ == "Readiness" and not run.ready and successes >= success_threshold:
                    run.ready = True
                    self.worker.publish()
            else:
                successes, failures = 0, failures + 1
                self.worker.event("Warning", "Unhealthy", f"{kind_} probe failed: {error}")
                if failures >= failure_threshold:
                    if kind_ == "Readiness" and run.ready:
                        run.ready = False
                        self.worker.publish()
                    elif kind_ in ("Liveness", "Startup"):
                        self.worker.event(
                            "Normal",
                            "Killing",
                            f"Container {run.name} failed {kind_.lower()} probe, will be restarted",
                        )
                        await self.worker.kill(
                            process, float(probe.get("terminationGracePeriodSeconds", 2))
                        )
                        return False
            await asyncio.sleep(period)
        return False

    async def _once(
        self, probe: dict[str, Any], timeout: float, env: dict[str, str], run: ContainerRun
    ) -> str | None:
        """None if the probe passes, otherwise what failed (the event message's detail)."""
        try:
            if "exec" in probe:
                command = [expand(a, env) for a in probe["exec"]["command"]]
                proc = await asyncio.create_subprocess_exec(
                    *command,
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
                out, _ = await asyncio.wait_for(proc.communicate(), timeout)
                return None if proc.returncode == 0 else out.decode(errors="replace")[-200:]
            if "httpGet" in probe:
                get = probe["httpGet"]
                host, port = get.get("host") or self.worker.ip, named_port(get["port"], run)
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), timeout
                )
                request = (
                    f"GET {get.get('path', '/')} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "User-Agent: kube-probe/1.32\r\nConnection: close\r\n\r\n"
                )
                writer.write(request.encode())
                line = await asyncio.wait_for(reader.readline(), timeout)
                writer.close()
                parts = line.decode(errors="replace").split()
                code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
                return None if 200 <= code < 400 else f"HTTP probe failed with statuscode: {code}"
            if "tcpSocket" in probe:
                sock = probe["tcpSocket"]
                host, port = sock.get("host") or self.worker.ip, named_port(sock["port"], run)
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                writer.close()
                return None
        except (OSError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return "unsupported probe handler"


def named_port(port: int | str, run: ContainerRun) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in run.spec.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise OSError(f"no port named {port!r}")
