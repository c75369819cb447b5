"""The HTTP face of localcluster: the Kubernetes REST API over the object store.

Routes follow the real server's layout (``/api/v1/...``, ``/apis/GROUP/VERSION/...``,
``namespaces/NS/PLURAL/NAME/SUBRESOURCE``), answer with the same JSON shapes and ``Status``
errors, and stream watches as newline-delimited JSON events and logs as chunked text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import yaml
from aiohttp import web

from localcluster import (
    apply,
    auth,
    disruption,
    errors,
    openapi,
    patch,
    portforward,
    protobuf,
    reviews,
    selectors,
    streams,
    tables,
    validation,
)
from localcluster.resources import KINDS, Kind, groups, lookup, resource_list
from localcluster.store import Store, now

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
    """What the API server asks the kubelet for: a container's log, maybe followed, and where
    a command runs inside it."""

    def stream_logs(self, pod: dict[str, Any], container: str, options: dict[str, Any]) -> Any: ...

    def exec_target(self, pod: dict[str, Any], container: str) -> streams.ExecTarget: ...

    def attach_target(self, pod: dict[str, Any], container: str) -> streams.AttachTarget: ...

    def pod_metrics(self, namespace: str | None, name: str | None = None) -> list[Any]: ...

    def node_metrics(self) -> list[Any]: ...


@dataclass(frozen=True)
class Target:
    kind: Kind
    namespace: str
    name: str
    subresource: str


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


# The annotation on the bookmark that ends a watch's initial events (WatchList).
INITIAL_EVENTS_END = "k8s.io/initial-events-end"

UNSUPPORTED_PATCH = (
    "the body of the request was in an unknown format - accepted media types include: "
    "application/json-patch+json, application/merge-patch+json, "
    "application/apply-patch+yaml, application/strategic-merge-patch+json"
)
# The kind a subresource's body is (other subresources take their parent's kind).
SUBRESOURCE_BODIES = {
    "scale": ("autoscaling/v1", "Scale"),
    "eviction": ("policy/v1", "Eviction"),
    "binding": ("v1", "Binding"),
}
DELETE_OPTIONS = ("meta.k8s.io/v1", "DeleteOptions")


def _go_strings(values: list[str]) -> str:
    """A string slice as Go's ``%#v`` prints it in a field error: ``[]string{"a", "b"}``."""
    return "[]string{" + ", ".join(json.dumps(v) for v in values) + "}"


def dry_run(values: list[str], options: str) -> bool:
    """Whether ``dryRun`` values ask for a dry run; 422 for any but "All", as the real server's
    ``ValidateDryRun`` answers for ``options`` (CreateOptions, UpdateOptions, ...)."""
    if any(v != "All" for v in values):
        body = f'Unsupported value: {_go_strings(values)}: supported values: "All"'
        raise errors.invalid_options(options, [("FieldValueNotSupported", "dryRun", body)])
    return bool(values)


def check_list_options(query: Any, watch: bool) -> None:
    """``ValidateListOptions`` of the real server (WatchList enabled): 422 on ListOptions."""
    match = query.get("resourceVersionMatch", "")
    initial = query.get("sendInitialEvents")
    causes: list[tuple[str, str, str]] = []

    def forbidden(field: str, detail: str) -> None:
        causes.append(("FieldValueForbidden", field, f"Forbidden: {detail}"))

    def unsupported(supported: list[str]) -> None:
        listed = ", ".join(json.dumps(v) for v in supported)
        detail = f"Unsupported value: {json.dumps(match)}: supported values: {listed}"
        causes.append(("FieldValueNotSupported", "resourceVersionMatch", detail))

    if watch:
        if initial is not None and match != "NotOlderThan":
            forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )
        if match:
            if initial is None:
                forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is "
                    "provided",
                )
            if match != "NotOlderThan":
                unsupported(["NotOlderThan"])
            if query.get("continue"):
                forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                )
    else:
        if match:
            rv = query.get("resourceVersion", "")
            if not rv:
                forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                )
            if query.get("continue"):
                forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                )
            if match not in ("Exact", "NotOlderThan"):
                unsupported(["Exact", "NotOlderThan", ""])
            if match == "Exact" and rv == "0":
                forbidden(
                    "resourceVersionMatch",
                    'resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
                )
        if initial is not None:
            forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list")
    if causes:
        raise errors.invalid_options("ListOptions", causes)


