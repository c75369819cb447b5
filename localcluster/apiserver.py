"""The HTTP face of localcluster: the Kubernetes REST API over the object store.

Routes follow the real server's layout (``/api/v1/...``, ``/apis/GROUP/VERSION/...``,
``namespaces/NS/PLURAL/NAME/SUBRESOURCE``), answer with the same JSON shapes and ``Status``
errors, and stream watches as newline-delimited JSON events and logs as chunked text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from localcluster import errors, patch, selectors, tables, validation
from localcluster.resources import KINDS, Kind, groups, lookup, resource_list
from localcluster.store import Store

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-localcluster",
    "gitCommit": "",
    "gitTreeState": "clean",
    "buildDate": "2026-11-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}


class LogSource(Protocol):
    """What the API server asks the kubelet for: a pod container's log, maybe followed."""

    def stream_logs(self, pod: dict[str, Any], container: str, options: dict[str, Any]) -> Any: ...


@dataclass(frozen=True)
class Target:
    kind: Kind
    namespace: str
    name: str
    subresource: str


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def parse_path(parts: list[str]) -> Target:
    """``[group, version, ...rest]`` after /api or /apis -> what the request addresses."""
    group, version, rest = parts[0], parts[1], parts[2:]
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        candidate = lookup(group, version, rest[2])
        if candidate is not None and candidate.namespaced:
            namespace, rest = rest[1], rest[2:]
    if not rest:
        raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
    kind = lookup(group, version, rest[0])
    if kind is None:
        raise errors.ApiError(
            404, "NotFound", f"the server could not find the requested resource ({rest[0]})"
        )
    name = rest[1] if len(rest) > 1 else ""
    sub = "/".join(rest[2:])
    if sub and sub not in kind.subresources:
        raise errors.ApiError(404, "NotFound", f"{kind.plural}/{sub} is not a subresource")
    return Target(kind, namespace, name, sub)


def _verb(method: str, target: Target, watch: bool) -> str:
    """The RBAC verb of a request, as the real API server's authorizer names it."""
    if method == "GET":
        return "watch" if watch else ("get" if target.name else "list")
    if method == "DELETE":
        return "delete" if target.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def _audit_record(request: web.Request, target: Target) -> dict[str, Any]:
    resource = target.kind.plural + (f"/{target.subresource}" if target.subresource else "")
    return {
        "verb": _verb(request.method, target, _truthy(request.query.get("watch"))),
        "apiGroup": target.kind.group,
        "resource": resource,
        "namespace": target.namespace,
        "name": target.name,
        "userAgent": request.headers.get("User-Agent", ""),
    }


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json"
    )


