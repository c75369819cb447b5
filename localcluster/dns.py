"""Cluster DNS, as the hosts file every container of a namespace reads at ``/etc/hosts``.

A real cluster answers pods' lookups with CoreDNS; here each container runs in a mount
namespace of its own (see kubelet.UNSHARE), so the kubelet binds a file it keeps current over
the container's ``/etc/hosts``: the names CoreDNS would answer for that namespace, and the
machine's own lines (so the machine's hostname still resolves). The file is rewritten in place
(never replaced: the bind mount holds its inode), and the C library reads ``/etc/hosts`` on
every lookup, so a name that appears later resolves without a restart.

Records, as Kubernetes' DNS specification names them (``<zone>`` is ``svc.cluster.local``):

- a Service with a cluster IP: ``<svc>.<ns>.<zone>`` (and ``<svc>.<ns>.svc``, ``<svc>.<ns>``;
  ``<svc>`` alone in its own namespace's file, which the search path would give);
- a headless Service (``clusterIP: None``): the same names, for each of its endpoints' pods;
- a pod with ``hostname`` and ``subdomain`` that a headless Service of that name selects:
  ``<hostname>.<subdomain>.<ns>.<zone>`` (an Indexed Job's pods: ``<job>-<index>``, so a
  rendezvous finds rank 0 by a stable name);
- every pod of the namespace by its hostname (the pod's own ``/etc/hosts`` line).

Not emulated: search-path expansion of other namespaces' short names, SRV records, PTR records.
"""

from __future__ import annotations

import os
from pathlib import Path

from localcluster.resources import ENDPOINTS, PODS, SERVICES
from localcluster.store import Obj, Store

ZONE = "svc.cluster.local"
HEADER = "# Kubernetes-managed hosts file (localcluster's cluster DNS for namespace {ns}).\n"


def _machine_hosts() -> str:
    try:
        return Path("/etc/hosts").read_text()
    except OSError:
        return "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


class ClusterDns:
    def __init__(self, store: Store, folder: Path) -> None:
        self.store, self.folder = store, folder
        self.machine = _machine_hosts()
        self._written: dict[str, str] = {}

    def hosts_file(self, namespace: str) -> Path:
        """The namespace's file, current as of now (a container binds it at start)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write(namespace)
        return self.folder / f"{namespace}.hosts"

    async def run(self) -> None:
        while True:
            seen = self.store.revision
            for namespace in list(self._written):
                self._write(namespace)
            await self.store.changed_since(seen, 1.0)

    def _write(self, namespace: str) -> None:
        text = self.render(namespace)
        if self._written.get(namespace) == text:
            return
        path = self.folder / f"{namespace}.hosts"
        # In place: the containers' bind mounts hold this inode. The new text goes over the
        # old before the file is cut to its length, so no lookup sees an empty file.
        body = text.encode()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not O_APPEND: writes from offset 0
        try:
            os.pwrite(fd, body, 0)
            os.ftruncate(fd, len(body))
        finally:
            os.close(fd)
        self._written[namespace] = text

    def render(self, namespace: str) -> str:
        lines = [HEADER.format(ns=namespace), self.machine.rstrip("\n"), ""]
        for svc in self.store.list(SERVICES):
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            names = [f"{name}.{ns}.{ZONE}", f"{name}.{ns}.svc", f"{name}.{ns}"]
            if ns == namespace:
                names.append(name)
            ip = svc["spec"].get("clusterIP")
            if ip and ip != "None":
                lines.append(f"{ip}\t{' '.join(names)}")
                continue
            for address in _addresses(self.store.find(ENDPOINTS, ns, name)):
                lines.append(f"{address['ip']}\t{' '.join(names)}")
                if address.get("hostname"):
                    host = f"{address['hostname']}.{name}"
                    lines.append(
                        f"{address['ip']}\t{host}.{ns}.{ZONE} {host}.{ns}.svc {host}.{ns}"
                        + (f" {host}" if ns == namespace else "")
                    )
        for pod in self.store.list(PODS, namespace):
            ip = (pod.get("status") or {}).get("podIP")
            if ip and not pod["metadata"].get("deletionTimestamp"):
                lines.append(f"{ip}\t{pod['spec'].get('hostname') or pod['metadata']['name']}")
        return "\n".join(lines) + "\n"


def _addresses(endpoints: Obj | None) -> list[Obj]:
    """The ready endpoints a headless Service's name answers with (with
    ``publishNotReadyAddresses`` the endpoints controller counts every running pod as ready)."""
    found: list[Obj] = []
    for subset in (endpoints or {}).get("subsets") or []:
        found += subset.get("addresses") or []
    return found
