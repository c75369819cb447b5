"""The Gateway API data plane: Gateways that listen, HTTPRoutes that split and mirror traffic.

A ``gateway.networking.k8s.io/v1`` Gateway gets a loopback address of its own (in
``status.addresses``) and one HTTP listener per ``spec.listeners[]`` entry of protocol HTTP.
Each request is matched against the HTTPRoutes attached to that Gateway (``parentRefs``; path
matches ``PathPrefix`` and ``Exact``, the longest match wins), then:

- sent to one of the rule's ``backendRefs`` (Services), chosen at random in proportion to
  their ``weight`` (default 1) -- per request, as Envoy-based implementations split; when every
  weight is 0, or the chosen Service does not exist, the answer is 500, as the spec says;
- given the headers of its ``RequestHeaderModifier`` filters (set, add, remove), and the path
  of its ``URLRewrite`` filter (``ReplacePrefixMatch``: the matched prefix replaced;
  ``ReplaceFullPath``), for the backend and the mirror alike;
- copied to the Service of each ``RequestMirror`` filter, whose answer is discarded (a mirror
  never delays or fails the real request; copies beyond a bound are dropped);
- given an ``x-request-id`` header when it has none, on the request, its mirror copy and the
  answer, so both versions of a model can log the same id.

The controller writes what clients read back: the Gateway's address and its ``Accepted`` /
``Programmed`` conditions, and per HTTPRoute parent ``Accepted`` and ``ResolvedRefs``. Any
GatewayClass is accepted (localcluster is the only implementation on its cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from localcluster.resources import GATEWAYS, ROUTES, SERVICES
from localcluster.store import Obj, Store, now

CONTROLLER_NAME = "localcluster.helmsman.io/gateway"
REQUEST_ID = "x-request-id"
MAX_MIRRORS_IN_FLIGHT = 256
# Headers that belong to one hop, not to the request (RFC 9110 7.6.1), plus the ones aiohttp
# recomputes for the body it sends.
HOP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding",
        "Upgrade", "Content-Length", "Host",
    )
)  # fmt: skip


@dataclass(frozen=True)
class Backend:
    namespace: str
    name: str
    port: int | None
    weight: int


def backends_of(rule: Obj, namespace: str) -> list[Backend]:
    return [
        Backend(
            ref.get("namespace", namespace),
            ref["name"],
            ref.get("port"),
            int(ref.get("weight", 1)),
        )
        for ref in rule.get("backendRefs") or []
        if ref.get("kind", "Service") == "Service" and ref.get("group", "") == ""
    ]


def mirrors_of(rule: Obj, namespace: str) -> list[Backend]:
    return [
        Backend(ref.get("namespace", namespace), ref["name"], ref.get("port"), 1)
        for f in rule.get("filters") or []
        if f.get("type") == "RequestMirror"
        for ref in [f["requestMirror"]["backendRef"]]
    ]


def modify_headers(rule: Obj, headers: dict[str, str]) -> None:
    """Apply the rule's ``RequestHeaderModifier`` filters (set, add, remove), in order."""
    for f in rule.get("filters") or []:
        if f.get("type") != "RequestHeaderModifier":
            continue
        spec = f.get("requestHeaderModifier") or {}
        lowered = {k.lower(): k for k in headers}
        for header in spec.get("set") or []:
            headers.pop(lowered.get(header["name"].lower(), ""), None)
            headers[header["name"]] = header["value"]
        for header in spec.get("add") or []:
            key = lowered.get(header["name"].lower())
            if key:
                headers[key] = f"{headers[key]},{header['value']}"
            else:
                headers[header["name"]] = header["value"]
        for name in spec.get("remove") or []:
            headers.pop(lowered.get(name.lower(), ""), None)


def pick(backends: list[Backend], draw: float) -> Backend | None:
    """The backend whose share of the total weight ``draw`` (in [0, 1)) falls into."""
    total = sum(b.weight for b in backends)
    if total <= 0:
        return None
    point = draw * total
    for backend in backends:
        if point < backend.weight:
            return backend
        point -= backend.weight
    return backends[-1]


def attached(route: Obj, gateway: Obj) -> bool:
    gw_ns, gw_name = gateway["metadata"]["namespace"], gateway["metadata"]["name"]
    route_ns = route["metadata"]["namespace"]
    return any(
        ref.get("kind", "Gateway") == "Gateway"
        and ref["name"] == gw_name
        and ref.get("namespace", route_ns) == gw_ns
        for ref in route["spec"].get("parentRefs") or []
    )


def path_match(rule: Obj, path: str) -> int:
    """How well the rule's path matches ``path``: the matched length, or -1 for no match."""
    return matched(rule, path)[0]


