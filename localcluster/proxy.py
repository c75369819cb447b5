"""The service proxy: one TCP listener per Service port, balancing over ready endpoints.

Every Service gets a loopback address of its own as ``spec.clusterIP`` (allocated by the
store on create), so clients on this machine reach ``CLUSTER_IP:PORT`` exactly as pods reach
a ClusterIP in a real cluster. Each new connection goes to the next ready endpoint (round
robin), which is what kube-proxy's per-connection balancing amounts to; a Service with no
ready endpoint refuses connections, as a real one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools

from localcluster.controllers import resolve_target_port
from localcluster.resources import ENDPOINTS, SERVICES
from localcluster.store import Obj, Store


class ServiceProxy:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.listeners: dict[tuple[str, str, int], asyncio.Server] = {}
        self._turn = itertools.count()
        self._links: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        while True:
            seen = self.store.revision
            await self.sync()
            await self.store.changed_since(seen, 1.0)

    async def sync(self) -> None:
        wanted: dict[tuple[str, str, int], tuple[str, Obj]] = {}
        for svc in self.store.list(SERVICES):
            ip = svc["spec"].get("clusterIP")
            if not ip or ip == "None":
                continue
            key = f"{svc['metadata']['namespace']}/{svc['metadata']['name']}"
            for port in svc["spec"].get("ports", []):
                wanted[(key, ip, int(port["port"]))] = (key, port)
        for stale in set(self.listeners) - set(wanted):
            self.listeners.pop(stale).close()
        for listen_key, (svc_key, port) in wanted.items():
            if listen_key in self.listeners:
                continue
            _, ip, number = listen_key
            with contextlib.suppress(OSError):
                self.listeners[listen_key] = await asyncio.start_server(
                    functools.partial(self._handle, svc_key=svc_key, port=port), ip, number
                )

    def _backends(self, svc_key: str, port: Obj) -> list[tuple[str, int]]:
        ns, name = svc_key.split("/", 1)
        endpoints = self.store.find(ENDPOINTS, ns, name)
        if endpoints is None:
            return []
        backends = []
        for subset in endpoints.get("subsets", []):
            target = next(
                (
                    p["port"]
                    for p in subset.get("ports", [])
                    if p.get("name", "") == port.get("name", "")
                ),
                resolve_target_port(port, None),
            )
            backends += [(a["ip"], int(target)) for a in subset.get("addresses", [])]
        return backends

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, svc_key: str, port: Obj
    ) -> None:
        backends = self._backends(svc_key, port)
        start = next(self._turn)
        for attempt in range(len(backends)):
            host, number = backends[(start + attempt) % len(backends)]
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(host, number)
            except OSError:
                continue  # that endpoint just went away: try the next one
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
            return
        writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def close(self) -> None:
        for server in self.listeners.values():
            server.close()
        self.listeners.clear()
