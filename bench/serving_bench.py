"""Serving throughput and latency: Helmsman's model server, KServe's ModelServer, `mlflow models
serve`, the ceiling of the server stack (a no-op ASGI app on the same uvicorn, uvloop and
httptools) and of any HTTP server here (nginx answering a static 200).

Each serves the same registered model version (one worker each, from the same MLflow store);
KServe (its own venv, bench/kserve_model.py) scores it with the version's own featurizer and
ONNX graph, and the bench checks that it answers as Helmsman's server does before measuring.
wrk (Debian's package; `make test-tools` installs it), a compiled load generator that does not
saturate before the servers do, sends the same load to each in alternating rounds, so all are
measured side by side under the same machine conditions; for each batch size and concurrency
the script prints req/s, rows/s, p50/p99 and the ratios. Goals at batch 1: >= 4x KServe's and
>= 10x `mlflow models serve`'s throughput, >= 60% of the no-op ceiling at concurrency 4, p99 no
worse than either peer's; at batch 64, >= 5x KServe's rows/s; the inference log at a 10%
sample costs at most 5% of the throughput. Two worker processes, and one without micro-batching
(every request its own model call), are measured beside the default server; so is the server
with its model call taken out (bench/nomodel_serve.py: a constant score a row), which splits
our time a request into the request path's and the model call's (the featurizer and the
graph, the same code KServe's peer runs): the bound any change to the rest of the path can
reach.

Each server gets a request of the shape its API takes for one customer: Helmsman's server the
raw record (it validates and derives features itself), MLflow's the already-encoded input
tensor of the logged PyTorch model -- so Helmsman's server does strictly more work per request.

Usage: python bench/serving_bench.py [--seconds 5] [--rounds 2] [--concurrency 4,32]
                                    [--batch 1,64] [--smoke]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "images" / "steps" / "src")]

from bench.kserve_model import KSERVE_PYTHON  # noqa: E402 - needs the path set above
from tools.procs import Server, free_port, listeners  # noqa: E402

ROW = {"age": 30.0, "tenure_months": 3.0, "monthly_charges": 95.5, "total_charges": 300.0,
       "support_calls": 4.0, "plan": "basic", "region": "south"}  # fmt: skip


def train_model(workdir: Path) -> dict[str, str]:
    """Train and register a model in a local MLflow store; return the env that points at it."""
    # `mlflow models serve` starts `uvicorn` by name: the venv's bin must be on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "images" / "steps" / "src"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}", "PATH": path}  # fmt: skip
    step = [sys.executable, "-m", "helmsman_steps"]
    common = ["--start", "2026-03-01", "--end", "2026-03-02", "--dataset-uri", str(workdir / "ds")]
    subprocess.run([*step, "etl", *common, "--source-uri", "synthetic://churn?rows_per_day=20000"],
                   env=env, cwd=workdir, check=True, capture_output=True)  # fmt: skip
    subprocess.run([*step, "train", *common, "--model-name", "bench", "--window-days", "1"],
                   env=env, cwd=workdir, check=True, capture_output=True)  # fmt: skip
    return env


def fetch_version(workdir: Path, env: dict[str, str]) -> tuple[str, str | None]:
    """The registered version's ONNX graph and spec, downloaded as the serving pod does."""
    found = subprocess.run(
        [sys.executable, "-m", "helmsman_steps", "fetch-model", "--model-uri", "models:/bench/1",
         "--dest", str(workdir / "fetched")],
        env=env, cwd=workdir, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    paths = json.loads(found)
    return str(paths["path"]), paths.get("spec_path")  # None: churn's built-in spec


def kserve_server(workdir: Path, env: dict[str, str], port: int) -> Server:
    """KServe's ModelServer (its own venv) serving the same graph with the same featurizer."""
    if not KSERVE_PYTHON.exists():
        raise SystemExit("no .venv-kserve: `make test-tools` installs KServe's ModelServer")
    onnx, spec = fetch_version(workdir, env)
    return Server(
        "kserve ModelServer",
        [str(KSERVE_PYTHON), str(REPO / "bench" / "kserve_model.py"), "--name", "bench",
         "--onnx", onnx, *(["--spec", spec] if spec else []), "--port", str(port)],
        f"http://127.0.0.1:{port}/v1/models/bench", workdir / "kserve.log", env=env,
    )  # fmt: skip


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_CONF = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type application/json; return 200 '{{"predictions":[0.5]}}'; }}
    }}
}}
"""


def nginx_server(workdir: Path, port: int) -> Server:
    """nginx answering a static 200, one worker: what any HTTP server on this machine can do."""
    if not Path(NGINX).exists():
        raise SystemExit("no nginx: `make test-tools` installs Debian's nginx package")
    folder = workdir / "nginx"
    folder.mkdir()
    (folder / "nginx.conf").write_text(NGINX_CONF.format(dir=folder, port=port))
    return Server(
        "nginx, static 200",
        [NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf"),
         "-e", str(folder / "nginx.log")],
        f"http://127.0.0.1:{port}/", workdir / "nginx.out",
    )  # fmt: skip


def same_answers(servers: dict[str, tuple[Server, str, Any]]) -> None:
    """Helmsman's server and KServe's score the same rows alike: the bench compares servers
    around one model, so a peer that scored differently would compare nothing."""
    answers = {}
    for name in ("helmsman", "kserve"):
        _, url, body = servers[name]
        request = urllib.request.Request(url, body(3), {"Content-Type": "application/json"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            answers[name] = json.loads(response.read())["predictions"]
    ours, theirs = answers["helmsman"], answers["kserve"]
    if len(ours) != 3 or any(abs(a - b) > 1e-6 for a, b in zip(ours, theirs, strict=True)):
        raise SystemExit(f"KServe answers {theirs}, Helmsman's server {ours}: not one model")


def encoded_row() -> list[float]:
    import numpy as np

    from helmsman_steps import features

    matrix = features.to_matrix({k: np.asarray([v]) for k, v in ROW.items()})
    return [float(x) for x in matrix[0]]


WRK = shutil.which("wrk")
# wrk's request: a POST of the body in $HELMSMAN_BENCH_BODY (a file), read once per thread.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("HELMSMAN_BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
LOG_SAMPLE = 0.1  # the inference log variant's sample (the serving manifest's)


async def noop_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ceiling of the server stack: the same uvicorn (uvloop, httptools), no work."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    body = b'{"predictions":[0.5]}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def wrk_load(url: str, body: bytes, seconds: float, concurrency: int, tmp: Path) -> dict[str, Any]:
    """One round of wrk (one thread: the server under test has the other core)."""
    if WRK is None:
        raise SystemExit("wrk is missing: `make test-tools` installs Debian's wrk package")
    (tmp / "post.lua").write_text(WRK_SCRIPT)
    (tmp / "body.json").write_bytes(body)
    out = subprocess.run(
        [WRK, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency",
         "-s", str(tmp / "post.lua"), url],
        env={**os.environ, "HELMSMAN_BENCH_BODY": str(tmp / "body.json")},
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, Any]:
    """req/s, p50 and p99 (ms) and errors (non-2xx answers and socket errors) from wrk."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {q: float(v) * _UNITS[u] for q, v, u in
               re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", out, re.M)}  # fmt: skip
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"rps": rps, "p50_ms": latency["50"], "p99_ms": latency["99"], "errors": errors}


