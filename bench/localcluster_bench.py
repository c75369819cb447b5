"""localcluster overhead, measured side by side in one run.

1. API request latency: GET of one ConfigMap from localcluster vs the same JSON from a plain
   aiohttp echo server (the floor for an HTTP round trip in Python), both in their own
   processes, through one keep-alive client, in alternating rounds. Prints p50/p99 and ratios.
   localcluster's side pays what every client pays it: TLS and the bearer token's check.
2. Pod start: a trivial pod (``python -c "print('hi')"``) created through the real client,
   timed to Running and to Succeeded (seen through a watch), vs starting the same process
   directly and waiting for it. Goal: create->Succeeded <= 1.5x the direct run.

Usage: python bench/localcluster_bench.py [--requests 1000] [--pods 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from tools.kubeaccess import Access  # noqa: E402 - needs the path set above
from tools.procs import Server, free_port, localcluster  # noqa: E402

ECHO = """
import json, sys
from aiohttp import web
body = json.dumps(json.loads(sys.argv[2])).encode()
async def handle(request):
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


def latencies(url: str, n: int, access: Access | None = None) -> list[float]:
    """GET ``url`` n times on one kept-alive connection (over TLS with the token, as every
    client of localcluster, when ``access`` is given)."""
    import urllib3

    headers = access.headers() if access else {}
    tls = {"ca_cert_data": access.ca_pem.decode()} if access else {}
    pool = urllib3.PoolManager(maxsize=1, **tls)
    for _ in range(20):  # warm-up
        pool.request("GET", url, headers=headers).data  # noqa: B018 - read the body
    out = []
    for _ in range(n):
        started = time.perf_counter()
        response = pool.request("GET", url, headers=headers)
        response.data  # noqa: B018
        out.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")
    return out


def pod_times(kubeconfig: Path, pods: int) -> tuple[list[float], list[float]]:
    from kubernetes import client, config, watch

    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    to_running, to_done = [], []
    for i in range(pods):
        name = f"bench-{i}"
        body = {
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "c",
                        "image": "python:3.11-slim",
                        "command": ["python", "-c", "print('hi')"],
                    }
                ],
            },
        }
        start_rv = api.list_namespaced_pod("default").metadata.resource_version
        started = time.perf_counter()
        api.create_namespaced_pod("default", body)
        running = None
        w = watch.Watch()
        for event in w.stream(
            api.list_namespaced_pod,
            "default",
            resource_version=start_rv,
            field_selector=f"metadata.name={name}",
            timeout_seconds=60,
        ):
            status = event["object"].status
            if running is None and status.phase in ("Running", "Succeeded"):
                running = time.perf_counter() - started
            if status.phase == "Succeeded":
                to_done.append(time.perf_counter() - started)
                w.stop()
        to_running.append(running or float("nan"))
        api.delete_namespaced_pod(name, "default", grace_period_seconds=0)
    return to_running, to_done


def direct_times(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "print('hi')"], check=True, capture_output=True)
        out.append(time.perf_counter() - started)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--requests", type=int, default=1000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--pods", type=int, default=10, help="pods to time")
    parser.add_argument("--smoke", action="store_true", help="a few of each: does it run")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.rounds, args.pods = 50, 1, 2

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port, echo_port = free_port(), free_port()
        cluster = localcluster(root, port)
        cluster.start()
        try:
            from kubernetes import client, config

            api = client.CoreV1Api(
                config.new_client_from_config(config_file=str(root / "kubeconfig"))
            )
            api.create_namespaced_config_map(
                "default", {"metadata": {"name": "bench"}, "data": {"k": "v"}}
            )
            obj = api.api_client.sanitize_for_serialization(
                api.read_namespaced_config_map("bench", "default")
            )
            echo = Server(
                "echo",
                [sys.executable, "-c", ECHO, str(echo_port), json.dumps(obj)],
                f"http://127.0.0.1:{echo_port}/",
                root / "echo.log",
            ).start()
            try:
                api_times: dict[str, list[float]] = {"localcluster": [], "echo": []}
                access = Access.from_kubeconfig(root / "kubeconfig")
                path = "/api/v1/namespaces/default/configmaps/bench"
                urls = {
                    "localcluster": (access.server + path, access),
                    "echo": (f"http://127.0.0.1:{echo_port}{path}", None),
                }
                for _ in range(args.rounds):
                    for name, (url, credentials) in urls.items():
                        api_times[name] += latencies(url, args.requests, credentials)
            finally:
                echo.stop()
            to_running, to_done = pod_times(root / "kubeconfig", args.pods)
            direct = direct_times(args.pods)
        finally:
            cluster.stop()

    print(f"API GET latency, {args.rounds} x {args.requests} requests each (ms):")
    print(f"{'server':14s} {'p50':>8s} {'p99':>8s}")
    for name, values in api_times.items():
        p50, p99 = 1000 * percentile(values, 0.5), 1000 * percentile(values, 0.99)
        print(f"{name:14s} {p50:8.3f} {p99:8.3f}")
    lc, echo_values = api_times["localcluster"], api_times["echo"]
    print(
        f"ratio localcluster/echo: p50 {percentile(lc, 0.5) / percentile(echo_values, 0.5):.2f}x, "
        f"p99 {percentile(lc, 0.99) / percentile(echo_values, 0.99):.2f}x"
    )
    base = statistics.median(direct)
    print(f"\nPod start, {args.pods} pods (median ms):")
    print(f"direct process run           {1000 * base:8.1f}")
    print(f"create -> Running            {1000 * statistics.median(to_running):8.1f}")
    print(f"create -> Succeeded          {1000 * statistics.median(to_done):8.1f}")
    print(f"ratio Running/direct:   {statistics.median(to_running) / base:.2f}x")
    print(f"ratio Succeeded/direct: {statistics.median(to_done) / base:.2f}x (goal <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
