"""localcluster's configuration: its nodes and the map from image names to local runtimes.

A YAML file (``--config``) may declare::

    nodes:
      - name: cpu-1
        labels: {pool: cpu}
        capacity: {cpu: "4", memory: 8Gi}
      - name: gpu-1
        labels: {pool: gpu, nvidia.com/gpu.present: "true"}
        taints: [{key: nvidia.com/gpu, value: "true", effect: NoSchedule}]
        capacity: {cpu: "8", memory: 32Gi, nvidia.com/gpu: "1"}
    images:
      - pattern: "registry.example.com/team/tool:*"   # fnmatch on the whole image reference
        python: /path/to/venv/bin/python              # interpreter that runs "python"
        path: [/path/to/venv/bin]                     # prepended to PATH
        env: {PYTHONPATH: /path/to/src}
        workingDir: /path/to/dir
        entrypoints: {tool: [python, -m, tool]}       # command[0] rewrites
        defaultCommand: [tool]                        # the image's ENTRYPOINT
    restartBackoffSeconds: 10                         # first CrashLoopBackOff delay, doubling
    metricsResolutionSeconds: 15                      # metrics.k8s.io's window (kubectl top)
    autoscalerSyncSeconds: 15                         # HorizontalPodAutoscaler sync period

Without a file: one node with this machine's CPUs and memory and no GPU, and an image map that
covers the project's own images and generic ``python:3.*`` images, run with the interpreter
localcluster itself runs under, and ``alpine``/``busybox``, run with the machine's shell.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Runtime:
    pattern: str
    python: str = sys.executable
    path: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    entrypoints: dict[str, list[str]] = field(default_factory=dict)
    default_command: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeSpec:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()
    capacity: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    nodes: tuple[NodeSpec, ...]
    images: tuple[Runtime, ...]
    restart_backoff_seconds: float = 10.0
    # metrics-server's resolution, and the HorizontalPodAutoscaler's sync period.
    metrics_resolution_seconds: float = 15.0
    autoscaler_sync_seconds: float = 15.0

    def runtime_for(self, image: str) -> Runtime | None:
        return next((r for r in self.images if fnmatch.fnmatchcase(image, r.pattern)), None)


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_images() -> tuple[Runtime, ...]:
    venv_bin = str(Path(sys.executable).parent)
    steps = {
        # What the images' ENV says: the step package, and the model folders' own code.
        "env": {
            "PYTHONPATH": str(REPO / "images" / "steps" / "src"),
            "HELMSMAN_MODELS_DIR": str(REPO / "models"),
        },
        "entrypoints": {"helmsman-step": ["python", "-m", "helmsman_steps"]},
        "default_command": ("helmsman-step",),
    }
    project = [
        Runtime(pattern=f"*helmsman-{name}:*", path=(venv_bin,), **steps)  # type: ignore[arg-type]
        for name in ("pipeline", "train", "serve")
    ]
    # Small shell images (KPO's XCom sidecar is alpine): the machine's shell and tools.
    shells = [
        Runtime(pattern=f"{prefix}{name}{tag}", default_command=("/bin/sh",))
        for prefix in ("", "docker.io/library/")
        for name in ("alpine", "busybox")
        for tag in ("", ":*", "@*")
    ]
    return (
        *project,
        Runtime(pattern="python:3.*", path=(venv_bin,)),
        Runtime(pattern="docker.io/library/python:3.*", path=(venv_bin,)),
        *shells,
    )


def default_config() -> Config:
    node = NodeSpec(
        name="localcluster",
        labels={"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
        capacity={"cpu": str(os.cpu_count() or 1), "memory": str(_memory_bytes()), "pods": "110"},
    )
    return Config(nodes=(node,), images=default_images())


def load(path: str | Path | None) -> Config:
    if path is None:
        return default_config()
    data: dict[str, Any] = yaml.safe_load(Path(path).read_text()) or {}
    base = default_config()
    nodes = (
        tuple(
            NodeSpec(
                name=n["name"],
                labels={
                    **base.nodes[0].labels,
                    "kubernetes.io/hostname": n["name"],
                    **n.get("labels", {}),
                },
                taints=tuple(n.get("taints", [])),
                capacity={"pods": "110", **{k: str(v) for k, v in n.get("capacity", {}).items()}},
            )
            for n in data.get("nodes", [])
        )
        or base.nodes
    )
    images = tuple(
        Runtime(
            pattern=i["pattern"],
            python=i.get("python", sys.executable),
            path=tuple(i.get("path", [])),
            env={k: str(v) for k, v in i.get("env", {}).items()},
            working_dir=i.get("workingDir", ""),
            entrypoints=i.get("entrypoints", {}),
            default_command=tuple(i.get("defaultCommand", [])),
        )
        for i in data.get("images", [])
    )
    return Config(
        nodes=nodes,
        images=images + base.images if data.get("includeDefaultImages", True) else images,
        restart_backoff_seconds=float(data.get("restartBackoffSeconds", 10)),
        metrics_resolution_seconds=float(data.get("metricsResolutionSeconds", 15)),
        autoscaler_sync_seconds=float(data.get("autoscalerSyncSeconds", 15)),
    )