def _servers(workdir: Path, env: dict[str, str]) -> dict[str, tuple[Server, str, Any]]:
    """name -> (server, url, body of ``batch`` rows): the same model version behind each."""
    ours, alone, bare, theirs, noop, logged, kserve, nginx, workers = (
        free_port() for _ in range(9)
    )
    ours_body = lambda batch: json.dumps({"instances": [ROW] * batch}).encode()  # noqa: E731
    return {
        "helmsman": (
            Server("helmsman", [sys.executable, "-m", "helmsman_steps", "serve",
                   "--model-uri", "models:/bench/1", "--port", str(ours)],
                   f"http://127.0.0.1:{ours}/readyz", workdir / "ours.log", env=env),
            f"http://127.0.0.1:{ours}/predict", ours_body,
        ),
        # Micro-batching off (every request its own model call): what the default's batching
        # of the requests waiting together does to throughput and p99 under each load.
        "unbatched": (
            Server("helmsman, no micro-batching", [sys.executable, "-m", "helmsman_steps",
                   "serve", "--model-uri", "models:/bench/1", "--port", str(alone),
                   "--batch-max-rows", "1"],
                   f"http://127.0.0.1:{alone}/readyz", workdir / "unbatched.log", env=env),
            f"http://127.0.0.1:{alone}/predict", ours_body,
        ),
        # The model call taken out (bench/nomodel_serve.py: a constant score a row): what the
        # request path costs alone, and so what the featurizer and the graph cost in it.
        "no-model": (
            Server("helmsman, no model work", [sys.executable, str(REPO / "bench" /
                   "nomodel_serve.py"), "serve", "--model-uri", "models:/bench/1", "--port",
                   str(bare)], f"http://127.0.0.1:{bare}/readyz", workdir / "nomodel.log",
                   env=env),
            f"http://127.0.0.1:{bare}/predict", ours_body,
        ),
        # Two worker processes on the one port (a pod that requests two CPUs): on this 2-core
        # machine they share the cores with wrk, so this says what they cost, not what they
        # give on a node with cores to spare.
        "2-workers": (
            Server("helmsman, 2 workers", [sys.executable, "-m", "helmsman_steps", "serve",
                   "--model-uri", "models:/bench/1", "--port", str(workers), "--workers", "2"],
                   f"http://127.0.0.1:{workers}/readyz", workdir / "workers.log", env=env),
            f"http://127.0.0.1:{workers}/predict", ours_body,
        ),
        # The inference log on, at the manifest's 10% sample: its cost on the request path.
        "logged": (
            Server("helmsman, inference log", [sys.executable, "-m", "helmsman_steps", "serve",
                   "--model-uri", "models:/bench/1", "--port", str(logged),
                   "--log-sample", str(LOG_SAMPLE), "--dataset-uri", str(workdir / "ds")],
                   f"http://127.0.0.1:{logged}/readyz", workdir / "logged.log", env=env),
            f"http://127.0.0.1:{logged}/predict", ours_body,
        ),
        "mlflow": (
            Server("mlflow models serve", [sys.executable, "-m", "mlflow", "models", "serve",
                   "-m", "models:/bench/1", "--env-manager", "local", "--host", "127.0.0.1",
                   "--port", str(theirs), "--workers", "1"],
                   f"http://127.0.0.1:{theirs}/ping", workdir / "theirs.log", env=env),
            f"http://127.0.0.1:{theirs}/invocations",
            lambda batch: json.dumps({"inputs": [encoded_row()] * batch}).encode(),
        ),
        "kserve": (
            kserve_server(workdir, env, kserve),
            f"http://127.0.0.1:{kserve}/v1/models/bench:predict", ours_body,
        ),
        "noop-asgi": (
            Server("no-op ASGI app", [sys.executable, "-m", "uvicorn",
                   "bench.serving_bench:noop_app", "--port", str(noop), "--loop", "uvloop",
                   "--http", "httptools", "--no-access-log", "--log-level", "warning",
                   "--app-dir", str(REPO)],
                   f"http://127.0.0.1:{noop}/", workdir / "noop.log", env=env),
            f"http://127.0.0.1:{noop}/predict", ours_body,
        ),
        "nginx": (nginx_server(workdir, nginx), f"http://127.0.0.1:{nginx}/predict", ours_body),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server")
    parser.add_argument("--concurrency", default="4,32", help="connections in flight (a list)")
    parser.add_argument("--batch", default="1,64", help="rows per request (a list)")
    parser.add_argument("--smoke", action="store_true", help="one short round: does it run")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.smoke:
        args.seconds, args.rounds, batches, concurrencies = 1.0, 1, [1], [4]

    table: dict[tuple[int, int], dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print(f"{dt.datetime.now():%H:%M:%S} training the model to serve ...", flush=True)
        env = train_model(workdir)
        servers = _servers(workdir, env)
        try:
            for server, _, _ in servers.values():
                server.start(timeout=180)
            two = int(servers["2-workers"][1].split(":")[2].split("/")[0])
            deadline = time.monotonic() + 60  # ready is the first worker; wait for the second
            while listeners(two) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            same_answers(servers)
            for batch in batches:
                for concurrency in concurrencies:
                    table[batch, concurrency] = _measure(servers, batch, concurrency, args, workdir)
        finally:
            for server, _, _ in servers.values():
                server.stop()
    _report(table, args)
    return 0


def _measure(
    servers: dict[str, tuple[Server, str, Any]],
    batch: int,
    concurrency: int,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, dict[str, float]]:
    """Alternating rounds of every server at one batch and concurrency; medians per server."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for _, url, body in servers.values():  # warm-up, not measured
        wrk_load(url, body(batch), 1.0, concurrency, workdir)
    for round_no in range(args.rounds):
        for name, (_, url, body) in servers.items():
            result = wrk_load(url, body(batch), args.seconds, concurrency, workdir)
            results[name].append(result)
            print(f"batch {batch:3d} c{concurrency:<3d} round {round_no + 1} {name:10s} "
                  f"{result['rps']:8.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                  f"p99 {result['p99_ms']:6.2f} ms  errors {result['errors']}",
                  flush=True)  # fmt: skip
    return {
        name: {
            "rps": statistics.median(r["rps"] for r in rounds),
            "rows": batch * statistics.median(r["rps"] for r in rounds),
            "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
            "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds),
        }
        for name, rounds in results.items()
    }


def _report(table: dict[tuple[int, int], dict[str, dict[str, float]]], args: Any) -> None:
    print(f"\nmedians of {args.rounds} x {args.seconds:.0f} s rounds; wrk, 1 thread")
    print(f"{'batch':>5s} {'conc':>4s} {'server':10s} {'req/s':>8s} {'rows/s':>9s} "
          f"{'p50 ms':>7s} {'p99 ms':>7s} {'errors':>6s}")  # fmt: skip
    for (batch, concurrency), summary in table.items():
        for name, s in summary.items():
            print(f"{batch:5d} {concurrency:4d} {name:10s} {s['rps']:8.0f} {s['rows']:9.0f} "
                  f"{s['p50_ms']:7.2f} {s['p99_ms']:7.2f} {s['errors']:6.0f}")  # fmt: skip
    print()
    for (batch, concurrency), s in table.items():
        ours, mlflow, kserve = s["helmsman"], s["mlflow"], s["kserve"]
        ceiling, nginx, alone = s["noop-asgi"], s["nginx"], s["unbatched"]
        print(
            f"batch {batch}, concurrency {concurrency}: helmsman/kserve "
            f"{ours['rps'] / kserve['rps']:.1f}x req/s (goal >= 4x at batch 1), "
            f"{ours['rows'] / kserve['rows']:.1f}x rows/s (goal >= 5x at batch 64); "
            f"helmsman/mlflow {ours['rps'] / mlflow['rps']:.1f}x req/s (goal >= 10x at batch 1); "
            f"p99 {ours['p99_ms'] / min(kserve['p99_ms'], mlflow['p99_ms']):.2f}x the best "
            f"peer's (goal <= 1x); of the no-op ASGI ceiling {ours['rps'] / ceiling['rps']:.0%} "
            f"(goal >= 60% at batch 1, concurrency 4), of nginx's static 200 "
            f"{ours['rps'] / nginx['rps']:.0%}; micro-batching (the default) vs none: "
            f"{ours['rps'] / alone['rps']:.2f}x req/s, p99 "
            f"{ours['p99_ms'] / alone['p99_ms']:.2f}x; inference log at {LOG_SAMPLE:.0%}: "
            f"{s['logged']['rps'] / ours['rps']:.2f}x req/s (goal >= 0.95); two workers: "
            f"{s['2-workers']['rps'] / ours['rps']:.2f}x req/s, p99 "
            f"{s['2-workers']['p99_ms'] / ours['p99_ms']:.2f}x"
        )
        # 1 / req/s: the time a request takes in wrk's closed loop (the server's time and the
        # client's turnaround), not CPU time alone; the same loop for every server.
        bare = s["no-model"]
        print(
            f"  where the time goes (1 / req/s): the no-op app {1e6 / ceiling['rps']:.0f} us a "
            f"request; our "
            f"request path without the model call {1e6 / bare['rps']:.0f} us "
            f"({bare['rps'] / ceiling['rps']:.0%} of the ceiling, "
            f"{bare['rows'] / kserve['rows']:.1f}x KServe's rows/s); with it "
            f"{1e6 / ours['rps']:.0f} us, so the model call (featurizer and ONNX Runtime, the "
            f"code KServe's peer runs too) adds {1e6 / ours['rps'] - 1e6 / bare['rps']:.0f} us "
            f"a request"
        )


if __name__ == "__main__":
    sys.exit(main())
