"""Resource usage of containers from their processes, and the ``metrics.k8s.io`` API on it.

A container here is a process group (its launcher's); its CPU is the utime+stime of the
group's processes (less the launcher and the namespace's init, which a cgroup would not count),
its memory their resident set. The sampler keeps two readings per container, 15 s apart as
metrics-server's resolution by default, and answers the rate between them, so ``kubectl top``
and the HorizontalPodAutoscaler see what the containers really used.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    cpu_cores: float
    memory_bytes: int


@dataclass(frozen=True)
class Reading:
    at: float
    cpu_seconds: float
    memory_bytes: int


def group_usage(group: int, isolated: bool) -> tuple[float, int]:
    """(CPU seconds, resident bytes) of process group ``group``'s processes, less the
    container runtime's own (the launcher and, when ``isolated``, its namespace's init)."""
    cpu, memory = 0.0, 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid, parent = int(stat.parent.name), int(fields[1])
            if int(fields[2]) != group or (isolated and group in (pid, parent)):
                continue
            cpu += (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
            memory += int(fields[21]) * PAGE  # resident set size in pages
    return cpu, memory


class Sampler:
    """Readings per (pod uid, container); usage is the CPU rate between the last two."""

    def __init__(self, window: float = 15.0) -> None:
        self.window = window
        self.readings: dict[tuple[str, str], list[Reading]] = {}

    def record(self, key: tuple[str, str], group: int, isolated: bool) -> None:
        cpu, memory = group_usage(group, isolated)
        history = self.readings.setdefault(key, [])
        history.append(Reading(time.monotonic(), cpu, memory))
        # Keep what spans the window, and one reading before it.
        while len(history) > 2 and history[-1].at - history[1].at >= self.window:
            history.pop(0)

    def forget(self, alive: Iterable[tuple[str, str]]) -> None:
        for key in set(self.readings) - set(alive):
            del self.readings[key]

    def usage(self, key: tuple[str, str]) -> Usage | None:
        history = self.readings.get(key) or []
        if len(history) < 2:
            return None
        first, last = history[0], history[-1]
        elapsed = max(last.at - first.at, 1e-6)
        return Usage(max(last.cpu_seconds - first.cpu_seconds, 0.0) / elapsed, last.memory_bytes)

    def window_of(self, key: tuple[str, str]) -> float:
        history = self.readings.get(key) or []
        return history[-1].at - history[0].at if len(history) >= 2 else 0.0


def cpu_quantity(cores: float) -> str:
    """As metrics-server writes CPU: nanocores (``12345678n``)."""
    return f"{round(cores * 1e9)}n"


def memory_quantity(size: int) -> str:
    return f"{size // 1024}Ki"


def pod_metrics(
    pod: dict[str, Any], containers: list[tuple[str, Usage]], window: float
) -> dict[str, Any]:
    meta = pod["metadata"]
    return {
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "creationTimestamp": _stamp(),
            "labels": meta.get("labels") or {},
        },
        "timestamp": _stamp(),
        "window": f"{window:.0f}s",
        "containers": [
            {
                "name": name,
                "usage": {
                    "cpu": cpu_quantity(usage.cpu_cores),
                    "memory": memory_quantity(usage.memory_bytes),
                },
            }
            for name, usage in containers
        ],
    }


def node_metrics(name: str, usage: Usage, window: float) -> dict[str, Any]:
    return {
        "kind": "NodeMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": name, "creationTimestamp": _stamp(), "labels": {}},
        "timestamp": _stamp(),
        "window": f"{window:.0f}s",
        "usage": {
            "cpu": cpu_quantity(usage.cpu_cores),
            "memory": memory_quantity(usage.memory_bytes),
        },
    }


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
