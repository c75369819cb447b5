"""The local stack's footprint: time until it is ready, and its memory with two serving pods.

Starts the stack `make demo` starts (tools/stack.py: localcluster, Prometheus, MLflow, Airflow's
four components) on free ports, measures the time from the start to every component answering
healthy, runs the training DAG once (so two serving pods run, and Airflow has done real work),
then sums the proportional set size (PSS: shared pages divided among their users, so the sum
is what the stack really holds) of every process of the stack, pods included. Prints each
figure with its ratio to the goal (ready <= 20 s, PSS <= 1.5 GiB), per component.

``--smoke`` measures the start and the idle stack only (no DAG run): what `make test` runs, so
the bench cannot rot.

Usage: python -m bench.stack_bench [--smoke]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from tools import demo  # noqa: E402 - needs the path set above
from tools.stack import COMPONENTS, Ports, Settings, Stack  # noqa: E402

READY_GOAL_S = 20.0
PSS_GOAL_GIB = 1.5
GIB = 1024**3


def pss_by_component(stack: Stack) -> dict[str, float]:
    """PSS in bytes of each component's process and all its descendants (pods included)."""
    seen: set[int] = set()
    result: dict[str, float] = {}
    for name in COMPONENTS:
        pid = stack.pids.get(name)
        if not pid:
            continue
        total = 0.0
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in family:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        result[name] = total
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="start and idle stack only")
    args = parser.parse_args(argv)
    root = REPO / ".state" / f"stack-bench-{uuid.uuid4().hex[:8]}"
    stack = Stack(root, Ports.free(), Settings(rows_per_day=4000))
    try:
        started = time.monotonic()
        stack.up(say=lambda message: None)
        ready = time.monotonic() - started
        pods = 0
        if not args.smoke:
            outcome = demo.run_pipeline(stack, {**demo.DEMO_CONF, "data_end": "2026-03-08"},
                                        show=False)  # fmt: skip
            if outcome.state != "success":
                print(f"the pipeline run failed: {outcome.summary.get('tasks')}")
                return 1
            pods = 2
            time.sleep(3)  # let the finished tasks' processes go
        memory = pss_by_component(stack)
        total = sum(memory.values())
        print(f"\nstack bench{' (smoke: idle, no pipeline run)' if args.smoke else ''}")
        print(f"  ready after     {ready:5.1f} s   ratio to the {READY_GOAL_S:.0f} s goal: "
              f"{ready / READY_GOAL_S:.2f}")  # fmt: skip
        print(f"  PSS, {pods} serving pods {total / GIB:5.2f} GiB ratio to the {PSS_GOAL_GIB} GiB "
              f"goal: {total / GIB / PSS_GOAL_GIB:.2f}")  # fmt: skip
        for name, value in sorted(memory.items(), key=lambda kv: -kv[1]):
            print(f"    {name:14} {value / GIB:5.2f} GiB")
        return 0
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
