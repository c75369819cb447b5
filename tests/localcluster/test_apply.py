"""Server-side apply with kubectl, as two teams (two field managers) share one object."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.cluster_fixtures import Cluster

KUBECTL = shutil.which("kubectl")


def config(replicas: int | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "shared"}},
        "template": {
            "metadata": {"labels": {"app": "shared"}},
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "image": "python:3.11-slim",
                        "command": ["python", "-c", "import time; time.sleep(600)"],
                    }
                ]
            },
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shared", **({"labels": labels} if labels else {})},
        "spec": spec,
    }


def apply(cluster: Cluster, tmp_path: Path, manifest: dict[str, Any], *flags: str) -> Any:
    assert KUBECTL, "kubectl is not on PATH"
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return subprocess.run(
        [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), "apply", "--server-side",
         "-f", str(path), *flags],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def owners(cluster: Cluster) -> dict[str, dict[str, Any]]:
    deployment = cluster.apps.read_namespaced_deployment("shared", "default")
    return {m.manager: m.fields_v1 for m in deployment.metadata.managed_fields}


def test_two_managers_conflict_force_and_drop_fields(cluster: Cluster, tmp_path: Path) -> None:
    first = apply(
        cluster, tmp_path, config(2, {"team": "a", "tier": "web"}), "--field-manager=team-a"
    )
    assert first.returncode == 0, first.stderr
    assert "f:replicas" in owners(cluster)["team-a"]["f:spec"]

    # Another manager setting a field team-a owns to another value: refused, nothing changes.
    clash = apply(cluster, tmp_path, config(3), "--field-manager=team-b")
    assert clash.returncode != 0
    assert 'conflict with "team-a" using apps/v1: .spec.replicas' in clash.stderr
    assert cluster.apps.read_namespaced_deployment("shared", "default").spec.replicas == 2

    # The same value is no conflict: both own it.
    same = apply(cluster, tmp_path, config(2), "--field-manager=team-b")
    assert same.returncode == 0, same.stderr

    # --force-conflicts takes the field over.
    forced = apply(cluster, tmp_path, config(4), "--field-manager=team-b", "--force-conflicts")
    assert forced.returncode == 0, forced.stderr
    assert cluster.apps.read_namespaced_deployment("shared", "default").spec.replicas == 4
    managed = owners(cluster)
    assert "f:replicas" in managed["team-b"]["f:spec"]
    assert "f:replicas" not in managed["team-a"].get("f:spec", {})

    # team-a applies again without the tier label and without replicas: its label goes; the
    # replicas, owned by team-b now, stay.
    again = apply(cluster, tmp_path, config(None, {"team": "a"}), "--field-manager=team-a")
    assert again.returncode == 0, again.stderr
    deployment = cluster.apps.read_namespaced_deployment("shared", "default")
    assert deployment.metadata.labels == {"team": "a"}
    assert deployment.spec.replicas == 4
    cluster.apps.delete_namespaced_deployment("shared", "default")