def matched(rule: Obj, path: str) -> tuple[int, str]:
    """(how well the rule matches ``path``, the prefix it matched); (-1, "") for no match."""
    best, prefix = -1, ""
    for match in rule.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]:
        spec = match.get("path") or {"type": "PathPrefix", "value": "/"}
        value = spec.get("value", "/")
        if spec.get("type", "PathPrefix") == "Exact":
            if path == value and len(value) + 1 > best:
                best, prefix = len(value) + 1, value  # an exact match beats any prefix
        elif len(value) > best and (
            value == "/" or path == value or path.startswith(value.rstrip("/") + "/")
        ):
            best, prefix = len(value), value
    return best, prefix


def rewrite_path(rule: Obj, path: str) -> str:
    """The path after the rule's ``URLRewrite`` filter, as the Gateway API defines it:
    ``ReplacePrefixMatch`` replaces the matched prefix (``/models/a`` -> ``/``: ``/models/a/x``
    becomes ``/x``), ``ReplaceFullPath`` the whole path."""
    for f in rule.get("filters") or []:
        if f.get("type") != "URLRewrite":
            continue
        spec = (f.get("urlRewrite") or {}).get("path") or {}
        if spec.get("type") == "ReplaceFullPath":
            return str(spec.get("replaceFullPath", "/"))
        if spec.get("type") == "ReplacePrefixMatch":
            # The Gateway API's table: /foo/bar -> /xyz/bar, /foo/ -> /xyz/, /foo -> /xyz
            # (prefix /foo, replacement /xyz); an empty result is /.
            prefix = matched(rule, path)[1].rstrip("/")
            rest = path[len(prefix) :]
            replacement = str(spec.get("replacePrefixMatch", "/")).rstrip("/")
            return replacement + rest or "/"
    return path


