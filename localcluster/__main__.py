"""``python -m localcluster serve``: run the cluster in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from localcluster import certs
from localcluster import config as config_module
from localcluster.addresses import Reservation
from localcluster.apiserver import ApiServer
from localcluster.auth import Authenticator, bootstrap_policy
from localcluster.autoscaler import Autoscaler
from localcluster.controllers import Controllers
from localcluster.faults import FaultInjector
from localcluster.gateway import GatewayProxy
from localcluster.kubelet import Kubelet
from localcluster.promsd import install as install_prometheus_sd
from localcluster.proxy import ServiceProxy
from localcluster.resources import NAMESPACES, PRIORITY_CLASSES
from localcluster.scheduler import Scheduler
from localcluster.store import Store, ensure
from localcluster.volumes import Credentials

log = logging.getLogger("localcluster")
BUILT_IN_PRIORITIES = (
    ("system-cluster-critical", 2000000000),
    ("system-node-critical", 2000001000),
)
BUILT_IN_CLASS = {
    "preemptionPolicy": "PreemptLowerPriority",
    "description": "Used for system critical pods that must not be moved from their current node.",
}
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def kubeconfig(server: str, ca_pem: bytes, token: str) -> dict[str, object]:
    """The cluster admin's kubeconfig: the server, the CA to trust it by, the admin token."""
    ca_data = base64.b64encode(ca_pem).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "localcluster",
                "cluster": {"server": server, "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": "localcluster", "user": {"token": token}}],
        "contexts": [
            {
                "name": "localcluster",
                "context": {
                    "cluster": "localcluster",
                    "user": "localcluster",
                    "namespace": "default",
                },
            }
        ],
        "current-context": "localcluster",
    }


async def serve(args: argparse.Namespace) -> int:
    cfg = config_module.load(args.config)
    state = Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    addresses = Reservation()
    pod_octet, service_octet = addresses.take(2)
    store = Store((pod_octet, service_octet))
    ensure(
        store,
        [
            (
                NAMESPACES,
                {
                    "metadata": {"name": n},
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                },
            )
            for n in SYSTEM_NAMESPACES
        ]
        + [
            (PRIORITY_CLASSES, {"metadata": {"name": name}, "value": value, **BUILT_IN_CLASS})
            for name, value in BUILT_IN_PRIORITIES
        ]
        + bootstrap_policy(),
    )

    # TLS and a bearer token for every client, as a real cluster: kubectl and client-go send
    # credentials over TLS only. The CA's key lives in this process's memory alone.
    serving = certs.make(state / "pki", args.host)
    api = ApiServer(store, authenticator=Authenticator(store))
    if args.audit_log:
        api.audit = _audit_writer(Path(args.audit_log))
    # Breaking things on purpose is for reliability tests: without --faults the endpoint
    # does not exist, so no local process can drive it.
    faults = FaultInjector(store) if args.faults else None
    if faults is not None:
        faults.install(api.app)
    install_prometheus_sd(api.app, store)
    runner = web.AppRunner(api.app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner, args.host, args.port, shutdown_timeout=1, ssl_context=serving.server_context()
    )
    await site.start()
    port = runner.addresses[0][1]
    server = f"https://{args.host}:{port}"

    kubelet = Kubelet(store, cfg, state, (args.host, port))
    kubelet.credentials = Credentials(api.authn, serving.ca_pem)
    api.logs = kubelet
    if faults is not None:
        faults.kubelet, kubelet.faults = kubelet, faults
    kubelet.register_nodes()
    scheduler = Scheduler(store)
    controllers = Controllers(store, cfg.restart_backoff_seconds)
    proxy = ServiceProxy(store)
    gateways = GatewayProxy(store)
    autoscaler = Autoscaler(store, kubelet.pod_metrics, cfg.autoscaler_sync_seconds)
    tasks = [
        asyncio.ensure_future(c.run())
        for c in (kubelet, scheduler, controllers, proxy, gateways, autoscaler)
    ]

    path = Path(args.kubeconfig)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    os.chmod(path, 0o600)  # it holds the admin token
    path.write_text(
        yaml.safe_dump(kubeconfig(server, serving.ca_pem, api.authn.admin_token), sort_keys=False)
    )
    api.ready = True
    print(f"localcluster: serving {server}; kubeconfig {path}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("localcluster: stopping pods", flush=True)
    await gateways.close()
    await proxy.close()
    # SIGTERM always ends the server: the pods get their grace period, then it stops anyway.
    try:
        await asyncio.wait_for(kubelet.shutdown(grace=args.grace_seconds), args.grace_seconds + 15)
    except TimeoutError:
        log.warning("pods still stopping after %.0f s; exiting anyway", args.grace_seconds + 15)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await runner.cleanup()
    addresses.release()
    print("localcluster: stopped", flush=True)
    return 0


def _audit_writer(path: Path) -> Callable[[dict[str, Any]], None]:
    """Append each record as a JSON line (the real server's --audit-log-path, in brief)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a", buffering=1)

    def write(record: dict[str, Any]) -> None:
        handle.write(json.dumps(record) + "\n")

    return write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster", description="A local Kubernetes that runs pods as processes."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the API server, scheduler and kubelet until SIGTERM")
    run.add_argument("--state-dir", required=True, help="folder for pod logs and volumes")
    run.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig")
    run.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    run.add_argument("--host", default="127.0.0.1", help="API address")
    run.add_argument("--config", help="YAML file with nodes and the image map")
    run.add_argument(
        "--grace-seconds",
        type=float,
        default=10,
        help="on shutdown, how long pods get between SIGTERM and SIGKILL",
    )
    run.add_argument(
        "--faults",
        action="store_true",
        help="serve the fault-injection endpoint (/localcluster/faults), for reliability tests",
    )
    run.add_argument(
        "--audit-log",
        help="append one JSON line per API request (verb, resource, namespace, user agent)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
