"""A real localcluster process per test module, and real clients pointed at it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tools.kubeaccess import Access
from tools.procs import Server, free_port, localcluster

FAST = {"restartBackoffSeconds": 0.5}


@dataclass
class Cluster:
    server: Server
    kubeconfig: Path
    state_dir: Path
    api: client.ApiClient

    @property
    def access(self) -> Access:
        """The admin's credentials, for raw HTTPS clients."""
        return Access.from_kubeconfig(self.kubeconfig)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)


def start_cluster(root: Path, settings: dict[str, Any], audit_log: Path | None = None) -> Cluster:
    root.mkdir(parents=True, exist_ok=True)
    config_file = root / "config.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    kubeconfig = root / "kubeconfig"
    server = localcluster(root, free_port(), config_file, audit_log)
    server.start(timeout=60)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    return Cluster(server, kubeconfig, root / "state", api)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("localcluster"), FAST)
    yield c
    c.api.close()
    c.server.stop()


def kubectl(cluster: Cluster, *args: str) -> str:
    """Real kubectl against ``cluster``: its stdout; a failure names the command and stderr."""
    binary = shutil.which("kubectl")
    assert binary, "kubectl is not on PATH; the workplace image ships one (see DESIGN.md)"
    done = subprocess.run(
        [binary, "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def tool(name: str) -> str:
    """A client binary beside this interpreter (helm, kubectl-1.35), else on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed; `make test-tools` installs it (tools/kube_tools.py)"
    return found


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy; fail saying ``what`` never happened."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def events_of(cluster: Cluster, name: str, reason: str | None = None) -> list[Any]:
    """The events about object ``name`` in the default namespace (with this reason, if given)."""
    listed = cluster.core.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={name}"
    )
    return [e for e in listed.items if reason is None or e.reason == reason]


def pod_manifest(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "base", "image": "python:3.11-slim", "command": ["python", "-c", script]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"test": name}},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def faulty_image(fault: str) -> str:
    """The serving image that localcluster runs as ``tests/faulty_serve.py`` with ``fault``."""
    from helmsman.pods import Platform

    return f"{Platform().image('serve')}-{fault}"


def faulty_images() -> list[dict[str, Any]]:
    """localcluster image-map entries for every fault of tests/faulty_serve.py."""
    import sys

    from tests.faulty_serve import FAULTS

    repo = Path(__file__).resolve().parent.parent
    return [
        {
            "pattern": faulty_image(fault),
            "python": sys.executable,
            "env": {
                "PYTHONPATH": f"{repo / 'images' / 'steps' / 'src'}:{repo}",
                "HELMSMAN_TEST_FAULT": fault,
            },
            "entrypoints": {"helmsman-step": ["python", "-m", "tests.faulty_serve"]},
            "defaultCommand": ["helmsman-step"],  # the image's ENTRYPOINT
        }
        for fault in FAULTS
    ]
