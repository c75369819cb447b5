"""Fault injection, for reliability tests: break things on purpose, the way clusters break.

Through the admin endpoint ``POST /localcluster/faults`` (JSON) or the ``FaultClient`` below:

- ``{"action": "kill-container", "namespace": NS, "pod": P, "container": C}`` -- SIGKILL the
  container's processes; the kubelet then restarts it (or not) by its ``restartPolicy``.
- ``{"action": "evict", "namespace": NS, "pod": P}`` -- the kubelet evicts the pod: processes
  stopped, phase ``Failed``, reason ``Evicted`` (a ReplicaSet replaces it).
- ``{"action": "node-not-ready", "node": N}`` / ``"node-ready"`` -- flip the node's Ready
  condition; the scheduler stops placing pods there.
- ``{"action": "fail-image-pulls", "pattern": GLOB}`` / ``"allow-image-pulls"`` -- images
  matching the pattern fail as if the registry refused them.
- ``{"action": "api-errors", "share": 0.2, "mode": "429"|"500"|"timeout", "seed": 1}`` -- that
  share of API requests answers 429 (with Retry-After), 500, or hangs for ``timeout_seconds``
  and then drops the connection; ``{"action": "api-errors", "share": 0}`` ends it.

``GET /localcluster/faults`` shows what is active.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import random
import ssl
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from localcluster import errors
from localcluster.resources import NODES
from localcluster.scheduler import set_condition
from localcluster.store import Obj, Store

if TYPE_CHECKING:
    from localcluster.kubelet import Kubelet

PREFIX = "/localcluster/faults"


@dataclass
class ApiFault:
    share: float = 0.0
    mode: str = "500"
    timeout_seconds: float = 30.0
    rng: random.Random = field(default_factory=random.Random)


class FaultInjector:
    def __init__(self, store: Store, kubelet: Kubelet | None = None) -> None:
        self.store = store
        self.kubelet: Kubelet | None = kubelet  # set once the server knows its address
        self.api = ApiFault()
        self.failing_images: set[str] = set()

    def image_fails(self, image: str) -> bool:
        return any(fnmatch.fnmatchcase(image, p) for p in self.failing_images)

    def state(self) -> dict[str, Any]:
        return {
            "api": {"share": self.api.share, "mode": self.api.mode},
            "failingImages": sorted(self.failing_images),
        }

    async def apply(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request.get("action")
        if self.kubelet is None:
            raise errors.ApiError(503, "ServiceUnavailable", "the kubelet is not running yet")
        if action == "kill-container":
            await self.kubelet.kill_container(
                request["namespace"], request["pod"], request.get("container")
            )
        elif action == "evict":
            await self.kubelet.evict(
                request["namespace"], request["pod"], request.get("message", "")
            )
        elif action in ("node-not-ready", "node-ready"):
            ready = action == "node-ready"

            def flip(node: Obj) -> None:
                set_condition(
                    node,
                    "Ready",
                    "True" if ready else "Unknown",
                    "KubeletReady" if ready else "NodeStatusUnknown",
                    "kubelet is posting ready status"
                    if ready
                    else "Kubelet stopped posting node status.",
                )

            self.store.update(NODES, "", request["node"], flip, "status")
        elif action == "fail-image-pulls":
            self.failing_images.add(request["pattern"])
        elif action == "allow-image-pulls":
            self.failing_images.discard(request["pattern"])
        elif action == "api-errors":
            mode = str(request.get("mode", "500"))
            if mode not in ("429", "500", "timeout"):
                raise errors.bad_request(f"mode must be 429, 500 or timeout, not {mode!r}")
            self.api = ApiFault(
                float(request.get("share", 0)),
                mode,
                float(request.get("timeout_seconds", 30)),
                # Reproducible fault sequences for tests, not security: a seeded PRNG is right.
                random.Random(request.get("seed")),  # noqa: S311
            )
        else:
            raise errors.bad_request(f"unknown fault action {action!r}; see localcluster/faults.py")
        return self.state()

    # -- HTTP ------------------------------------------------------------------------------
    def install(self, app: web.Application) -> None:
        app.router.add_get(PREFIX, self._get)
        app.router.add_post(PREFIX, self._post)
        app.middlewares.append(self._middleware)

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def _post(self, request: web.Request) -> web.Response:
        return web.json_response(await self.apply(await request.json()))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        fault = self.api
        hit = request.path.startswith(("/api/", "/apis/")) and fault.share > 0
        if hit and fault.rng.random() < fault.share:
            if fault.mode == "429":
                status = errors.ApiError(
                    429,
                    "TooManyRequests",
                    "localcluster fault: too many requests, please try again later",
                ).status()
                return web.json_response(status, status=429, headers={"Retry-After": "1"})
            if fault.mode == "500":
                status = errors.ApiError(
                    500, "InternalError", "localcluster fault: internal error"
                ).status()
                return web.json_response(status, status=500)
            await asyncio.sleep(fault.timeout_seconds)
            if request.transport is not None:
                request.transport.close()
            raise ConnectionResetError("localcluster fault: request timed out")
        response: web.StreamResponse = await handler(request)
        return response


class FaultClient:
    """The admin endpoint from Python: ``FaultClient(server, ...).kill_container(ns, pod)``;
    the server's CA (``context``) and a token RBAC lets post there (the admin's)."""

    def __init__(self, server: str, context: ssl.SSLContext | None = None, token: str = "") -> None:
        self.url = server.rstrip("/") + PREFIX
        self.context = context
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - the URL is the cluster's own address
            self.url, data=json.dumps(body).encode(), headers=self.headers
        )
        with urllib.request.urlopen(  # noqa: S310 - the cluster's own address
            request, timeout=30, context=self.context
        ) as response:
            result: dict[str, Any] = json.load(response)
            return result

    def kill_container(self, namespace: str, pod: str, container: str | None = None) -> None:
        self._post(
            {"action": "kill-container", "namespace": namespace, "pod": pod, "container": container}
        )

    def evict(self, namespace: str, pod: str) -> None:
        self._post({"action": "evict", "namespace": namespace, "pod": pod})

    def node_ready(self, node: str, ready: bool) -> None:
        self._post({"action": "node-ready" if ready else "node-not-ready", "node": node})

    def fail_image_pulls(self, pattern: str, fail: bool = True) -> None:
        self._post(
            {"action": "fail-image-pulls" if fail else "allow-image-pulls", "pattern": pattern}
        )

    def api_errors(
        self, share: float, mode: str = "500", seed: int | None = None, timeout_seconds: float = 30
    ) -> None:
        self._post(
            {
                "action": "api-errors",
                "share": share,
                "mode": mode,
                "seed": seed,
                "timeout_seconds": timeout_seconds,
            }
        )
