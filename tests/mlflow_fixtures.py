"""A real MLflow tracking server (SQLite backend, local artifacts) and a small trained model.

The session's data is small (a few thousand rows a day) so that every stage runs for real in
seconds. Stages are called in-process where that is what is tested, and through the
``helmsman-step`` command line where exit codes or processes are.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.dev_env import REPO
from tools.procs import Server, free_port, mlflow

STEPS_SRC = REPO / "images" / "steps" / "src"
ROWS_PER_DAY = 5000
SOURCE_URI = f"synthetic://churn?rows_per_day={ROWS_PER_DAY}&seed=7"
FIRST_DAY = dt.date(2026, 3, 1)
DAYS = 3


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = mlflow(root, port).start(timeout=120)
    uri = f"http://127.0.0.1:{port}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield uri
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def step_env(mlflow_server: str) -> dict[str, str]:
    """Environment for a ``python -m helmsman_steps`` subprocess."""
    return {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "PYTHONPATH": str(STEPS_SRC)}


def run_step(
    env: dict[str, str], *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "helmsman_steps", *args],
        env={**env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@dataclass(frozen=True)
class Trained:
    dataset_uri: str
    model_name: str
    version: str
    start: dt.date
    end: dt.date


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    from helmsman_steps import etl, sources
    from helmsman_steps.store import DatasetStore

    root = str(tmp_path_factory.mktemp("datasets"))
    end = FIRST_DAY + dt.timedelta(days=DAYS)
    etl.run(sources.from_uri(SOURCE_URI), DatasetStore(root), FIRST_DAY, end, 0.05)
    return root


@pytest.fixture(scope="session")
def champion(mlflow_server: str, dataset: str) -> Trained:
    """A model trained on the session's days, evaluated, and holding @champion."""
    from helmsman_steps import evaluate, registry, train
    from helmsman_steps.store import DatasetStore

    end = FIRST_DAY + dt.timedelta(days=DAYS)
    start = end - dt.timedelta(days=1)
    result = train.run(
        DatasetStore(dataset), start, end, "churn-test", "session/champion",
        train.TrainConfig(epochs=6, window_days=DAYS), registry.Lineage(dag_id="tests"),
    )  # fmt: skip
    decision = evaluate.run(
        DatasetStore(dataset), start, end, "churn-test", result.model_version, evaluate.Rules()
    )
    assert decision.decision == "promote", decision
    registry.client().set_registered_model_alias("churn-test", "champion", result.model_version)
    return Trained(dataset, "churn-test", result.model_version, start, end)


def serve_cmd(model_uri: str, port: int) -> list[str]:
    return [sys.executable, "-m", "helmsman_steps", "serve", "--model-uri", model_uri,
            "--port", str(port), "--graceful-seconds", "5"]  # fmt: skip


def model_server(model_uri: str, env: dict[str, str], folder: Path, *args: str) -> Server:
    """``helmsman-step serve`` of ``model_uri`` on a free port, started (stop it when done);
    ``server.url`` is its base address."""
    port = free_port()
    cmd, ready = [*serve_cmd(model_uri, port), *args], f"http://127.0.0.1:{port}/readyz"
    server = Server("model server", cmd, ready, folder / "serve.log", env=env).start()
    server.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return server


def train_and_judge(
    env: dict[str, str],
    name: str,
    window: list[str],
    common: list[str],
    seeds: list[int],
    envs: dict[int, dict[str, str]] | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Train a version per seed and evaluate each against @champion; the first becomes
    champion. Returns the versions and the decisions. ``envs``: another env for a seed."""
    import json

    from helmsman_steps import contract, registry

    versions: list[str] = []
    decisions: list[dict[str, Any]] = []
    for seed in seeds:
        seed_env = (envs or {}).get(seed, env)
        train = run_step(seed_env, "train", *window, *common, "--model-name", name,
                         "--seed", str(seed), "--run-key", f"{name}/{seed}")  # fmt: skip
        assert train.returncode == 0, train.stderr
        versions.append(json.loads(train.stdout)["model_version"])
        judged = run_step(seed_env, "evaluate", *window, *common, "--model-name", name,
                          "--challenger-version", versions[-1])  # fmt: skip
        assert judged.returncode == 0, judged.stderr
        decisions.append(json.loads(judged.stdout))
        if seed == seeds[0]:
            registry.client().set_registered_model_alias(name, contract.CHAMPION, versions[0])
    return versions, decisions
