"""A pod's volumes on this machine: emptyDir, configMap, secret and persistentVolumeClaim
folders, where each container mounts them, and what a mount must not hide (the folders the
container runs from, which a real container has in its own root filesystem)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from localcluster import environment, errors
from localcluster.config import Runtime
from localcluster.resources import CONFIGMAPS, PVCS, SECRETS
from localcluster.store import Obj, Store


def mounts(
    store: Store, pod: Obj, spec: dict[str, Any], pod_dir: Path, state_dir: Path
) -> list[tuple[str, str, bool]]:
    """(host folder or file, mountPath, read-only) for each of the container's mounts."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    result = []
    for mount in spec.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise errors.bad_request(f'volume "{mount["name"]}" is not declared in the pod')
        source = volume_dir(store, pod, volume, pod_dir, state_dir)
        if mount.get("subPath"):
            source = source / mount["subPath"]
            if not source.exists():
                source.mkdir(parents=True)
        read_only = bool(mount.get("readOnly")) or "secret" in volume or "configMap" in volume
        result.append((str(source), mount["mountPath"], read_only))
    return result


def volume_dir(
    store: Store, pod: Obj, volume: dict[str, Any], pod_dir: Path, state_dir: Path
) -> Path:
    """Materialize a volume: emptyDir, configMap, secret or persistentVolumeClaim."""
    ns = pod["metadata"]["namespace"]
    folder: Path = pod_dir / "volumes" / volume["name"]
    if "emptyDir" in volume:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    for key, source_kind, decode in (
        ("configMap", CONFIGMAPS, False),
        ("secret", SECRETS, True),
    ):
        if key in volume:
            ref = volume[key]
            name = ref.get("name") or ref.get("secretName", "")
            data = environment.data_of(
                store, ns, source_kind, {"name": name, "optional": ref.get("optional")}, decode
            )
            items = ref.get("items") or [{"key": k, "path": k} for k in data]
            folder.mkdir(parents=True, exist_ok=True)
            for item in items:
                if item["key"] not in data:
                    raise errors.bad_request(f"{key} {name} has no key {item['key']}")
                target = folder / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[item["key"]])
                target.chmod(item.get("mode", ref.get("defaultMode", 0o644)))
            return folder
    if "persistentVolumeClaim" in volume:
        claim = volume["persistentVolumeClaim"]["claimName"]
        if store.find(PVCS, ns, claim) is None:
            raise errors.bad_request(f'persistentvolumeclaim "{claim}" not found')
        folder = Path(state_dir, "volumes", ns, claim)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    raise errors.bad_request(
        f'volume "{volume["name"]}": only emptyDir, configMap, secret and '
        "persistentVolumeClaim volumes are supported by localcluster"
    )


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
