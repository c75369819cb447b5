"""Serving throughput and latency: Helmsman's model server vs `mlflow models serve`.

Both serve the same registered model version (one worker each) from the same MLflow store.
A separate load-generator process sends the same load to each in alternating rounds, so the
two are measured side by side under the same machine conditions; the script prints
throughput and p50/p99 latency per server and the ratios. Goal: >= 3x the throughput of
`mlflow models serve` with p99 no worse.

Each server gets a request of the shape its API takes for one customer: Helmsman's server the
raw record (it validates and derives features itself), MLflow's the already-encoded input
tensor of the logged PyTorch model -- so Helmsman's server does strictly more work per request.

Usage: python bench/serving_bench.py [--seconds 8] [--rounds 2] [--concurrency 4] [--batch 1]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "images" / "steps" / "src")]

from tools.procs import Server, free_port  # noqa: E402 - needs the path set above

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


def encoded_row() -> list[float]:
    import numpy as np

    from helmsman_steps import features

    matrix = features.to_matrix({k: np.asarray([v]) for k, v in ROW.items()})
    return [float(x) for x in matrix[0]]


async def _load(url: str, body: bytes, seconds: float, concurrency: int) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
    }


def load_in_subprocess(url: str, body: bytes, seconds: float, concurrency: int) -> dict[str, Any]:
    """Run the load generator in its own process, so it does not share the server's GIL."""
    code = (
        "import asyncio, json, sys; sys.path[:0] = sys.argv[1:2]; "
        "from bench.serving_bench import _load; "
        "print(json.dumps(asyncio.run(_load(sys.argv[2], sys.argv[3].encode(), "
        "float(sys.argv[4]), int(sys.argv[5])))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO), url, body.decode(), str(seconds), str(concurrency)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server")
    parser.add_argument("--concurrency", type=int, default=4, help="connections in flight")
    parser.add_argument("--batch", type=int, default=1, help="rows per request")
    parser.add_argument("--smoke", action="store_true", help="one short round: does it run")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.rounds = 1.0, 1

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print(f"{dt.datetime.now():%H:%M:%S} training the model to serve ...", flush=True)
        env = train_model(workdir)
        ours_port, theirs_port = free_port(), free_port()
        servers = {
            "helmsman": (
                Server("helmsman", [sys.executable, "-m", "helmsman_steps", "serve",
                       "--model-uri", "models:/bench/1", "--port", str(ours_port)],
                       f"http://127.0.0.1:{ours_port}/readyz", workdir / "ours.log", env=env),
                f"http://127.0.0.1:{ours_port}/predict",
                json.dumps({"instances": [ROW] * args.batch}).encode(),
            ),
            "mlflow": (
                Server("mlflow models serve", [sys.executable, "-m", "mlflow", "models", "serve",
                       "-m", "models:/bench/1", "--env-manager", "local", "--host", "127.0.0.1",
                       "--port", str(theirs_port), "--workers", "1"],
                       f"http://127.0.0.1:{theirs_port}/ping", workdir / "theirs.log", env=env),
                f"http://127.0.0.1:{theirs_port}/invocations",
                json.dumps({"inputs": [encoded_row()] * args.batch}).encode(),
            ),
        }  # fmt: skip
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        try:
            for server, _, _ in servers.values():
                server.start(timeout=180)
            for _, url, body in servers.values():  # warm-up, not measured
                load_in_subprocess(url, body, 1.0, args.concurrency)
            for round_no in range(args.rounds):
                for name, (_, url, body) in servers.items():
                    result = load_in_subprocess(url, body, args.seconds, args.concurrency)
                    results[name].append(result)
                    print(f"round {round_no + 1} {name:9s} {result['rps']:8.0f} req/s  "
                          f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
                          f"errors {result['errors']}", flush=True)  # fmt: skip
        finally:
            for server, _, _ in servers.values():
                server.stop()

    summary = {
        name: {
            "rps": statistics.median(r["rps"] for r in rounds),
            "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
            "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
            "errors": sum(r["errors"] for r in rounds),
        }
        for name, rounds in results.items()
    }
    ours, theirs = summary["helmsman"], summary["mlflow"]
    print(f"\nbatch {args.batch}, concurrency {args.concurrency}, {args.rounds} x "
          f"{args.seconds:.0f} s rounds (medians)")  # fmt: skip
    print(f"{'server':10s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s}")
    for name, s in summary.items():
        print(f"{name:10s} {s['rps']:8.0f} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['errors']:7d}")
    ratio = ours["rps"] / theirs["rps"]
    p99_ratio = ours["p99_ms"] / theirs["p99_ms"]
    print(f"throughput ratio helmsman/mlflow: {ratio:.2f}x (goal >= 3x)")
    print(f"p99 ratio helmsman/mlflow:        {p99_ratio:.2f}x (goal <= 1x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