def _count(query: Any, name: str) -> int:
    value = query.get(name) or "0"
    try:
        return max(int(value), 0)
    except ValueError as exc:
        raise errors.bad_request(f'strconv.ParseInt: parsing "{value}": invalid syntax') from exc


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


def _manager(request: web.Request) -> str:
    """The field manager of a write: ``fieldManager``, else the user agent's first word (the
    real server's default: ``kubectl``, ``OpenAPI-Generator``, ...)."""
    agent = request.headers.get("User-Agent", "")
    return request.query.get("fieldManager") or agent.split("/")[0].strip() or "unknown"


def body_kind(target: Target) -> tuple[str, str]:
    """(apiVersion, kind) of the object a write to ``target`` carries."""
    default = (target.kind.api_version, target.kind.kind)
    return SUBRESOURCE_BODIES.get(target.subresource, default)


def attributes(request: web.Request, target: Target) -> auth.Attributes:
    """What a resource request does, in RBAC's terms, as the real RequestInfo reads it: a
    list or watch selecting one name (``fieldSelector=metadata.name=x``) names it, so
    ``resourceNames`` rules apply; a namespace's own namespace is its name."""
    watch = _truthy(request.query.get("watch"))
    verb = auth.resource_verb(request.method, target.name, watch)
    name = target.name
    if verb in ("list", "watch"):
        match = re.fullmatch(r"metadata\.name==?([^,=!]+)", request.query.get("fieldSelector", ""))
        name = match.group(1) if match else ""
    namespace = target.namespace
    if target.kind.plural == "namespaces" and target.kind.group == "":
        namespace = name
    return auth.Attributes(
        verb=verb,
        group=target.kind.group,
        resource=target.kind.plural,
        subresource=target.subresource,
        namespace=namespace,
        name=name,
    )


def is_resource_path(path: str) -> bool:
    """``/api/v1/PLURAL...`` or ``/apis/GROUP/VERSION/PLURAL...``: authorized as a resource
    request once parsed; every other path is a non-resource URL."""
    parts = [p for p in path.split("/") if p]
    return (len(parts) >= 3 and parts[0] == "api") or (len(parts) >= 4 and parts[0] == "apis")


def _audit_record(request: web.Request, attrs: auth.Attributes, allowed: bool) -> dict[str, Any]:
    resource = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
    return {
        # The real audit's authorization.k8s.io/decision annotation.
        "decision": "allow" if allowed else "forbid",
        "verb": attrs.verb,
        "apiGroup": attrs.group,
        "resource": resource,
        "namespace": attrs.namespace,
        "name": attrs.name,
        "user": request["user"].name,
        "userAgent": request.headers.get("User-Agent", ""),
    }


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json"
    )


