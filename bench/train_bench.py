"""What Helmsman's training loop costs against a bare PyTorch loop on the same model and data.

Side by side in one run, rounds interleaved (medians): samples/s of ``helmsman_steps.fit`` (the
loop the train pod runs: DataLoader, global-batch sharding, loss scaling, autocast and gradient
scaler hooks, validation each epoch) against the textbook loop (tensors on the device, a seeded
permutation sliced into batches, mean loss, validation each epoch), same network (churn's MLP,
hidden 64,32), same rows, same batch size, same device. Goal: our overhead <= 1.1x (bare
samples/s over ours).

Also printed:
- on the CPU, 1 vs 2 processes of our loop under torchrun (gloo), samples/s of all ranks;
- on a CUDA device (when there is one): samples/s with and without AMP (bf16 autocast, or fp16
  with a scaler), GPU utilisation sampled through NVML while our loop runs, and 1 vs N
  processes (NCCL) when the machine has N > 1 GPUs. Without a GPU it says so and measures none.

    .venv/bin/python -m bench.train_bench [--rounds 5] [--rows 200000] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "images" / "steps" / "src")]

GOAL = 1.1  # bare loop's samples/s over ours
HIDDEN = (64, 32)
INPUTS = 13  # churn's featurized width
BATCH = 1024


def data(rows: int, seed: int = 0) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, INPUTS), dtype=np.float32)
    w = rng.standard_normal(INPUTS).astype(np.float32)
    y = (x @ w + rng.standard_normal(rows).astype(np.float32) > 0).astype(np.float32)
    return x, y


def bare(rows: int, epochs: int, device: Any, amp: bool = False) -> float:
    """The textbook loop; samples/s."""
    import torch

    from helmsman_steps.train import build_network

    x_np, y_np = data(rows)
    xv_np, yv_np = data(rows // 10, seed=1)
    torch.manual_seed(0)
    net = build_network(INPUTS, HIDDEN).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x, y = torch.as_tensor(x_np, device=device), torch.as_tensor(y_np, device=device)
    xv, yv = torch.as_tensor(xv_np, device=device), torch.as_tensor(yv_np, device=device)
    generator = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if amp else None
    sync(device)
    started = time.perf_counter()
    for _ in range(epochs):
        net.train()
        order = torch.randperm(rows, generator=generator).to(device)
        for i in range(0, rows, BATCH):
            batch = order[i : i + BATCH]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                loss = loss_fn(net(x[batch]).squeeze(1).float(), y[batch])
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            float(loss_fn(net(xv).squeeze(1), yv))
    sync(device)
    return rows * epochs / (time.perf_counter() - started)


def ours(rows: int, epochs: int, device: Any, amp: bool = False) -> float:
    """helmsman_steps.fit, as the train pod runs it (one process); samples/s."""
    import torch

    from helmsman_steps import fit
    from helmsman_steps.train import build_network

    world = fit.World.from_env()
    torch.manual_seed(0)
    net = build_network(INPUTS, HIDDEN)
    options = fit.LoopOptions(BATCH, 3e-3, 1e-4, amp=amp)
    rows_, validation = data(rows), data(rows // 10, seed=1)
    sync(device)
    started = time.perf_counter()
    trained = fit.train(net, rows_, validation, epochs, 0, options, world, device)
    sync(device)
    elapsed = time.perf_counter() - started
    return trained.samples / elapsed


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def distributed(processes: int, rows: int, epochs: int, device: str) -> float:
    """Our loop in ``processes`` processes under torchrun on ``device`` ("cpu", or "cuda": one
    GPU a process); samples/s of all ranks together."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={processes}", "-m", "bench.train_bench", "--worker", device,
           "--rows", str(rows), "--epochs", str(epochs)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "images/steps/src"),
                                                         str(REPO)])}  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                          check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"torchrun failed:\n{proc.stderr[-3000:]}")
    # One object a rank; the ranks share torchrun's stdout, so two may land on one line.
    rates = [json.loads(found)["samples_per_s"] for found in re.findall(r"\{[^{}]*\}", proc.stdout)]
    if len(rates) != processes:
        raise SystemExit(f"torchrun reported {len(rates)} of {processes} ranks:\n{proc.stdout}")
    return sum(rates)


