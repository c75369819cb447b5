"""Two clusters on one machine never share pod or Service addresses (localcluster.addresses)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from localcluster.addresses import OCTETS, Reservation
from tests.cluster_fixtures import Cluster, pod_manifest, wait_for


def test_an_octet_held_by_one_reservation_is_not_given_to_another(tmp_path: Path) -> None:
    first, second = Reservation(tmp_path), Reservation(tmp_path)
    held = first.take(len(OCTETS) - 2)
    rest = second.take(2)
    assert sorted(held + rest) == list(OCTETS)

    with pytest.raises(RuntimeError, match="held by another running localcluster"):
        Reservation(tmp_path).take(1)

    first.release()
    assert len(Reservation(tmp_path).take(len(OCTETS) - 2)) == len(OCTETS) - 2


def test_a_reservation_ends_with_its_process_however_it_ends(tmp_path: Path) -> None:
    script = (
        "import pathlib, time\n"
        "from localcluster.addresses import Reservation\n"
        f"held = Reservation(pathlib.Path({str(tmp_path)!r}))\n"
        f"print(*held.take({len(OCTETS)}), flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert len(holder.stdout.readline().split()) == len(OCTETS)
        with pytest.raises(RuntimeError):
            Reservation(tmp_path).take(1)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    assert len(Reservation(tmp_path).take(len(OCTETS))) == len(OCTETS)


def test_a_running_cluster_keeps_its_octets_from_every_other(cluster: Cluster) -> None:
    from kubernetes.utils import create_from_dict

    create_from_dict(
        cluster.api,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "addresses"},
            "spec": {"selector": {"test": "addresses"}, "ports": [{"port": 80}]},
        },
    )
    create_from_dict(cluster.api, pod_manifest("addresses", "import time; time.sleep(60)"))
    service_ip = cluster.core.read_namespaced_service("addresses", "default").spec.cluster_ip
    pod_ip = wait_for(
        "the pod's address",
        lambda: cluster.core.read_namespaced_pod("addresses", "default").status.pod_ip,
    )
    cluster_octets = {int(service_ip.split(".")[1]), int(pod_ip.split(".")[1])}
    assert len(cluster_octets) == 2

    # Everything this process can take (other clusters on the machine may hold a few more).
    mine, free = Reservation(), set()
    try:
        with contextlib.suppress(RuntimeError):
            while True:
                free.update(mine.take(1))
    finally:
        mine.release()
    assert len(free) >= len(OCTETS) // 2
    assert not free & cluster_octets
    cluster.core.delete_namespaced_pod("addresses", "default", grace_period_seconds=0)
