"""The object store: what etcd plus the API server's registry do in Kubernetes.

Objects are plain dicts keyed by (kind, namespace, name). Every write takes the next
resourceVersion from one counter, is appended to a bounded event history and fanned out to
watchers. Optimistic concurrency, generation, finalizers, graceful pod deletion and garbage
collection through ownerReferences live here, because in Kubernetes they hold for every
client and every controller alike.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import contextlib
import copy
import datetime as dt
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from localcluster import defaults, errors, paging
from localcluster.resources import BY_KIND, NAMESPACES, PRIORITY_CLASSES, Kind

FOREGROUND = "foregroundDeletion"

Obj = dict[str, Any]
HISTORY = 10_000
# How long a paged list's first revision stays readable for its continue tokens: a real
# cluster's etcd is compacted every 5 minutes, after which such a token gets 410 Expired.
SNAPSHOT_SECONDS = 300.0
SNAPSHOTS = 32
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Event:
    type: str  # ADDED, MODIFIED, DELETED
    kind: Kind
    obj: Obj
    rv: int


@dataclass
class Page:
    """One chunk of a list: the items, the revision they were read at, what follows."""

    items: builtins.list[Obj]
    resource_version: str
    continue_token: str = ""
    remaining: int | None = None


@dataclass
class _Snapshot:
    """Every object of one kind at one revision, by key (``NAMESPACE/NAME`` or ``NAME``)."""

    taken: float
    keys: builtins.list[str]
    objects: builtins.list[Obj]


@dataclass
class Watch:
    kind: Kind
    namespace: str | None
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)

    def wants(self, event: Event) -> bool:
        if event.kind != self.kind:
            return False
        return self.namespace is None or event.obj["metadata"].get("namespace") == self.namespace


class Store:
    def __init__(self, octets: tuple[int, int] | None = None) -> None:
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._rv = 0
        self._history: deque[Event] = deque(maxlen=HISTORY)
        self._watches: list[Watch] = []
        self._waiters: builtins.list[asyncio.Future[None]] = []
        self._services = 0
        self._snapshots: dict[tuple[str, int], _Snapshot] = {}
        # Pod and Service addresses come from two /16s of 127.0.0.0/8: the server reserves them
        # machine-wide (localcluster.addresses); a store made without a server draws at random.
        pod, service = octets or random.sample(range(16, 250), 2)
        self.pod_octet, self.service_octet = pod, service

    # -- reads -----------------------------------------------------------------------------
    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def get(self, kind: Kind, namespace: str, name: str) -> Obj:
        obj = self._objects.get((kind.key, namespace if kind.namespaced else "", name))
        if obj is None:
            raise errors.not_found(kind.plural, name, kind.group)
        return copy.deepcopy(obj)

    def find(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        try:
            return self.get(kind, namespace, name)
        except errors.ApiError:
            return None

    def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        where: Callable[[Obj], bool] | None = None,
    ) -> builtins.list[Obj]:
        """Copies of the matching objects, in key order (``where`` sees the stored objects
        and must not change them: filtering before copying keeps large lists cheap)."""
        return [
            copy.deepcopy(obj)
            for (key, ns, _), obj in sorted(self._objects.items())
            if key == kind.key
            and (namespace is None or not kind.namespaced or ns == namespace)
            and (where is None or where(obj))
        ]

    def list_page(
        self,
        kind: Kind,
        namespace: str | None,
        where: Callable[[Obj], bool] | None,
        limit: int,
        token: str,
    ) -> Page:
        """A list chunk of at most ``limit`` items (0: all) from where ``token`` left off.

        Like etcd under the real server, every chunk of one list is read at the revision of its
        first: the objects of the kind at that revision are kept (references: a stored object
        is replaced on write, never changed in place) for ``SNAPSHOT_SECONDS``. A token that
        outlives its revision gets 410 Expired carrying a token that goes on at the latest
        revision. ``remaining`` counts what follows, and only without ``where``: with a
        selector the real server cannot count cheaply and leaves it out.
        """
        prefix = f"{namespace}/" if namespace and kind.namespaced else ""
        if token:
            start, revision = paging.decode(token)
            start = prefix + start
            if revision == paging.LATEST:
                revision = self._rv
                snapshot = self._snapshot(kind)
            else:
                kept = self._snapshots.get((kind.key, revision))
                if kept is None or time.monotonic() - kept.taken > SNAPSHOT_SECONDS:
                    retry = paging.encode(start[len(prefix) :], paging.LATEST)
                    raise errors.expired(paging.TOO_OLD, retry)
                snapshot = kept
        else:
            start, revision = prefix, self._rv
            snapshot = self._snapshot(kind)
        keys = snapshot.keys
        first = bisect.bisect_left(keys, start)
        last = first
        while last < len(keys) and keys[last].startswith(prefix):
            last += 1
        picked: builtins.list[int] = []
        more = False
        for i in range(first, last):
            if where is None or where(snapshot.objects[i]):
                if limit and len(picked) == limit:
                    more = True
                    break
                picked.append(i)
        page = Page([copy.deepcopy(snapshot.objects[i]) for i in picked], str(revision), "", None)
        if more:
            page.continue_token = paging.encode(keys[picked[-1]][len(prefix) :] + "\x00", revision)
            if where is None:
                page.remaining = last - first - limit
            self._keep(kind, revision, snapshot)
        return page

    def _snapshot(self, kind: Kind) -> _Snapshot:
        kept = self._snapshots.get((kind.key, self._rv))
        if kept is not None:
            return kept
        pairs = sorted(
            (f"{ns}/{name}" if kind.namespaced else name, obj)
            for (key, ns, name), obj in self._objects.items()
            if key == kind.key
        )
        return _Snapshot(time.monotonic(), [k for k, _ in pairs], [o for _, o in pairs])

    def _keep(self, kind: Kind, revision: int, snapshot: _Snapshot) -> None:
        """Keep a revision readable for continue tokens (for ``SNAPSHOT_SECONDS`` from its last
        page); forget the expired and, past ``SNAPSHOTS``, the least recently paged."""
        snapshot.taken = time.monotonic()
        horizon = snapshot.taken - SNAPSHOT_SECONDS
        for key in [k for k, s in self._snapshots.items() if s.taken < horizon]:
            del self._snapshots[key]
        self._snapshots[(kind.key, revision)] = snapshot
        while len(self._snapshots) > SNAPSHOTS:
            oldest = min(self._snapshots, key=lambda k: self._snapshots[k].taken)
            del self._snapshots[oldest]

    # -- writes ----------------------------------------------------------------------------
    def allocate_address(self) -> str:
        """A loopback address of its own, from the Service range (ClusterIPs, gateways)."""
        address = self._next_address()
        self._services += 1
        return address

    def _next_address(self) -> str:
        """The address ``allocate_address`` would hand out next (a dry run shows it, keeps it)."""
        n = self._services + 1
        return f"127.{self.service_octet}.{(n // 250) % 250}.{n % 250 + 2}"

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, type_: str, kind: Kind, obj: Obj) -> None:
        event = Event(type_, kind, copy.deepcopy(obj), self._rv)
        self._history.append(event)
        for watch in self._watches:
            if watch.wants(event):
                watch.queue.put_nowait(event)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def create(self, kind: Kind, namespace: str, obj: Obj, dry_run: bool = False) -> Obj:
        """Store a new object. ``dry_run``: every check and default, a generated name, uid and
        creationTimestamp, but nothing stored and no resourceVersion (the real server's dry-run
        storage answers with the object as it would have been written, before etcd versions it).
        """
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        if not name:
            raise errors.invalid(
                kind.kind, "", "metadata.name: Required value: name or generateName is required"
            )
        if kind.group == "rbac.authorization.k8s.io":
            # RBAC names are path segments (system:discovery), not DNS names.
            if name in (".", "..") or "/" in name or "%" in name:
                raise errors.invalid(
                    kind.kind, name, f'metadata.name: Invalid value: "{name}": may not contain '
                    "'/' or '%' or be '.' or '..'"
                )  # fmt: skip
        elif not _DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
            raise errors.invalid(
                kind.kind,
                name,
                f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must '
                "consist of lower case alphanumeric characters, '-' or '.', and must start and "
                "end with an alphanumeric character",
            )
        ns = ""
        if kind.namespaced:
            ns = namespace or meta.get("namespace") or "default"
            if meta.get("namespace") not in (None, ns):
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            if self.find(NAMESPACES, "", ns) is None:
                raise errors.not_found("namespaces", ns)
            meta["namespace"] = ns
        key = (kind.key, ns, name)
        if key in self._objects:
            raise errors.already_exists(kind.plural, name, kind.group)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        defaults.apply(kind.kind, obj)
        problems = [f"{path}: {what}" for path, what in defaults.validate(kind.kind, obj)]
        if problems:
            qualified = f"{kind.kind}.{kind.group}" if kind.group else kind.kind
            detail = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
            raise errors.invalid(qualified, name, detail)
        if kind.kind == "Service" and obj["spec"].get("clusterIP") in (None, ""):
            ip = self._next_address() if dry_run else self.allocate_address()
            obj["spec"]["clusterIP"], obj["spec"]["clusterIPs"] = ip, [ip]
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
        meta.pop("deletionTimestamp", None)
        if kind.kind == "Job":
            defaults.job_identity(obj)
        if kind.kind == "Pod":
            self._admit_priority(obj)
        if "spec" in obj or kind.kind in ("Deployment", "ReplicaSet", "Pod", "Service"):
            meta["generation"] = 1
        if dry_run:
            meta.pop("resourceVersion", None)
            return obj
        meta["resourceVersion"] = self._bump()
        self._objects[key] = obj
        self._emit("ADDED", kind, obj)
        return copy.deepcopy(obj)

    def _admit_priority(self, pod: Obj) -> None:
        """The Priority admission plugin: the class must exist; its value becomes the pod's."""
        spec = pod["spec"]
        wanted = spec.get("priorityClassName")
        classes = self.list(PRIORITY_CLASSES)
        if wanted:
            found = next((c for c in classes if c["metadata"]["name"] == wanted), None)
            if found is None:
                raise errors.ApiError(
                    403,
                    "Forbidden",
                    f'pods "{pod["metadata"]["name"]}" is forbidden: no PriorityClass with name '
                    f"{wanted} was found",
                    {"name": pod["metadata"]["name"], "kind": "pods"},
                )
        else:
            found = next((c for c in classes if c.get("globalDefault")), None)
            if found is not None:
                spec["priorityClassName"] = found["metadata"]["name"]
        spec["priority"] = found.get("value", 0) if found else 0
        spec.setdefault(
            "preemptionPolicy",
            (found or {}).get("preemptionPolicy", "PreemptLowerPriority"),
        )

    def replace(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        obj: Obj,
        subresource: str = "",
        dry_run: bool = False,
    ) -> Obj:
        """PUT semantics: whole object (or its status), with optimistic concurrency.

        ``dry_run``: the object as the write would leave it, at its current resourceVersion;
        nothing stored, no event, no deletion even when the last finalizer goes.
        """
        current = self.get(kind, namespace, name)
        new = copy.deepcopy(obj)
        meta = new.setdefault("metadata", {})
        sent_rv = meta.get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            raise errors.conflict(kind.plural, name, kind.group)
        if meta.get("name", name) != name:
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the "
                f"URL ({name})"
            )
        if subresource == "status":
            merged = {**current, "status": new.get("status", {})}
            new = merged
        elif subresource == "binding":
            # The binding subresource: node name and PodScheduled condition in one write.
            new = {**current, "status": new.get("status", {})}
            new["spec"] = {**current["spec"], "nodeName": obj["spec"]["nodeName"]}
        else:
            if "status" in current and kind.kind != "Namespace":
                new["status"] = current["status"]  # status changes only through /status
            for immutable in (
                "uid",
                "creationTimestamp",
                "namespace",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ):
                if immutable in current["metadata"]:
                    meta[immutable] = current["metadata"][immutable]
                else:
                    meta.pop(immutable, None)
            meta["name"] = name
            # Defaulting runs on every write, as the real server decodes every body with it: a
            # replaced list (a merge patch's containers) gets its defaults back, so a no-op
            # apply leaves a Deployment's template -- and its ReplicaSet -- as they were.
            defaults.apply(kind.kind, new)
            if "generation" in current["metadata"]:
                changed = new.get("spec") != current.get("spec")
                meta["generation"] = current["metadata"]["generation"] + (1 if changed else 0)
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if dry_run:
            return new
        if new == current:
            return copy.deepcopy(current)  # a no-op write: no new resourceVersion, no event
        new["metadata"]["resourceVersion"] = self._bump()
        ns = current["metadata"].get("namespace", "")
        released = new["metadata"].get("deletionTimestamp") and not new["metadata"].get(
            "finalizers"
        )
        if released and (kind.kind != "Pod" or not self._pod_needs_kubelet(new)):
            return self._remove(kind, ns, name, new)
        self._objects[(kind.key, ns, name)] = new
        self._emit("MODIFIED", kind, new)
        return copy.deepcopy(new)

    def update(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        mutate: Callable[[Obj], None],
        subresource: str = "",
        dry_run: bool = False,
    ) -> Obj:
        """Read-modify-write for components: apply ``mutate`` to the current object."""
        obj = self.get(kind, namespace, name)
        before = copy.deepcopy(obj)
        mutate(obj)
        if obj == before:
            return obj
        return self.replace(kind, namespace, name, obj, subresource, dry_run)

    @staticmethod
    def _pod_needs_kubelet(pod: Obj) -> bool:
        phase = pod.get("status", {}).get("phase")
        return bool(pod.get("spec", {}).get("nodeName")) and phase not in ("Succeeded", "Failed")

    def delete(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        grace_seconds: int | None = None,
        propagation: str = "Background",
        dry_run: bool = False,
    ) -> Obj:
        """Delete, gracefully for running pods and objects with finalizers.

        ``dry_run``: the answer the deletion would give (the object, with a deletionTimestamp
        where the deletion would be graceful) at its current resourceVersion; nothing stored,
        no event, no garbage collection.
        """
        obj = self.get(kind, namespace, name)
        meta = obj["metadata"]
        ns = meta.get("namespace", "")
        foreground = propagation == "Foreground" and not meta.get("deletionTimestamp")
        if foreground and self._dependents(meta["uid"]):
            # The owner stays (deletionTimestamp, foregroundDeletion finalizer) until the
            # garbage collector has deleted what it owns; see finish_foreground().
            meta["deletionTimestamp"] = now()
            meta["deletionGracePeriodSeconds"] = 0
            meta["finalizers"] = [*(meta.get("finalizers") or []), FOREGROUND]
            if dry_run:
                return obj
            meta["resourceVersion"] = self._bump()
            self._objects[(kind.key, ns, name)] = obj
            self._emit("MODIFIED", kind, obj)
            for dependent_kind, dependent in self._dependents(meta["uid"]):
                with contextlib.suppress(errors.ApiError):
                    self.delete(
                        dependent_kind,
                        dependent["metadata"].get("namespace", ""),
                        dependent["metadata"]["name"],
                        propagation="Foreground",
                    )
            return copy.deepcopy(obj)
        if kind.kind == "Pod" and self._pod_needs_kubelet(obj):
            grace = grace_seconds
            if grace is None:
                grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
            if grace > 0 or meta.get("finalizers"):
                # Graceful: the kubelet stops the containers, then deletes with grace 0.
                if not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = now()
                    meta["deletionGracePeriodSeconds"] = grace
                    if dry_run:
                        return obj
                    meta["resourceVersion"] = self._bump()
                    self._objects[(kind.key, ns, name)] = obj
                    self._emit("MODIFIED", kind, obj)
                return copy.deepcopy(obj)
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = now()
                meta["deletionGracePeriodSeconds"] = 0
                if dry_run:
                    return obj
                meta["resourceVersion"] = self._bump()
                self._objects[(kind.key, ns, name)] = obj
                self._emit("MODIFIED", kind, obj)
            return copy.deepcopy(obj)
        if dry_run:
            return obj
        removed = self._remove(kind, ns, name, obj)
        if propagation != "Orphan":
            self._collect_dependents(meta["uid"])
        return removed

    def _remove(self, kind: Kind, ns: str, name: str, obj: Obj) -> Obj:
        self._objects.pop((kind.key, ns, name), None)
        obj["metadata"]["resourceVersion"] = self._bump()
        self._emit("DELETED", kind, obj)
        return copy.deepcopy(obj)

    def _collect_dependents(self, owner_uid: str) -> None:
        """Garbage collection: delete what ``owner_uid`` owned (background propagation)."""
        for owned, obj in self._dependents(owner_uid):
            ns, name = obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
            if self.find(owned, ns, name) is not None:
                self.delete(owned, ns, name)

    def _dependents(self, owner_uid: str) -> builtins.list[tuple[Kind, Obj]]:
        found = []
        for obj in list(self._objects.values()):
            refs = obj["metadata"].get("ownerReferences") or []
            owned = kind_of(obj)
            if owned is not None and any(r.get("uid") == owner_uid for r in refs):
                found.append((owned, obj))
        return found

    def finish_foreground(self) -> None:
        """The garbage collector's second half: an owner in foreground deletion goes once
        nothing it owns is left."""
        for obj in list(self._objects.values()):
            meta = obj["metadata"]
            if FOREGROUND not in (meta.get("finalizers") or []):
                continue
            if self._dependents(meta["uid"]):
                continue
            owner_kind = kind_of(obj)
            if owner_kind is None:
                continue

            def release(o: Obj) -> None:
                o["metadata"]["finalizers"] = [
                    f for f in o["metadata"].get("finalizers") or [] if f != FOREGROUND
                ]

            with contextlib.suppress(errors.ApiError):
                self.update(owner_kind, meta.get("namespace", ""), meta["name"], release)

    # -- watch -----------------------------------------------------------------------------
    def watch(
        self, kind: Kind, namespace: str | None, since: str | None
    ) -> tuple[Watch, builtins.list[Event]]:
        """Register a watch and return it with the events to replay first.

        ``since`` unset or "0": synthetic ADDED events for every current object. Otherwise the
        recorded events after that resourceVersion; 410 Gone if the history no longer reaches.
        """
        watch = Watch(kind, namespace)
        if not since or since == "0":
            replay = [Event("ADDED", kind, o, self._rv) for o in self.list(kind, namespace)]
        else:
            start = int(since)
            if self._history and self._history[0].rv > start + 1 and start < self._rv:
                raise errors.ApiError(
                    410, "Expired", f"too old resource version: {since} ({self._history[0].rv})"
                )
            replay = [e for e in self._history if e.rv > start and watch.wants(e)]
        self._watches.append(watch)
        return watch, replay

    def unwatch(self, watch: Watch) -> None:
        if watch in self._watches:
            self._watches.remove(watch)

    @property
    def revision(self) -> int:
        return self._rv

    async def changed_since(self, seen: int, timeout: float) -> None:
        """Wait until some object is written after revision ``seen``, or ``timeout`` passes.

        Reconcile loops note ``revision`` before they read, then wait here: a write made
        while they were busy is never missed (an Event cleared by one loop would be).
        """
        if self._rv != seen:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, timeout)


def kind_of(obj: Obj) -> Kind | None:
    return BY_KIND.get((obj.get("apiVersion", ""), obj.get("kind", "")))


def ensure(store: Store, kinds: Iterable[tuple[Kind, Obj]]) -> None:
    """Create objects that do not exist yet (bootstrap: namespaces, nodes)."""
    for obj_kind, obj in kinds:
        ns = obj["metadata"].get("namespace", "")
        if store.find(obj_kind, ns, obj["metadata"]["name"]) is None:
            store.create(obj_kind, ns, obj)