class GatewayProxy:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.listeners: dict[tuple[str, str, int], web.AppRunner] = {}
        self._session: ClientSession | None = None
        self._mirrors: set[asyncio.Task[None]] = set()
        self.mirrors_dropped = 0

    @property
    def session(self) -> ClientSession:
        if self._session is None:
            self._session = ClientSession(
                connector=TCPConnector(limit=0, force_close=False),
                timeout=ClientTimeout(total=60),
                auto_decompress=False,
            )
        return self._session

    async def run(self) -> None:
        while True:
            seen = self.store.revision
            await self.sync()
            await self.store.changed_since(seen, 1.0)

    # -- control plane ------------------------------------------------------------------------

    async def sync(self) -> None:
        wanted: set[tuple[str, str, int]] = set()
        gateways = self.store.list(GATEWAYS)
        for gw in gateways:
            ip = self._program(gw)
            key = f"{gw['metadata']['namespace']}/{gw['metadata']['name']}"
            for listener in gw["spec"].get("listeners") or []:
                if listener.get("protocol", "HTTP") != "HTTP":
                    continue
                listen = (key, ip, int(listener["port"]))
                wanted.add(listen)
                if listen not in self.listeners:
                    await self._listen(listen)
        for stale in set(self.listeners) - wanted:
            await self.listeners.pop(stale).cleanup()
        for route in self.store.list(ROUTES):
            self._route_status(route, gateways)

    def _program(self, gw: Obj) -> str:
        """Give the Gateway its address and conditions (once); return the address."""
        addresses = (gw.get("status") or {}).get("addresses") or []
        ip = addresses[0]["value"] if addresses else self.store.allocate_address()
        generation = gw["metadata"].get("generation", 1)

        def mutate(obj: Obj) -> None:
            status = obj.setdefault("status", {})
            status["addresses"] = [{"type": "IPAddress", "value": ip}]
            conditions = status.setdefault("conditions", [])
            for type_ in ("Accepted", "Programmed"):
                _condition(conditions, type_, "True", type_, "", generation)

        ns, name = gw["metadata"]["namespace"], gw["metadata"]["name"]
        self.store.update(GATEWAYS, ns, name, mutate, subresource="status")
        return str(ip)

    def _route_status(self, route: Obj, gateways: list[Obj]) -> None:
        ns, name = route["metadata"]["namespace"], route["metadata"]["name"]
        generation = route["metadata"].get("generation", 1)
        missing = sorted(
            {
                f"{b.namespace}/{b.name}"
                for rule in route["spec"].get("rules") or []
                for b in backends_of(rule, ns) + mirrors_of(rule, ns)
                if self.store.find(SERVICES, b.namespace, b.name) is None
            }
        )
        previous = {
            _parent_key(p["parentRef"], ns): p
            for p in (route.get("status") or {}).get("parents") or []
        }
        parents = []
        for ref in route["spec"].get("parentRefs") or []:
            found = any(
                g["metadata"]["name"] == ref["name"]
                and g["metadata"]["namespace"] == ref.get("namespace", ns)
                for g in gateways
            )
            conditions = [
                dict(c) for c in previous.get(_parent_key(ref, ns), {}).get("conditions", [])
            ]
            _condition(
                conditions, "Accepted", "True" if found else "False",
                "Accepted" if found else "NoMatchingParent",
                "" if found else f"no Gateway {ref.get('namespace', ns)}/{ref['name']}",
                generation,
            )  # fmt: skip
            _condition(
                conditions, "ResolvedRefs", "False" if missing else "True",
                "BackendNotFound" if missing else "ResolvedRefs",
                f"no Service {', '.join(missing)}" if missing else "", generation,
            )  # fmt: skip
            parents.append(
                {"parentRef": ref, "controllerName": CONTROLLER_NAME, "conditions": conditions}
            )

        def mutate(obj: Obj) -> None:
            obj.setdefault("status", {})["parents"] = parents

        self.store.update(ROUTES, ns, name, mutate, subresource="status")

    async def _listen(self, listen: tuple[str, str, int]) -> None:
        gw_key, ip, port = listen
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", lambda r: self._handle(r, gw_key))
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, ip, port, shutdown_timeout=0.5).start()
        except OSError:
            await runner.cleanup()
            return
        self.listeners[listen] = runner

    # -- data plane ---------------------------------------------------------------------------

    def _rule_for(self, gw_key: str, path: str) -> tuple[Obj, str] | None:
        ns, name = gw_key.split("/", 1)
        gateway = self.store.find(GATEWAYS, ns, name)
        if gateway is None:
            return None
        best: tuple[int, Obj, str] | None = None
        for route in self.store.list(ROUTES, where=lambda r: attached(r, gateway)):
            for rule in route["spec"].get("rules") or [{}]:
                score = path_match(rule, path)
                if score >= 0 and (best is None or score > best[0]):
                    best = (score, rule, route["metadata"]["namespace"])
        return None if best is None else (best[1], best[2])

    def _address(self, backend: Backend) -> str | None:
        svc = self.store.find(SERVICES, backend.namespace, backend.name)
        if svc is None or not svc["spec"].get("clusterIP"):
            return None
        ports = svc["spec"].get("ports") or []
        port = backend.port or (ports[0]["port"] if ports else 80)
        return f"http://{svc['spec']['clusterIP']}:{port}"

    async def _handle(self, request: web.Request, gw_key: str) -> web.StreamResponse:
        found = self._rule_for(gw_key, request.path)
        if found is None:
            return web.Response(status=404, text="no HTTPRoute matches this request\n")
        rule, namespace = found
        # The path as the client sent it (percent-encoding kept), rewritten; then its query.
        target = rewrite_path(rule, request.rel_url.raw_path)
        query = request.rel_url.raw_query_string
        path_qs = target + (f"?{query}" if query else "")
        body = await request.read()
        request_id = request.headers.get(REQUEST_ID) or uuid.uuid4().hex
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        headers[REQUEST_ID] = request_id
        modify_headers(rule, headers)
        for mirror in mirrors_of(rule, namespace):
            self._mirror(mirror, request, headers, body, path_qs)
        backend = pick(backends_of(rule, namespace), random.random())  # noqa: S311 - load split
        address = self._address(backend) if backend else None
        if address is None:
            return web.Response(
                status=500,
                text="no backend: every weight is 0 or the Service does not exist\n",
                headers={REQUEST_ID: request_id},
            )
        try:
            async with self.session.request(
                request.method, address + path_qs, data=body, headers=headers,
                allow_redirects=False,
            ) as upstream:  # fmt: skip
                payload = await upstream.read()
                answer = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
                answer[REQUEST_ID] = request_id
                return web.Response(status=upstream.status, body=payload, headers=answer)
        except (TimeoutError, ClientError, OSError):
            return web.Response(
                status=503, text="upstream connect error\n", headers={REQUEST_ID: request_id}
            )

    def _mirror(
        self,
        backend: Backend,
        request: web.Request,
        headers: dict[str, str],
        body: bytes,
        path_qs: str,
    ) -> None:
        address = self._address(backend)
        if address is None:
            return
        if len(self._mirrors) >= MAX_MIRRORS_IN_FLIGHT:
            self.mirrors_dropped += 1
            return

        async def send() -> None:
            with contextlib.suppress(ClientError, OSError, asyncio.TimeoutError):
                async with self.session.request(
                    request.method, address + path_qs, data=body, headers=headers,
                    allow_redirects=False,
                ) as response:  # fmt: skip
                    await response.read()

        task = asyncio.ensure_future(send())
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def close(self) -> None:
        for task in list(self._mirrors):
            task.cancel()
        for runner in self.listeners.values():
            await runner.cleanup()
        self.listeners.clear()
        if self._session is not None:
            await self._session.close()


def _parent_key(ref: Obj, namespace: str) -> tuple[str, str, str]:
    return (ref.get("namespace", namespace), ref["name"], ref.get("sectionName", ""))


def _condition(
    conditions: list[Any], type_: str, status: str, reason: str, message: str, generation: int
) -> None:
    """Set a condition in place; its transition time moves only when its status does."""
    current = next((c for c in conditions if c["type"] == type_), None)
    if current is None:
        current = {"type": type_, "lastTransitionTime": now()}
        conditions.append(current)
    elif current.get("status") != status:
        current["lastTransitionTime"] = now()
    current.update(status=status, reason=reason, message=message, observedGeneration=generation)
