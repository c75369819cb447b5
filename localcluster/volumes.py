"""A pod's volumes on this machine: emptyDir, configMap, secret, projected and
persistentVolumeClaim folders, where each container mounts them, and what a mount must not hide
(the folders the container runs from, which a real container has in its own root filesystem).

A projected volume's ``serviceAccountToken`` is a token for the pod's service account that the
API server honours, issued when the container starts (the kubelet does not rotate it: a pod
that outlives ``expirationSeconds`` must ask again). The root CA publisher is not modelled as
objects; its ``kube-root-ca.crt`` ConfigMap, when a pod projects it and none was made, is the
cluster's CA, as on a real cluster.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from localcluster import environment, errors
from localcluster.auth import API_AUDIENCE, Authenticator
from localcluster.config import Runtime
from localcluster.resources import CONFIGMAPS, PVCS, SECRETS, SERVICE_ACCOUNTS
from localcluster.store import Obj, Store

ROOT_CA = "kube-root-ca.crt"
# A volume's files: {path in the volume: (content, mode, or None for the volume's default)}.
Files = dict[str, tuple[str, int | None]]


@dataclass(frozen=True)
class Credentials:
    """What projected volumes need from the API server: its token issuer and its CA."""

    issuer: Authenticator
    ca_pem: bytes


def mounts(
    store: Store,
    pod: Obj,
    spec: dict[str, Any],
    pod_dir: Path,
    state_dir: Path,
    credentials: Credentials | None = None,
) -> list[tuple[str, str, bool]]:
    """(host folder or file, mountPath, read-only) for each of the container's mounts."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    result = []
    for mount in spec.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise errors.bad_request(f'volume "{mount["name"]}" is not declared in the pod')
        source = volume_dir(store, pod, volume, pod_dir, state_dir, credentials)
        if mount.get("subPath"):
            source = inside(source, mount["subPath"])
            if not source.exists():
                source.mkdir(parents=True)
        read_only = bool(mount.get("readOnly")) or any(
            k in volume for k in ("secret", "configMap", "projected")
        )
        result.append((str(source), mount["mountPath"], read_only))
    return result


def inside(folder: Path, path: str) -> Path:
    """``folder / path`` for a relative path that stays inside the folder, as the real API
    server's validation insists (no absolute path, no ``..``)."""
    parts = Path(path).parts
    if not path or Path(path).is_absolute() or ".." in parts:
        raise errors.bad_request(f'path "{path}": must be relative and may not contain ".."')
    return folder / path


def volume_dir(
    store: Store,
    pod: Obj,
    volume: dict[str, Any],
    pod_dir: Path,
    state_dir: Path,
    credentials: Credentials | None = None,
) -> Path:
    """Materialize a volume: emptyDir, configMap, secret, projected or persistentVolumeClaim."""
    ns = pod["metadata"]["namespace"]
    folder: Path = pod_dir / "volumes" / volume["name"]
    if "emptyDir" in volume:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    if "projected" in volume:
        projected = volume["projected"]
        folder.mkdir(parents=True, exist_ok=True)
        for source in projected.get("sources") or []:
            files = _projected(store, pod, source, credentials)
            _write(folder, files, projected.get("defaultMode", 0o644))
        return folder
    for key in ("configMap", "secret"):
        if key in volume:
            folder.mkdir(parents=True, exist_ok=True)
            ref = volume[key]
            _write(folder, _keyed(store, ns, key, ref), ref.get("defaultMode", 0o644))
            return folder
    if "persistentVolumeClaim" in volume:
        claim = volume["persistentVolumeClaim"]["claimName"]
        if store.find(PVCS, ns, claim) is None:
            raise errors.bad_request(f'persistentvolumeclaim "{claim}" not found')
        folder = Path(state_dir, "volumes", ns, claim)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    raise errors.bad_request(
        f'volume "{volume["name"]}": only emptyDir, configMap, secret, projected and '
        "persistentVolumeClaim volumes are supported by localcluster"
    )


