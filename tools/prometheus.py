"""The local stack's Prometheus: Debian's ``prometheus`` server, discovering the serving pods
of localcluster and scraping them, as a cluster's Prometheus does.

On a cluster the job discovers pods with ``kubernetes_sd_configs`` (role ``pod``). Debian's
build leaves Kubernetes discovery out, so here the same job reads localcluster's HTTP SD
endpoint, which gives the same targets with the same meta labels (localcluster/promsd.py):
the relabel rules below are the ones a cluster uses, unchanged.

The scrape job is the one a platform team adds to its own Prometheus (the README shows it, and
the equivalent ``PodMonitor`` for the Prometheus Operator): keep the pods labelled
``app.kubernetes.io/name=helmsman-serving``, scrape their ``http`` port's ``/metrics``, and
label every series with the model version (the pod's ``helmsman.io/model-version``
annotation), the serving instance and the slot, which is what the rollout's analysis queries.

The monitor's pods are batch jobs, gone before a scrape could find them: they push their
gauges to a Pushgateway (Debian's ``prometheus-pushgateway`` here), and a second job scrapes
it (``monitor_scrape_job``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tools.kubeaccess import Access
from tools.procs import Server

BINARY = "prometheus"
PUSHGATEWAY_BINARY = "prometheus-pushgateway"  # Debian's name for it
SD_PATH = "/localcluster/v1/prometheus/pods"  # localcluster/promsd.py
CREDENTIALS = "localcluster"  # the folder (under Prometheus' root) of its CA and token files
# Short, so a rollout step of ten seconds has several samples to judge; a cluster's
# Prometheus typically scrapes every 15-30 s and the rollout's interval grows with it.
SCRAPE_INTERVAL = "1s"
# The monitor pushes once an hour; a cluster would scrape its Pushgateway every 30-60 s.
MONITOR_SCRAPE_INTERVAL = "5s"


@dataclass(frozen=True)
class Discovery:
    """localcluster's HTTP SD: its URL, and the CA and token files Prometheus reaches it by."""

    server: str
    ca_file: Path
    token_file: Path


def serving_scrape_job(namespace: str, localcluster: Discovery | None = None) -> dict[str, Any]:
    """The scrape job for Helmsman's serving pods: Kubernetes discovery on a cluster, or
    localcluster's HTTP SD (same targets, same meta labels) when it is given."""
    discovery: dict[str, Any] = (
        {"http_sd_configs": [{"url": f"{localcluster.server}{SD_PATH}?namespace={namespace}",
                              "refresh_interval": SCRAPE_INTERVAL,
                              "tls_config": {"ca_file": str(localcluster.ca_file)},
                              # The type explicitly: Debian's 2.42 sends the bare token without it.
                              "authorization": {"type": "Bearer",
                                                "credentials_file": str(localcluster.token_file)}}]}
        if localcluster
        else {"kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [namespace]}}]}
    )  # fmt: skip
    meta = "__meta_kubernetes_pod_"
    return {
        "job_name": "helmsman-serving",
        "scrape_interval": SCRAPE_INTERVAL,
        "scrape_timeout": SCRAPE_INTERVAL,
        "metrics_path": "/metrics",
        **discovery,
        "relabel_configs": [
            {"source_labels": [f"{meta}label_app_kubernetes_io_name"],
             "regex": "helmsman-serving", "action": "keep"},
            {"source_labels": [f"{meta}container_port_name"], "regex": "http", "action": "keep"},
            {"source_labels": [f"{meta}phase"], "regex": "Running", "action": "keep"},
            {"source_labels": [f"{meta}annotation_helmsman_io_model_version"],
             "target_label": "version"},
            {"source_labels": [f"{meta}label_app_kubernetes_io_instance"],
             "target_label": "service"},
            {"source_labels": [f"{meta}label_helmsman_io_slot"], "target_label": "slot"},
            {"source_labels": [f"{meta}name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        ],
    }  # fmt: skip


def monitor_scrape_job(pushgateway: str) -> dict[str, Any]:
    """The scrape job for the monitor's gauges: the Pushgateway (``host:port``) its batch pods
    push to. ``honor_labels`` keeps the pushed ``job`` and ``model`` labels, as the
    Pushgateway's documentation asks; without it they would become ``exported_*``."""
    return {
        "job_name": "helmsman-monitor",
        "honor_labels": True,
        "scrape_interval": MONITOR_SCRAPE_INTERVAL,
        "static_configs": [{"targets": [pushgateway]}],
    }


def config(namespace: str, localcluster: Discovery, pushgateway: str = "") -> dict[str, Any]:
    jobs = [serving_scrape_job(namespace, localcluster)]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": jobs + ([monitor_scrape_job(pushgateway)] if pushgateway else []),
    }


def available() -> bool:
    return shutil.which(BINARY) is not None


def pushgateway_server(root: Path, port: int) -> Server:
    """Debian's Pushgateway, where the monitor's pods push their gauges (a batch pod is gone
    before Prometheus could scrape it); its state survives a restart in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    binary = shutil.which(PUSHGATEWAY_BINARY)
    if binary is None:
        raise RuntimeError(
            "The Prometheus Pushgateway is not installed: `make setup` installs Debian's "
            "prometheus-pushgateway package (as root), or put `prometheus-pushgateway` on PATH"
        )
    cmd = [
        binary,
        f"--web.listen-address=127.0.0.1:{port}",
        f"--persistence.file={root / 'pushgateway.data'}",
        "--persistence.interval=1m",
        "--log.level=warn",
    ]
    return Server("pushgateway", cmd, f"http://127.0.0.1:{port}/-/ready", root / "pushgateway.log")


def server(
    root: Path, port: int, namespace: str, kubeconfig: Path, pushgateway: str = ""
) -> Server:
    """A Prometheus process with its config, data and log under ``root``, discovering the
    serving pods of the localcluster that ``kubeconfig`` reaches, with its credentials, and
    scraping the monitor's ``pushgateway`` (``host:port``) when one is given."""
    root.mkdir(parents=True, exist_ok=True)
    access = Access.from_kubeconfig(kubeconfig)
    ca_file, token_file = access.write_credentials(root / CREDENTIALS)
    sd = Discovery(access.server, ca_file, token_file)
    config_file = root / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config(namespace, sd, pushgateway), sort_keys=False))
    binary = shutil.which(BINARY)
    if binary is None:
        raise RuntimeError(
            "Prometheus is not installed: `make setup` installs Debian's prometheus package "
            "(as root), or install it yourself and put `prometheus` on PATH"
        )
    cmd = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={root / 'data'}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]
    return Server("prometheus", cmd, f"http://127.0.0.1:{port}/-/ready", root / "prometheus.log")