def worker(rows: int, epochs: int, on: str) -> None:
    """One torchrun process: its share of every batch, then its samples/s on stdout."""
    import torch

    from helmsman_steps import fit

    world = fit.World.from_env()
    device = fit.device_for(world) if on == "cuda" else torch.device("cpu")
    with fit.process_group(world, device):
        ours(BATCH * 4 * world.size, 1, device)  # warm up, as the single-process rounds do
        rate = ours(rows, epochs, device)
    print(json.dumps({"rank": world.rank, "samples_per_s": rate}), flush=True)


def gpu_utilisation(run: Any) -> tuple[float, float]:
    """(samples/s, mean GPU utilisation %) of ``run()``, sampled every 100 ms through NVML."""
    import threading

    import pynvml  # type: ignore[import-not-found]

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    rate = run()
    done.set()
    thread.join()
    return rate, statistics.mean(samples) if samples else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="one short round: does it run")
    parser.add_argument("--worker", choices=["cpu", "cuda"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.rows, args.epochs, args.worker)
        return 0
    rounds, rows, epochs = (1, 4_096, 1) if args.smoke else (args.rounds, args.rows, args.epochs)

    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    cpu = torch.device("cpu")
    bare(BATCH * 4, 1, cpu), ours(BATCH * 4, 1, cpu)  # warm both up: first calls pay for setup
    bare_rates, our_rates = [], []
    for _ in range(rounds):
        bare_rates.append(bare(rows, epochs, cpu))
        our_rates.append(ours(rows, epochs, cpu))
    b, o = statistics.median(bare_rates), statistics.median(our_rates)
    print(f"CPU, {rows} rows x {epochs} epochs, batch {BATCH}, {rounds} rounds (median)")
    print(f"  bare PyTorch loop   {b:12,.0f} samples/s")
    print(f"  helmsman fit loop   {o:12,.0f} samples/s")
    ratio = b / o
    print(f"  overhead            {ratio:12.3f}x   goal <= {GOAL}  "
          f"{'met' if ratio <= GOAL else 'NOT met'}")  # fmt: skip

    one = distributed(1, rows, epochs, "cpu")
    two = distributed(2, rows, epochs, "cpu")
    print(f"CPU under torchrun (gloo): 1 process {one:,.0f}, 2 processes {two:,.0f} samples/s "
          f"({two / one:.2f}x; {os.cpu_count()} cores shared by the processes)")  # fmt: skip

    if not torch.cuda.is_available():
        print("GPU: no CUDA device on this machine; AMP, utilisation and NCCL not measured")
        return 0
    gpu = torch.device("cuda", 0)
    rows_gpu = rows * 5
    name = torch.cuda.get_device_name(0)
    amp_name = "bf16" if torch.cuda.is_bf16_supported() else "fp16+scaler"
    bare(BATCH * 4, 1, gpu), ours(BATCH * 4, 1, gpu, amp=True)  # CUDA context, kernels
    results: dict[str, list[float]] = {"bare": [], "fp32": [], "amp": []}
    for _ in range(rounds):
        results["bare"].append(bare(rows_gpu, epochs, gpu))
        results["fp32"].append(ours(rows_gpu, epochs, gpu, amp=False))
        results["amp"].append(ours(rows_gpu, epochs, gpu, amp=True))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"GPU {name}, {rows_gpu} rows x {epochs} epochs:")
    print(f"  bare {med['bare']:,.0f}, ours fp32 {med['fp32']:,.0f}, ours {amp_name} "
          f"{med['amp']:,.0f} samples/s; overhead {med['bare'] / med['fp32']:.3f}x; "
          f"AMP {med['amp'] / med['fp32']:.2f}x")  # fmt: skip
    try:
        rate, util = gpu_utilisation(lambda: ours(rows_gpu, epochs, gpu, amp=True))
        print(f"  utilisation while training ({amp_name}): {util:.0f}% at {rate:,.0f} samples/s")
    except ImportError:
        print("  utilisation: pynvml is not installed; not measured")
    count = torch.cuda.device_count()
    if count > 1:
        single, n = distributed(1, rows_gpu, epochs, "cuda"), distributed(count, rows_gpu, epochs,
                                                                          "cuda")  # fmt: skip
        print(f"  1 vs {count} processes (NCCL): {single:,.0f} vs {n:,.0f} samples/s "
              f"({n / single:.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