def _projected(
    store: Store, pod: Obj, source: dict[str, Any], credentials: Credentials | None
) -> Files:
    """One source of a projected volume: {path in the volume: (content, mode or None)}."""
    ns = pod["metadata"]["namespace"]
    if "serviceAccountToken" in source:
        wanted = source["serviceAccountToken"]
        if credentials is None:
            raise errors.bad_request("this kubelet cannot issue service account tokens")
        name = pod["spec"].get("serviceAccountName") or "default"
        account = store.find(SERVICE_ACCOUNTS, ns, name)
        if account is None:
            raise errors.bad_request(f'serviceaccount "{name}" not found')
        seconds = max(int(wanted.get("expirationSeconds") or 3600), 600)
        issued = dt.datetime.now(dt.UTC).replace(microsecond=0)
        expires = issued + dt.timedelta(seconds=seconds)
        audiences = [wanted["audience"]] if wanted.get("audience") else [API_AUDIENCE]
        token = credentials.issuer.issue(ns, account, audiences, issued, expires)
        return {wanted["path"]: (token, None)}
    if "downwardAPI" in source:
        ip = (pod.get("status") or {}).get("podIP", "")
        return {
            item["path"]: (environment.value_from(store, ns, pod, ip, item) or "", item.get("mode"))
            for item in source["downwardAPI"].get("items") or []
        }
    for key in ("configMap", "secret"):
        if key not in source:
            continue
        ref = source[key]
        if (
            key == "configMap"
            and ref.get("name") == ROOT_CA
            and credentials is not None
            and store.find(CONFIGMAPS, ns, ROOT_CA) is None
        ):
            published = {"ca.crt": credentials.ca_pem.decode()}
            wanted = ref.get("items") or [{"key": "ca.crt", "path": "ca.crt"}]
            return {i["path"]: (published[i["key"]], i.get("mode")) for i in wanted}
        return _keyed(store, ns, key, ref)
    raise errors.bad_request(f"unsupported projected volume source: {sorted(source)}")


def _keyed(store: Store, ns: str, key: str, ref: dict[str, Any]) -> Files:
    """The files of a configMap or secret (a volume, or a source of a projected one): each
    item's key's value at the item's path, or every key at its own name. A missing key is an
    error unless the reference is optional, as the kubelet has it."""
    name = ref.get("name") or ref.get("secretName", "")
    kind, decode = (CONFIGMAPS, False) if key == "configMap" else (SECRETS, True)
    data = environment.data_of(
        store, ns, kind, {"name": name, "optional": ref.get("optional")}, decode
    )
    items = ref.get("items") or [{"key": k, "path": k} for k in data]
    missing = [i["key"] for i in items if i["key"] not in data]
    if missing and not ref.get("optional"):
        raise errors.bad_request(f"{key} {name} has no key {missing[0]}")
    return {i["path"]: (data[i["key"]], i.get("mode")) for i in items if i["key"] in data}


def _write(folder: Path, files: Files, default_mode: int) -> None:
    """Write ``files`` into ``folder``, each with its own mode or ``default_mode``."""
    for path, (text, mode) in files.items():
        target = inside(folder, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(default_mode if mode is None else mode)


def runtime_paths(runtime: Runtime, env: dict[str, str], cwd: str, pod_dir: Path) -> list[str]:
    """What the container runs from on this machine: a volume must not hide these."""
    python = Path(runtime.python)
    paths = {
        str(python.parent.parent),  # the virtualenv
        sys.base_prefix,  # the interpreter it was made from (stdlib)
        *runtime.path,
        *filter(None, env.get("PYTHONPATH", "").split(os.pathsep)),
        str(pod_dir),  # the pod's folder: HOME, default working directory
        cwd,
        # Folders the container's environment names (a dataset store given as a local
        # path or a file:// URI): on a real cluster a volume or an object store; here,
        # the machine's.
        *(p for p in map(_local_folder, env.values()) if p and os.path.isdir(p)),
    }
    return sorted(p for p in paths if p and os.path.isabs(p))


def _local_folder(value: str) -> str | None:
    """The machine path an environment value names: an absolute path, or a ``file://`` URI."""
    if value.startswith("file://"):
        return unquote(urlsplit(value).path) or None
    return value if os.path.isabs(value) else None
