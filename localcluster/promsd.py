"""Prometheus service discovery for localcluster's pods, over Prometheus' HTTP SD.

A cluster's Prometheus finds pods with ``kubernetes_sd_configs`` (role ``pod``). Debian's
Prometheus build leaves Kubernetes discovery out, so localcluster serves the same targets at
``GET /localcluster/v1/prometheus/pods?namespace=NS`` in the HTTP SD format
(``http_sd_configs``), one target per container port, with the meta labels the Kubernetes SD
gives (``__meta_kubernetes_pod_label_<name>``, ``..._annotation_<name>``,
``..._container_port_name``, ``..._phase``, ``..._ready``, ...). The relabel rules of a scrape
job are therefore the same here and on a cluster.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from localcluster.resources import PODS
from localcluster.store import Obj, Store

PATH = "/localcluster/v1/prometheus/pods"


def sanitize(name: str) -> str:
    """Prometheus' label-name rule: every character outside [a-zA-Z0-9_] becomes ``_``."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets(pod: Obj) -> list[dict[str, Any]]:
    meta, status = pod["metadata"], pod.get("status") or {}
    ip = status.get("podIP")
    if not ip:
        return []
    prefix = "__meta_kubernetes_pod_"
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    common = {
        "__meta_kubernetes_namespace": meta.get("namespace", ""),
        f"{prefix}name": meta["name"],
        f"{prefix}ip": ip,
        f"{prefix}uid": meta.get("uid", ""),
        f"{prefix}node_name": pod["spec"].get("nodeName", ""),
        f"{prefix}phase": status.get("phase", ""),
        f"{prefix}ready": "true" if ready else "false",
    }
    for key, value in (meta.get("labels") or {}).items():
        common[f"{prefix}label_{sanitize(key)}"] = value
        common[f"{prefix}labelpresent_{sanitize(key)}"] = "true"
    for key, value in (meta.get("annotations") or {}).items():
        common[f"{prefix}annotation_{sanitize(key)}"] = value
        common[f"{prefix}annotationpresent_{sanitize(key)}"] = "true"
    targets = []
    for container in pod["spec"].get("containers") or []:
        for port in container.get("ports") or []:
            labels = {
                **common,
                f"{prefix}container_name": container["name"],
                f"{prefix}container_image": container.get("image", ""),
                f"{prefix}container_port_name": port.get("name", ""),
                f"{prefix}container_port_number": str(port["containerPort"]),
                f"{prefix}container_port_protocol": port.get("protocol", "TCP"),
            }
            targets.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": labels})
    return targets


def install(app: web.Application, store: Store) -> None:
    async def pods(request: web.Request) -> web.Response:
        namespace = request.query.get("namespace")
        groups = [t for pod in store.list(PODS, namespace) for t in pod_targets(pod)]
        return web.json_response(groups)

    app.router.add_get(PATH, pods)
