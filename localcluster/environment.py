"""A container's environment and command line, as the kubelet builds them: the image's
variables, Service variables, ``envFrom``, ``env`` with ``valueFrom`` (fieldRef,
resourceFieldRef, secretKeyRef, configMapKeyRef) and ``$(VAR)`` expansion, and the command
resolved through the image map."""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
from typing import Any

from localcluster import errors, quantity
from localcluster.config import Runtime
from localcluster.resources import CONFIGMAPS, NODES, SECRETS, Kind
from localcluster.store import Obj, Store


def environment(
    store: Store,
    pod: Obj,
    spec: dict[str, Any],
    runtime: Runtime,
    *,
    ip: str,
    home: str,
    api: tuple[str, int],
    services: dict[str, str],
) -> dict[str, str]:
    """The container's variables: the image's, the Services', ``envFrom``, then ``env``."""
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    env: dict[str, str] = {
        "PATH": os.pathsep.join([*runtime.path, os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": home,
        "HOSTNAME": pod["spec"].get("hostname") or name,
        "LANG": "C.UTF-8",
        "KUBERNETES_SERVICE_HOST": api[0],
        "KUBERNETES_SERVICE_PORT": str(api[1]),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(runtime.env)
    env.update(services)
    for source in spec.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = data_of(store, ns, CONFIGMAPS, source["configMapRef"], decode=False)
        else:
            data = data_of(store, ns, SECRETS, source["secretRef"], decode=True)
        env.update({prefix + k: v for k, v in data.items()})
    for var in spec.get("env") or []:
        if "valueFrom" in var:
            value = value_from(store, ns, pod, ip, var["valueFrom"], spec["name"])
            if value is None:
                continue
            env[var["name"]] = value
        else:
            env[var["name"]] = expand(var.get("value", ""), env)
    return env


def data_of(store: Store, ns: str, kind: Kind, ref: dict[str, Any], decode: bool) -> dict[str, str]:
    """A ConfigMap's or Secret's data (decoded), or {} for a missing optional one."""
    obj = store.find(kind, ns, ref["name"])
    if obj is None:
        if ref.get("optional"):
            return {}
        raise errors.not_found(kind.plural, ref["name"])
    data = dict(obj.get("data") or {})
    if decode:
        data = {k: base64.b64decode(v).decode() for k, v in data.items()}
    return data


def value_from(
    store: Store, ns: str, pod: Obj, ip: str, source: dict[str, Any], container: str = ""
) -> str | None:
    """An ``env[].valueFrom`` (of ``container``'s env) or a downward API volume's item: a field
    of the pod, a container's resource, a Secret's or ConfigMap's key."""
    if "fieldRef" in source:
        path = source["fieldRef"]["fieldPath"]
        live = {
            **pod,
            "status": {**pod.get("status", {}), "podIP": ip, "hostIP": "127.0.0.1"},
        }
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((live["metadata"].get(match.group(1)) or {}).get(match.group(2), ""))
        value: Any = live
        for part in path.split("."):
            value = value.get(part, "") if isinstance(value, dict) else ""
        return str(value)
    if "resourceFieldRef" in source:
        return resource_field(store, pod, source["resourceFieldRef"], container)
    for key, source_kind, decode in (
        ("secretKeyRef", SECRETS, True),
        ("configMapKeyRef", CONFIGMAPS, False),
    ):
        if key in source:
            ref = source[key]
            data = data_of(store, ns, source_kind, ref, decode)
            if ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise errors.bad_request(
                    f"couldn't find key {ref['key']} in {source_kind.kind} {ns}/{ref['name']}"
                )
            return data[ref["key"]]
    return None


def resource_field(store: Store, pod: Obj, ref: dict[str, Any], container: str) -> str:
    """A container's request or limit as the kubelet gives it: rounded up to a whole number of
    ``divisor`` (1 by default: 250m of CPU is "1"); a request not set is the limit, a limit not
    set is the node's allocatable."""
    name = ref.get("containerName") or container
    spec = pod["spec"]
    found = [c for c in [*spec.get("initContainers", []), *spec.get("containers", [])]
             if c.get("name") == name]  # fmt: skip
    if not found:
        raise errors.bad_request(f"resourceFieldRef: no container {name!r} in the pod")
    kind, _, resource = ref["resource"].partition(".")
    resources = found[0].get("resources") or {}
    value = (resources.get(kind) or {}).get(resource)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(resource)
    if value is None and kind == "limits":
        node = store.find(NODES, "", spec.get("nodeName") or "")
        value = ((node or {}).get("status", {}).get("allocatable") or {}).get(resource)
    divisor = quantity.parse(str(ref.get("divisor") or "1"))
    return str(math.ceil(quantity.parse(str(value or "0")) / divisor))


def resolve(argv: list[str], env: dict[str, str], runtime: Runtime) -> list[str]:
    """A command as the image runs it: its entrypoint rewrites, its interpreter, its PATH."""
    head = runtime.entrypoints.get(argv[0])
    argv = head + argv[1:] if head is not None else list(argv)
    if argv[0] == "python" or re.fullmatch(r"python3(\.\d+)?", argv[0]):
        argv[0] = runtime.python
    elif "/" not in argv[0]:
        argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
    return argv


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion; ``$$(VAR)`` escapes; unknown references stay."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        value,
    )
