"""How a weight reaches users: the Gateway API, or the replica ratio where there is none.

Both routers share one contract: ``prepare`` before the new pods start (the new version gets
no user traffic), ``shift(weight, mirror)`` per step, ``promote`` to make the new version the
stable one, and ``restore`` to send every request back to the stable version. Each is a
desired state, so repeating one (a resumed session) is harmless, and none ever routes to a
Service that does not exist: both Services exist before the route names them.

- :class:`GatewayRouter`: the instance's ``HTTPRoute`` weighs the stable and the preview
  Service per request; the shadow step mirrors every request to the preview
  (``RequestMirror``). The preview runs at full size from the start.
- :class:`ReplicaRouter`: no Gateway; the stable Service selects both slots while a rollout
  runs, and a weight becomes a share of the pods. No mirror.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from helmsman.serving import objects
from helmsman.serving.kube import Kube
from helmsman.serving.objects import GatewayRef, Target
from helmsman.serving.verify import Rejected


class Router(Protocol):
    kind: str
    can_mirror: bool

    def new_replicas(self) -> int: ...

    def prepare(self) -> None: ...

    def shift(self, weight: int, mirror: bool) -> int: ...

    def ready(self) -> None:
        """What the promotion needs, in place and checked (raises Rejected): done before the
        registry names the version, so a promotion that cannot happen moves nothing there."""

    def promote(self) -> None: ...

    def restore(self) -> None: ...


Waiter = Callable[[str], list[str]]  # deployment name -> why it is not available (empty: it is)


class GatewayRouter:
    kind = "gateway"
    can_mirror = True

    def __init__(
        self, kube: Kube, target: Target, gateway: GatewayRef, stable: str | None, new: str
    ) -> None:
        self.kube, self.target, self.gateway = kube, target, gateway
        self.stable, self.new = stable, new

    def new_replicas(self) -> int:
        return self.target.replicas

    def _route(self, weight: int, mirror: bool = False) -> None:
        self.kube.apply(objects.route(self.target, self.gateway, weight, mirror), self.target.name)

    def prepare(self) -> None:
        t = self.target
        self.kube.apply(objects.service(t, objects.preview_name(t.name), self.new), t.name)
        if self.stable is not None:  # the first version has no route until it is promoted
            self.kube.apply(objects.service(t, t.name, self.stable), t.name)
            self._route(0)

    def shift(self, weight: int, mirror: bool) -> int:
        self._route(weight, mirror)
        return weight

    def ready(self) -> None:
        """Nothing to add: the new slot runs at full size from its preview on."""

    def promote(self) -> None:
        t = self.target
        if self.stable is not None:
            self._route(100)
        self.kube.apply(objects.service(t, t.name, self.new), t.name)
        self._route(0)

    def restore(self) -> None:
        t = self.target
        if self.stable is not None:
            self._route(0)
            self.kube.apply(objects.service(t, t.name, self.stable), t.name)
            # A stable slot scaled down by hand or by a half-done promotion serves again.
            stable = self.kube.read("Deployment", objects.deployment_name(t.name, self.stable))
            if stable is not None and not stable["spec"].get("replicas"):
                self.kube.scale(objects.deployment_name(t.name, self.stable), t.replicas)


class ReplicaRouter:
    kind = "replicas"
    can_mirror = False

    def __init__(
        self, kube: Kube, target: Target, stable: str | None, new: str, wait: Waiter
    ) -> None:
        self.kube, self.target, self.stable, self.new, self.wait = kube, target, stable, new, wait

    def new_replicas(self) -> int:
        return 1  # the preview: one pod, behind the preview Service only

    def split(self, weight: int) -> tuple[int, int]:
        """(new, stable) pod counts for ``weight`` percent of ``replicas`` pods."""
        total = self.target.replicas
        new = min(total, max(1, math.ceil(weight * total / 100)))
        return new, max(total - new, 1)

    def prepare(self) -> None:
        t = self.target
        self.kube.apply(objects.service(t, objects.preview_name(t.name), self.new), t.name)
        if self.stable is not None:
            self.kube.apply(objects.service(t, t.name, self.stable), t.name)

    def shift(self, weight: int, mirror: bool) -> int:
        t = self.target
        if self.stable is None:
            raise ValueError("nothing serves yet: the first version has no traffic to split")
        new, stable = self.split(weight)
        self.kube.scale(objects.deployment_name(t.name, self.new), new)
        problems = self.wait(objects.deployment_name(t.name, self.new))
        if problems:
            raise Rejected(problems)
        self.kube.apply(
            objects.service(t, t.name, None),
            t.name,
            remove=(("spec", "selector", objects.SLOT_LABEL),),
        )
        self.kube.scale(objects.deployment_name(t.name, self.stable), stable)
        return round(100 * new / (new + stable))

    def ready(self) -> None:
        """The new slot at full size and available, before the Service selects it alone."""
        t = self.target
        self.kube.scale(objects.deployment_name(t.name, self.new), t.replicas)
        problems = self.wait(objects.deployment_name(t.name, self.new))
        if problems:
            raise Rejected(problems)

    def promote(self) -> None:
        self.ready()  # already, unless a pod went since: then no user is sent to the slot
        t = self.target
        self.kube.apply(objects.service(t, t.name, self.new), t.name)

    def restore(self) -> None:
        t = self.target
        if self.stable is None:
            return
        self.kube.scale(objects.deployment_name(t.name, self.stable), t.replicas)
        self.wait(objects.deployment_name(t.name, self.stable))
        self.kube.apply(objects.service(t, t.name, self.stable), t.name)
