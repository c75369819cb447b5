"""Checks of Kubernetes objects as values: the official schema and Pod Security "restricted".

The restricted profile's rules, as the Pod Security Standards define them (baseline
included): no host namespaces, ports or paths; no privileged containers; only the allowed
volume types; allowPrivilegeEscalation false; runAsNonRoot with a non-zero user; a
RuntimeDefault or Localhost seccomp profile; capabilities dropping ALL and adding nothing but
NET_BIND_SERVICE. Used for the pods the factory builds and for every manifest in the repo.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kv
import yaml

KUBERNETES_VERSION = "1.32"
ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


GATEWAY_SCHEMAS = Path(__file__).parent / "schemas" / "gateway-api"


def _strict(schema: Any) -> Any:
    """A CRD schema that, like strict field validation, refuses fields it does not declare."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _gateway_validator(kind: str) -> Any:
    import jsonschema

    schema = json.loads((GATEWAY_SCHEMAS / f"{kind.lower()}-v1.json").read_text())
    schema.pop("$comment", None)
    return jsonschema.Draft7Validator(_strict(schema))


def schema_errors(obj: dict[str, Any]) -> str | None:
    """None if ``obj`` is valid for the Kubernetes version we target, else the error.

    Gateway API objects (CRDs on a real cluster) are checked against the v1 schemas of the
    Gateway API's standard CRDs, kept in tests/schemas/gateway-api/.
    """
    if obj.get("apiVersion") == "gateway.networking.k8s.io/v1":
        if not (GATEWAY_SCHEMAS / f"{obj.get('kind', '').lower()}-v1.json").exists():
            return f"no Gateway API schema for kind {obj.get('kind')!r}"
        error = next(iter(_gateway_validator(obj["kind"]).iter_errors(obj)), None)
        return None if error is None else f"{'.'.join(map(str, error.path))}: {error.message}"
    try:
        kv.validate(obj, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as exc:
        return str(exc).splitlines()[0]
    return None


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *spec.get("initContainers", []),
        *spec.get("containers", []),
        *spec.get("ephemeralContainers", []),
    ]


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """Every way a pod spec breaks Pod Security "restricted" (empty when it complies)."""
    problems: list[str] = []
    pod_sc = pod_spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            problems.append(f"{field} must not be true")
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']} uses {sorted(kinds - ALLOWED_VOLUMES)}")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser must not be 0")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    for c in _containers(pod_spec):
        name = c.get("name", "?")
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"container {name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {name}: allowPrivilegeEscalation must be false")
        if not (
            sc.get("runAsNonRoot") is True
            or (pod_sc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is not False)
        ):
            problems.append(f"container {name}: runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            problems.append(f"container {name}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"container {name}: seccompProfile must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"container {name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"container {name}: may add only NET_BIND_SERVICE")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"container {name}: hostPort")
    return problems


@dataclass(frozen=True)
class RoleCheck:
    """What clients did, read off an audit log, against a Role."""

    made: set[tuple[str, str, str, str]]  # (group, resource, verb, namespace)
    outside: list[tuple[str, ...]]  # calls outside the Role's namespace
    denied: list[tuple[str, ...]]  # (group, resource, verb) the Role does not allow
    unused: list[tuple[str, ...]]  # what the Role allows and nobody did


def role_check(role_file: Path, audit_log: Path, ignore_agents: tuple[str, ...]) -> RoleCheck:
    """The calls of every client but ``ignore_agents`` in ``audit_log``, against the Role in
    ``role_file``."""
    role = next(d for d in yaml.safe_load_all(role_file.read_text()) if d["kind"] == "Role")
    allowed = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    calls = [json.loads(line) for line in audit_log.read_text().splitlines()]
    # Calls the server refused (an anonymous probe) did nothing; "decision" is the real
    # audit's authorization.k8s.io/decision.
    made = {
        (c["apiGroup"], c["resource"], c["verb"], c["namespace"])
        for c in calls
        if not c["userAgent"].startswith(ignore_agents) and c.get("decision") == "allow"
    }
    return RoleCheck(
        made,
        outside=sorted(c for c in made if c[3] != role["metadata"]["namespace"]),
        denied=sorted(c[:3] for c in made if c[:3] not in allowed),
        unused=sorted(allowed - {c[:3] for c in made}),
    )