class ApiServer:
    def __init__(self, store: Store, logs: LogSource | None = None) -> None:
        self.store = store
        self.logs = logs
        # Called with one record per resource request (verb, group, resource, namespace,
        # name, user agent), like the real server's audit log; None: no audit.
        self.audit: Callable[[dict[str, Any]], None] | None = None
        self.app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._errors])
        self.app.router.add_get("/version", self._version)
        self.app.router.add_get("/healthz", self._ok)
        self.app.router.add_get("/livez", self._ok)
        self.app.router.add_get("/readyz", self._ok)
        self.app.router.add_get("/openapi/v3", self._openapi_index)
        self.app.router.add_get("/openapi/v3/{gv:.*}", self._openapi_group_version)
        self.app.router.add_get("/api", self._api_versions)
        self.app.router.add_get("/apis", self._api_groups)
        self.app.router.add_route("*", "/api/{tail:.*}", self._core)
        self.app.router.add_route("*", "/apis/{tail:.*}", self._grouped)
        # Hooks components register for work that must happen inside a request.
        self.before_write: list[Callable[[Target, dict[str, Any]], Awaitable[None] | None]] = []

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except errors.ApiError as exc:
            return json_response(exc.status(), exc.code)
        except json.JSONDecodeError as exc:
            return json_response(errors.bad_request(f"invalid JSON body: {exc}").status(), 400)

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _version(self, request: web.Request) -> web.Response:
        return json_response(SERVER_VERSION)

    async def _api_versions(self, request: web.Request) -> web.Response:
        host = request.host
        return json_response(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
            }
        )

    async def _api_groups(self, request: web.Request) -> web.Response:
        listed = []
        for name, versions in groups().items():
            gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
            listed.append({"name": name, "versions": gvs, "preferredVersion": gvs[0]})
        return json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": listed})

    async def _openapi_index(self, request: web.Request) -> web.Response:
        """OpenAPI v3 discovery: one document per group-version, as kubectl expects."""
        gvs = ["api/v1"] + [f"apis/{g}/{v}" for g, versions in groups().items() for v in versions]
        return json_response(
            {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}"} for gv in gvs}}
        )

    async def _openapi_group_version(self, request: web.Request) -> web.Response:
        """Paths with their operations' GVK and query parameters.

        Enough for kubectl to see that every PATCH accepts ``fieldValidation`` (so it sends
        ``fieldValidation=Strict`` and leaves validation to the server); the schemas
        themselves are not published, and kubectl falls back to its compiled-in types.
        """
        parts = request.match_info["gv"].split("/")
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        paths: dict[str, Any] = {}
        for k in KINDS:
            if (k.group, k.version) != (group, version):
                continue
            gvk = {"group": k.group, "version": k.version, "kind": k.kind}
            prefix = f"/api/{version}" if not group else f"/apis/{group}/{version}"
            base = (
                f"{prefix}/namespaces/{{namespace}}/{k.plural}"
                if k.namespaced
                else f"{prefix}/{k.plural}"
            )
            params = [
                {"name": n, "in": "query", "schema": {"type": "string"}}
                for n in ("dryRun", "fieldManager", "fieldValidation")
            ]
            operation = {"x-kubernetes-group-version-kind": gvk, "parameters": params}
            paths[base] = {"post": {**operation, "x-kubernetes-action": "post"}}
            paths[f"{base}/{{name}}"] = {
                "put": {**operation, "x-kubernetes-action": "put"},
                "patch": {**operation, "x-kubernetes-action": "patch"},
            }
        return json_response(
            {
                "openapi": "3.0.0",
                "info": {"title": "localcluster", "version": "v1.32.0"},
                "paths": paths,
                "components": {"schemas": {}},
            }
        )

    def _validate_fields(self, request: web.Request, target: Target, body: Any) -> None:
        mode = request.query.get("fieldValidation", "")
        if mode not in ("Strict", "Warn") or not isinstance(body, dict) or target.subresource:
            return
        model = validation.model_for(target.kind)
        if model is None:
            return
        unknown = validation.unknown_fields(body, model)
        if unknown and mode == "Strict":
            detail = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise errors.bad_request(
                f'{target.kind.kind} in version "{target.kind.version}" '
                f"cannot be handled as a {target.kind.kind}: strict decoding error: {detail}"
            )

    async def _core(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.match_info["tail"].split("/") if p]
        return await self._dispatch(request, ["", *parts])

    async def _grouped(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.match_info["tail"].split("/") if p]
        if len(parts) == 1:
            versions = groups().get(parts[0])
            if versions is None:
                raise errors.ApiError(
                    404, "NotFound", "the server could not find the requested resource"
                )
            gvs = [{"groupVersion": f"{parts[0]}/{v}", "version": v} for v in versions]
            return json_response(
                {
                    "kind": "APIGroup",
                    "apiVersion": "v1",
                    "name": parts[0],
                    "versions": gvs,
                    "preferredVersion": gvs[0],
                }
            )
        return await self._dispatch(request, parts)

    async def _dispatch(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        if len(parts) < 2 or not parts[1]:
            raise errors.ApiError(
                404, "NotFound", "the server could not find the requested resource"
            )
        if len(parts) == 2:
            listing = resource_list(parts[0], parts[1])
            if listing is None:
                raise errors.ApiError(
                    404, "NotFound", "the server could not find the requested resource"
                )
            return json_response(listing)
        target = parse_path(parts)
        method = request.method
        if self.audit is not None:
            self.audit(_audit_record(request, target))
        if target.name == "":
            if method == "GET":
                if _truthy(request.query.get("watch")):
                    return await self._watch(request, target)
                listing = self._list(request, target)
                if tables.wants_table(request.headers.get("Accept", "")):
                    return json_response(
                        tables.table(
                            target.kind.kind,
                            listing["items"],
                            listing["metadata"]["resourceVersion"],
                            request.query.get("includeObject", "Metadata"),
                        )
                    )
                return json_response(listing)
            if method == "POST":
                return json_response(
                    self.store.create(target.kind, target.namespace, await self._body(request)), 201
                )
            if method == "DELETE":
                return json_response(self._delete_collection(request, target))
        else:
            if target.subresource == "log" and method == "GET":
                return await self._log(request, target)
            if method == "GET":
                obj = self._get(target)
                if not target.subresource and tables.wants_table(request.headers.get("Accept", "")):
                    return json_response(
                        tables.table(
                            target.kind.kind,
                            [obj],
                            obj["metadata"]["resourceVersion"],
                            request.query.get("includeObject", "Metadata"),
                        )
                    )
                return json_response(obj)
            if method == "PUT":
                body = await self._body(request)
                self._validate_fields(request, target, body)
                return json_response(self._put(target, body))
            if method == "PATCH":
                return json_response(await self._patch(request, target))
            if method == "DELETE":
                return json_response(await self._delete(request, target))
            if method == "POST" and target.subresource == "eviction":
                self.store.delete(target.kind, target.namespace, target.name)
                return json_response(
                    {"kind": "Status", "apiVersion": "v1", "status": "Success"}, 201
                )
        raise errors.ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        text = await request.text()
        if not text:
            raise errors.bad_request("a request body is required")
        body = json.loads(text)
        if not isinstance(body, (dict, list)):
            raise errors.bad_request("the request body must be a JSON object")
        return body  # type: ignore[return-value]

    # -- verbs -----------------------------------------------------------------------------
    def _list(self, request: web.Request, target: Target) -> dict[str, Any]:
        labels = selectors.parse_labels(request.query.get("labelSelector"))
        fields = selectors.parse_fields(request.query.get("fieldSelector"))
        namespace = target.namespace or None
        items = self.store.list(
            target.kind,
            namespace,
            lambda o: labels(o["metadata"].get("labels") or {}) and fields(o),
        )
        limit = int(request.query.get("limit") or 0)
        if limit:
            items = items[:limit]
        return {
            "kind": f"{target.kind.kind}List",
            "apiVersion": target.kind.api_version,
            "metadata": {"resourceVersion": self.store.resource_version},
            "items": items,
        }

    def _get(self, target: Target) -> dict[str, Any]:
        obj = self.store.get(target.kind, target.namespace, target.name)
        if target.subresource == "scale":
            return _scale_of(obj)
        return obj

    def _scale_to(self, target: Target, scale: dict[str, Any]) -> dict[str, Any]:
        """The scale subresource: only spec.replicas of the parent object changes."""
        replicas = scale.get("spec", {}).get("replicas", 0)
        updated = self.store.update(
            target.kind,
            target.namespace,
            target.name,
            lambda o: o["spec"].__setitem__("replicas", replicas),
        )
        return _scale_of(updated)

    def _put(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        if target.subresource == "scale":
            return self._scale_to(target, body)
        return self.store.replace(
            target.kind, target.namespace, target.name, body, target.subresource
        )

    async def _patch(self, request: web.Request, target: Target) -> dict[str, Any]:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        body: Any = await self._body(request)
        self._validate_fields(request, target, body)
        current = self.store.get(target.kind, target.namespace, target.name)
        if target.subresource == "scale":
            current = _scale_of(current)
        if content_type == "application/json-patch+json":
            new = patch.json_patch(current, body)
        elif content_type == "application/merge-patch+json":
            new = patch.merge_patch(current, body)
        elif content_type == "application/strategic-merge-patch+json":
            new = patch.strategic_merge_patch(current, body)
        elif content_type == "application/apply-patch+yaml":
            new = patch.merge_patch(current, body)  # server-side apply, approximated
        else:
            raise errors.ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, "
                "application/apply-patch+yaml, application/strategic-merge-patch+json",
            )
        if target.subresource == "scale":
            return self._scale_to(target, new)
        new.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self.store.replace(
            target.kind, target.namespace, target.name, new, target.subresource
        )

    async def _delete_options(self, request: web.Request) -> tuple[int | None, str]:
        options: dict[str, Any] = {}
        if request.can_read_body:
            text = await request.text()
            if text.strip():
                options = json.loads(text)
        grace = options.get("gracePeriodSeconds", request.query.get("gracePeriodSeconds"))
        propagation = (
            options.get("propagationPolicy")
            or request.query.get("propagationPolicy")
            or "Background"
        )
        return (int(grace) if grace is not None else None), propagation

    async def _delete(self, request: web.Request, target: Target) -> dict[str, Any]:
        grace, propagation = await self._delete_options(request)
        if target.kind.kind == "Namespace":
            for kind in KINDS:
                if kind.namespaced:
                    for obj in self.store.list(kind, target.name):
                        with contextlib.suppress(errors.ApiError):
                            self.store.delete(kind, target.name, obj["metadata"]["name"], 0)
        return self.store.delete(target.kind, target.namespace, target.name, grace, propagation)

    def _delete_collection(self, request: web.Request, target: Target) -> dict[str, Any]:
        listing = self._list(request, target)
        for obj in listing["items"]:
            with contextlib.suppress(errors.ApiError):
                self.store.delete(
                    target.kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
                )
        return listing

    # -- streams ---------------------------------------------------------------------------
    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        labels = selectors.parse_labels(request.query.get("labelSelector"))
        fields = selectors.parse_fields(request.query.get("fieldSelector"))
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        )
        await response.prepare(request)
        try:
            watch, replay = self.store.watch(
                target.kind, target.namespace or None, request.query.get("resourceVersion")
            )
        except errors.ApiError as exc:
            await response.write(
                json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n"
            )
            return response

        def visible(obj: dict[str, Any]) -> bool:
            return labels(obj["metadata"].get("labels") or {}) and fields(obj)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            for event in replay:
                if visible(event.obj):
                    await response.write(_event_line(event.type, event.obj))
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watch.queue.get(), remaining)
                except TimeoutError:
                    break
                if visible(event.obj):
                    await response.write(_event_line(event.type, event.obj))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unwatch(watch)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def _log(self, request: web.Request, target: Target) -> web.StreamResponse:
        pod = self.store.get(target.kind, target.namespace, target.name)
        containers = [c["name"] for c in pod["spec"].get("containers", [])]
        inits = [c["name"] for c in pod["spec"].get("initContainers", [])]
        container = request.query.get("container") or ""
        if not container:
            if len(containers) != 1:
                raise errors.bad_request(
                    f"a container name must be specified for pod {target.name}, "
                    f"choose one of: {containers}"
                )
            container = containers[0]
        if container not in containers + inits:
            raise errors.bad_request(f"container {container} is not valid for pod {target.name}")
        if self.logs is None:
            raise errors.bad_request("no kubelet serves logs")
        options = {
            "follow": _truthy(request.query.get("follow")),
            "timestamps": _truthy(request.query.get("timestamps")),
            "previous": _truthy(request.query.get("previous")),
            "tail_lines": int(request.query["tailLines"]) if "tailLines" in request.query else None,
            "since_seconds": int(request.query["sinceSeconds"])
            if "sinceSeconds" in request.query
            else None,
            "since_time": request.query.get("sinceTime"),
        }
        chunks = self.logs.stream_logs(pod, container, options)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            async for chunk in chunks:
                await response.write(chunk)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response


def _event_line(type_: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": type_, "object": obj}).encode() + b"\n"


def _scale_of(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    selector = obj.get("spec", {}).get("selector", {}).get("matchLabels", {})
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
        "status": {
            "replicas": obj.get("status", {}).get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in selector.items()),
        },
    }