class ApiServer:
    def __init__(
        self,
        store: Store,
        logs: LogSource | None = None,
        authenticator: auth.Authenticator | None = None,
    ) -> None:
        self.store = store
        self.logs = logs
        self.authn = authenticator or auth.Authenticator(store)
        self.authz = auth.Authorizer(store)
        # False until the server has written its kubeconfig: a client that waited for
        # /readyz finds credentials that work.
        self.ready = False
        # Called with one record per resource request (verb, group, resource, namespace,
        # name, user agent), like the real server's audit log; None: no audit.
        self.audit: Callable[[dict[str, Any]], None] | None = None
        self.app = web.Application(
            client_max_size=64 * 1024 * 1024, middlewares=[self._errors, self._authenticate]
        )
        self.app.router.add_get("/version", self._version)
        self.app.router.add_get("/healthz", self._ok)
        self.app.router.add_get("/livez", self._ok)
        self.app.router.add_get("/readyz", self._ready)
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

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every request: who is asking (401 for a bad token); a non-resource URL is
        authorized here, a resource request once its path is parsed."""
        user = self.authn.authenticate(request.headers.get("Authorization"))
        request["user"] = user
        if not is_resource_path(request.path):
            self.authz.check(user, auth.Attributes(verb=request.method.lower(), path=request.path))
        response: web.StreamResponse = await handler(request)
        return response

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _ready(self, request: web.Request) -> web.Response:
        if not self.ready:
            return web.Response(status=500, text="readyz check failed: starting")
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
        """OpenAPI v3 discovery: one document per group-version, its URL carrying its hash."""
        paths = {}
        for group, version in openapi.group_versions():
            path = openapi.path_of(group, version)
            digest = openapi.digest(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
        return json_response({"paths": paths})

    async def _openapi_group_version(self, request: web.Request) -> web.Response:
        """A group-version's document (``localcluster/openapi.py``). Asked for by its current
        hash, it may be cached for good, as the real server allows; by another hash, the client
        is sent to the current one."""
        parts = request.match_info["gv"].split("/")
        gv: tuple[str, str] | None = None
        if parts[0] == "api" and len(parts) == 2:
            gv = ("", parts[1])
        elif parts[0] == "apis" and len(parts) == 3:
            gv = (parts[1], parts[2])
        if gv is None or gv not in openapi.group_versions():
            raise errors.ApiError(
                404, "NotFound", "the server could not find the requested resource"
            )
        group, version = gv
        asked, digest = request.query.get("hash"), openapi.digest(group, version)
        if asked and asked != digest:
            raise web.HTTPMovedPermanently(f"{request.path}?hash={digest}")
        cache_control = "public, immutable" if asked else "no-cache, private"
        return web.Response(
            body=openapi.document(group, version),
            content_type="application/json",
            headers={"Cache-Control": cache_control, "Etag": f'"{digest}"'},
        )

    def _validate_fields(self, request: web.Request, target: Target, body: Any) -> None:
        """Decoding errors (a value of the wrong JSON type: always 400), then unknown fields
        at any depth (400 under ``fieldValidation=Strict``)."""
        model = validation.model_for(target.kind)
        if model is None or not isinstance(body, dict) or target.subresource:
            return
        wrong = validation.type_errors(body, model)
        if wrong:
            raise errors.bad_request(
                f'{target.kind.kind} in version "{target.kind.version}" cannot be handled as a '
                f"{target.kind.kind}: {wrong[0]}"
            )
        mode = request.query.get("fieldValidation", "")
        if mode not in ("Strict", "Warn"):
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
        protobuf.check_accept(request.headers.get("Accept", ""))
        method = request.method
        attrs = attributes(request, target)
        allowed = self.authz.decide(request["user"], attrs).allowed
        if self.audit is not None:
            self.audit(_audit_record(request, attrs, allowed))
        if not allowed:
            self.authz.check(request["user"], attrs)  # raises the 403
        if target.kind.group == "metrics.k8s.io":
            return json_response(self._metrics(request, target))
        if target.name == "":
            if method == "GET":
                if _truthy(request.query.get("watch")):
                    return await self._watch(request, target)
                listing = self._list(request, target)
                if tables.wants_table(request.headers.get("Accept", "")):
                    table = tables.table(
                        target.kind.kind,
                        listing["items"],
                        listing["metadata"]["resourceVersion"],
                        request.query.get("includeObject", "Metadata"),
                    )
                    table["metadata"] = listing["metadata"]
                    return json_response(table)
                return json_response(listing)
            if method == "POST" and target.kind.kind in reviews.REVIEWS:
                body = await self._body(request, body_kind(target))
                answer = reviews.review(
                    target.kind.kind, target.kind.api_version, body, request["user"], self.authz
                )
                return json_response(answer, 201)
            if method == "POST":
                dry = dry_run(request.query.getall("dryRun", []), "CreateOptions")
                body = await self._body(request, body_kind(target))
                self._validate_fields(request, target, body)
                apply.record_update(None, body, _manager(request), now())
                return json_response(
                    self.store.create(target.kind, target.namespace, body, dry_run=dry), 201
                )
            if method == "DELETE":
                return json_response(await self._delete_collection(request, target))
        else:
            if target.subresource == "log" and method == "GET":
                return await self._log(request, target)
            if target.subresource == "exec" and method in ("GET", "POST"):
                return await self._exec(request, target)
            if target.subresource == "attach" and method in ("GET", "POST"):
                return await self._attach(request, target)
            if target.subresource == "portforward" and method in ("GET", "POST"):
                return await self._portforward(request, target)
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
                dry = dry_run(request.query.getall("dryRun", []), "UpdateOptions")
                body = await self._body(request, body_kind(target))
                self._validate_fields(request, target, body)
                if not target.subresource:
                    current = self.store.get(target.kind, target.namespace, target.name)
                    apply.record_update(current, body, _manager(request), now())
                return json_response(self._put(target, body, dry))
            if method == "PATCH":
                patched, code = await self._patch(request, target)
                return json_response(patched, code)
            if method == "DELETE":
                return json_response(await self._delete(request, target))
            if method == "POST" and target.subresource == "token":
                body = await self._body(request, ("authentication.k8s.io/v1", "TokenRequest"))
                answer = reviews.token(self.store, self.authn, target.namespace, target.name, body)
                return json_response(answer, 201)
            if method == "POST" and target.subresource == "eviction":
                dry = await self._eviction_dry_run(request)
                pod = self.store.get(target.kind, target.namespace, target.name)
                disruption.check_eviction(self.store, pod)
                self.store.delete(target.kind, target.namespace, target.name, dry_run=dry)
                return json_response(
                    {"kind": "Status", "apiVersion": "v1", "status": "Success"}, 201
                )
        raise errors.ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    async def _body(
        self, request: web.Request, kind: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """The request's object: JSON, or protobuf as client-go's typed clients send it when
        ``kind`` (apiVersion, kind) says what the endpoint takes; a PATCH passes none, and a
        patch is never protobuf (415, as the real server answers)."""
        if protobuf.is_protobuf(request.headers.get("Content-Type", "")):
            if kind is None:
                raise errors.ApiError(415, "UnsupportedMediaType", UNSUPPORTED_PATCH)
            raw = await request.read()
            if not raw:
                raise errors.bad_request("a request body is required")
            return protobuf.decode(raw, kind)
        text = await request.text()
        if not text:
            raise errors.bad_request("a request body is required")
        body = json.loads(text)
        if not isinstance(body, (dict, list)):
            raise errors.bad_request("the request body must be a JSON object")
        return body  # type: ignore[return-value]

    async def _optional_body(self, request: web.Request, kind: tuple[str, str]) -> Any:
        """A body that may be left out (DeleteOptions, an Eviction): None if there is none,
        else its object, JSON or protobuf."""
        if not request.can_read_body or not (await request.read()).strip():
            return None
        return await self._body(request, kind)

    async def _eviction_dry_run(self, request: web.Request) -> bool:
        """An Eviction's dry run: its CreateOptions' ``dryRun``, carried into its
        ``deleteOptions`` as the real eviction REST does (400 if the two disagree)."""
        query = request.query.getall("dryRun", [])
        dry_run(query, "CreateOptions")
        eviction = await self._optional_body(request, SUBRESOURCE_BODIES["eviction"])
        inner = ((eviction or {}).get("deleteOptions") or {}).get("dryRun") or []
        dry_run(inner, "DeleteOptions")
        if query and inner and query != inner:
            raise errors.bad_request(
                f"DryRun in DeleteOptions ({inner}) does not match DryRun in CreateOptions "
                f"({query})"
            )
        return bool(query or inner)

    # -- verbs -----------------------------------------------------------------------------
    def _list(self, request: web.Request, target: Target) -> dict[str, Any]:
        """A list, or one chunk of it with ``limit`` and ``continue`` (see ``Store.list_page``)."""
        query = request.query
        check_list_options(query, watch=False)
        token = query.get("continue", "")
        if token and query.get("resourceVersion", "") not in ("", "0"):
            raise errors.bad_request(
                "specifying resource version is not allowed when using continue"
            )
        where = None
        if query.get("labelSelector") or query.get("fieldSelector"):
            labels = selectors.parse_labels(query.get("labelSelector"))
            fields = selectors.parse_fields(query.get("fieldSelector"))

            def where(o: dict[str, Any]) -> bool:
                return labels(o["metadata"].get("labels") or {}) and fields(o)

        page = self.store.list_page(
            target.kind, target.namespace or None, where, _count(query, "limit"), token
        )
        metadata: dict[str, Any] = {"resourceVersion": page.resource_version}
        if page.continue_token:
            metadata["continue"] = page.continue_token
        if page.remaining is not None:
            metadata["remainingItemCount"] = page.remaining
        return {
            "kind": f"{target.kind.kind}List",
            "apiVersion": target.kind.api_version,
            "metadata": metadata,
            "items": page.items,
        }

    def _get(self, target: Target) -> dict[str, Any]:
        obj = self.store.get(target.kind, target.namespace, target.name)
        if target.subresource == "scale":
            return _scale_of(obj)
        return obj

    def _scale_to(self, target: Target, scale: dict[str, Any], dry: bool) -> dict[str, Any]:
        """The scale subresource: only spec.replicas of the parent object changes."""
        replicas = scale.get("spec", {}).get("replicas", 0)
        updated = self.store.update(
            target.kind,
            target.namespace,
            target.name,
            lambda o: o["spec"].__setitem__("replicas", replicas),
            dry_run=dry,
        )
        return _scale_of(updated)

    def _put(self, target: Target, body: dict[str, Any], dry: bool) -> dict[str, Any]:
        if target.subresource == "scale":
            return self._scale_to(target, body, dry)
        return self.store.replace(
            target.kind, target.namespace, target.name, body, target.subresource, dry
        )

    async def _patch(self, request: web.Request, target: Target) -> tuple[dict[str, Any], int]:
        """The patched object and the status: 200, or 201 for an apply that created it."""
        dry = dry_run(request.query.getall("dryRun", []), "PatchOptions")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        applying = content_type == "application/apply-patch+yaml"
        body: Any = await (self._applied(request) if applying else self._body(request))
        self._validate_fields(request, target, body)
        if applying and not target.subresource:
            manager = request.query.get("fieldManager", "")
            force = _truthy(request.query.get("force"))
            found = self.store.find(target.kind, target.namespace, target.name)
            applied = apply.server_side_apply(found, body, manager, force, now())
            if found is None:  # apply creates what does not exist yet
                applied.setdefault("metadata", {}).setdefault("name", target.name)
                made = self.store.create(target.kind, target.namespace, applied, dry_run=dry)
                return made, 201
            applied["metadata"].setdefault("resourceVersion", found["metadata"]["resourceVersion"])
            replaced = self.store.replace(
                target.kind, target.namespace, target.name, applied, "", dry
            )
            return replaced, 200
        current = self.store.get(target.kind, target.namespace, target.name)
        if target.subresource == "scale":
            current = _scale_of(current)
        if content_type == "application/json-patch+json":
            new = patch.json_patch(current, body)
        elif content_type == "application/merge-patch+json":
            new = patch.merge_patch(current, body)
        elif content_type == "application/strategic-merge-patch+json" or applying:
            # (an apply to a subresource, status or scale, merges without field tracking)
            new = patch.strategic_merge_patch(current, body)
        else:
            raise errors.ApiError(415, "UnsupportedMediaType", UNSUPPORTED_PATCH)
        if target.subresource == "scale":
            return self._scale_to(target, new, dry), 200
        # A resourceVersion the patch itself sets is a precondition (409 if stale).
        new.setdefault("metadata", {}).setdefault(
            "resourceVersion", current["metadata"]["resourceVersion"]
        )
        if not target.subresource:
            apply.record_update(current, new, _manager(request), now())
        replaced = self.store.replace(
            target.kind, target.namespace, target.name, new, target.subresource, dry
        )
        return replaced, 200

    async def _applied(self, request: web.Request) -> dict[str, Any]:
        """An apply configuration: YAML (JSON is YAML too), one object."""
        text = await request.text()
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise errors.bad_request(f"error decoding YAML: {exc}") from exc
        if not isinstance(config, dict):
            raise errors.bad_request("the apply configuration must be one object")
        return config

    async def _delete_options(self, request: web.Request) -> tuple[int | None, str, bool]:
        """Grace period, propagation policy and dry run of a DELETE.

        ``dryRun`` comes from the DeleteOptions body when there is one, else from the query,
        as the real handler decodes it.
        """
        options = await self._optional_body(request, DELETE_OPTIONS)
        has_body = options is not None
        options = options or {}
        grace = options.get("gracePeriodSeconds", request.query.get("gracePeriodSeconds"))
        propagation = (
            options.get("propagationPolicy")
            or request.query.get("propagationPolicy")
            or "Background"
        )
        dry_values = options.get("dryRun") if has_body else request.query.getall("dryRun", [])
        dry = dry_run(list(dry_values or []), "DeleteOptions")
        return (int(grace) if grace is not None else None), propagation, dry

    async def _delete(self, request: web.Request, target: Target) -> dict[str, Any]:
        grace, propagation, dry = await self._delete_options(request)
        if target.kind.kind == "Namespace" and not dry:
            for kind in KINDS:
                if kind.namespaced:
                    for obj in self.store.list(kind, target.name):
                        with contextlib.suppress(errors.ApiError):
                            self.store.delete(kind, target.name, obj["metadata"]["name"], 0)
        return self.store.delete(
            target.kind, target.namespace, target.name, grace, propagation, dry
        )

    async def _delete_collection(self, request: web.Request, target: Target) -> dict[str, Any]:
        grace, propagation, dry = await self._delete_options(request)
        listing = self._list(request, target)
        for obj in listing["items"]:
            with contextlib.suppress(errors.ApiError):
                self.store.delete(
                    target.kind,
                    obj["metadata"].get("namespace", ""),
                    obj["metadata"]["name"],
                    grace,
                    propagation,
                    dry,
                )
        return listing

    # -- streams ---------------------------------------------------------------------------
    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        """A watch; with ``sendInitialEvents`` the WatchList protocol of the real server.

        ``sendInitialEvents=true``: an ADDED event per current object, then (with
        ``allowWatchBookmarks``) a BOOKMARK annotated ``k8s.io/initial-events-end``, then the
        changes. ``sendInitialEvents=false``: the changes after ``resourceVersion``, or from now
        when it is unset or "0". Both need ``resourceVersionMatch=NotOlderThan`` (422 if not).
        """
        query = request.query
        check_list_options(query, watch=True)
        labels = selectors.parse_labels(query.get("labelSelector"))
        fields = selectors.parse_fields(query.get("fieldSelector"))
        timeout = float(query.get("timeoutSeconds") or 1800)
        since = query.get("resourceVersion")
        initial = query.get("sendInitialEvents")
        end_bookmark = False
        if initial is not None:
            if _truthy(initial):
                since = None  # the current state, which is never older than what was asked
                end_bookmark = _truthy(query.get("allowWatchBookmarks"))
            elif not since or since == "0":
                since = self.store.resource_version
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        )
        await response.prepare(request)
        try:
            watch, replay = self.store.watch(target.kind, target.namespace or None, since)
        except errors.ApiError as exc:
            await response.write(
                json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n"
            )
            return response
        listed_at = self.store.resource_version

        def visible(obj: dict[str, Any]) -> bool:
            return labels(obj["metadata"].get("labels") or {}) and fields(obj)

        # `kubectl get -w` asks for Tables: each event's object is a one-row Table, the
        # column definitions only in the first, as the real server sends them.
        as_table = tables.wants_table(request.headers.get("Accept", ""))
        include = query.get("includeObject", "Metadata")
        sent_columns = False

        def line(type_: str, obj: dict[str, Any]) -> bytes:
            nonlocal sent_columns
            if not as_table or type_ in ("BOOKMARK", "ERROR"):
                return _event_line(type_, obj)
            rv = obj["metadata"].get("resourceVersion", "")
            row = tables.table(target.kind.kind, [obj], rv, include)
            if sent_columns:
                row["columnDefinitions"] = []
            sent_columns = True
            return _event_line(type_, row)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            for event in replay:
                if visible(event.obj):
                    await response.write(line(event.type, event.obj))
            if end_bookmark:
                await response.write(_event_line("BOOKMARK", _bookmark(target.kind, listed_at)))
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watch.queue.get(), remaining)
                except TimeoutError:
                    break
                if visible(event.obj):
                    await response.write(line(event.type, event.obj))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unwatch(watch)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def _metrics(self, request: web.Request, target: Target) -> dict[str, Any]:
        """metrics.k8s.io: PodMetrics and NodeMetrics from the kubelet's samples."""
        if request.method != "GET":
            raise errors.ApiError(405, "MethodNotAllowed", f"{request.method} is not supported")
        if self.logs is None:
            raise errors.ApiError(503, "ServiceUnavailable", "no kubelet reports metrics")
        if target.kind.kind == "PodMetrics":
            items = self.logs.pod_metrics(target.namespace or None, target.name or None)
        else:
            items = [m for m in self.logs.node_metrics()
                     if not target.name or m["metadata"]["name"] == target.name]  # fmt: skip
        if target.name:
            if not items:
                raise errors.not_found(target.kind.plural, target.name, target.kind.group)
            return dict(items[0])
        labels = selectors.parse_labels(request.query.get("labelSelector"))
        return {
            "kind": f"{target.kind.kind}List",
            "apiVersion": target.kind.api_version,
            "metadata": {},
            "items": [m for m in items if labels(m["metadata"].get("labels") or {})],
        }

    def _container(
        self, request: web.Request, target: Target
    ) -> tuple[dict[str, Any], str, LogSource]:
        """The pod and the container a log or exec request names (or the only one)."""
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
            raise errors.bad_request("no kubelet serves this pod")
        return pod, container, self.logs

    async def _exec(self, request: web.Request, target: Target) -> web.StreamResponse:
        opts = streams.options(request.query)
        if not opts["command"]:
            raise errors.bad_request("you must specify at least 1 command")
        pod, container, kubelet = self._container(request, target)
        return await streams.run_exec(request, kubelet.exec_target(pod, container), opts)

    async def _attach(self, request: web.Request, target: Target) -> web.StreamResponse:
        opts = streams.options(request.query)
        pod, container, kubelet = self._container(request, target)
        return await streams.run_attach(request, kubelet.attach_target(pod, container), opts)

    async def _portforward(self, request: web.Request, target: Target) -> web.StreamResponse:
        pod = self.store.get(target.kind, target.namespace, target.name)
        portforward.require_channels(request)
        ip = pod.get("status", {}).get("podIP")
        if pod.get("status", {}).get("phase") != "Running" or not ip:
            raise errors.bad_request(
                f"unable to upgrade connection: pod {target.name} is not running"
            )
        if portforward.tunnels_spdy(request):  # the ports come with each stream
            return await portforward.run_spdy(request, ip, f"{target.namespace}/{target.name}")
        ports = [int(p) for v in request.query.getall("ports", []) for p in v.split(",") if p]
        if not ports:
            raise errors.bad_request("at least 1 port must be specified")
        return await portforward.run_channels(request, ip, ports)

    async def _log(self, request: web.Request, target: Target) -> web.StreamResponse:
        pod, container, kubelet = self._container(request, target)
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
        chunks = kubelet.stream_logs(pod, container, options)
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


def _bookmark(kind: Kind, resource_version: str) -> dict[str, Any]:
    """The empty object of a BOOKMARK event that ends the initial events."""
    return {
        "kind": kind.kind,
        "apiVersion": kind.api_version,
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {INITIAL_EVENTS_END: "true"},
        },
    }


def _event_line(type_: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": type_, "object": obj}).encode() + b"\n"


def _scale_of(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    selector = obj.get("spec", {}).get("selector") or {}
    if obj.get("kind") != "ReplicationController":  # whose selector is a plain map
        selector = selector.get("matchLabels") or {}
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
