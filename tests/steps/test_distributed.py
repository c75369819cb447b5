"""Training in several processes (torchrun, DDP on gloo: the CPU backend) against a real MLflow.

The GPU side (NCCL, bf16 autocast, one device per process) needs a GPU node; these tests run
the same code on the CPU, which is what the GPU path shares: the launcher, the sharding of each
global batch, the gradient averaging, rank 0's checkpoints and registration, and resume.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from helmsman_steps import fit, registry, train
from helmsman_steps.evaluate import holdout
from helmsman_steps.modelinfo import ModelInfo
from helmsman_steps.runtime import load_scorer
from helmsman_steps.store import DatasetStore

ARGS = ["train", "--start", "2026-03-03", "--end", "2026-03-04", "--epochs", "3",
        "--window-days", "2", "--batch-size", "256"]  # fmt: skip


def torchrun(
    env: dict[str, str], processes: int, *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """torchrun (through ``helmsman_steps.torchrun``, which keeps the step's exit codes) with
    ``--standalone --nproc-per-node=N -m helmsman_steps -- ARGS``, as the train pod runs it when
    it has N GPUs."""
    launcher = [sys.executable, "-m", "helmsman_steps.torchrun", "--standalone",
                f"--nproc-per-node={processes}", "-m", "helmsman_steps", "--"]  # fmt: skip
    return subprocess.run(
        [*launcher, *args],
        env={**env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def scores(model_name: str, version: str, rows: dict[str, object]) -> np.ndarray:
    resolved = registry.resolve(f"models:/{model_name}/{version}")
    with tempfile.TemporaryDirectory() as tmp:
        scorer = load_scorer(registry.download_serving_model(resolved, tmp))
        return scorer.predict_matrix(ModelInfo.churn().featurizer.to_matrix(rows))


@pytest.fixture(scope="module")
def held_out(dataset: str) -> dict[str, object]:
    import datetime as dt

    rows = holdout(DatasetStore(dataset), dt.date(2026, 3, 3), dt.date(2026, 3, 4))
    return rows.to_dict("list")  # type: ignore[no-any-return]


def version_of(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = proc.stdout.strip().splitlines()  # rank 0's result, the only line on stdout
    return str(json.loads(result)["model_version"])


def test_two_processes_train_the_model_one_process_trains(
    step_env: dict[str, str], dataset: str, held_out: dict[str, object]
) -> None:
    args = [*ARGS, "--dataset-uri", dataset, "--model-name", "churn-ddp"]
    one = version_of(torchrun(step_env, 1, *args, "--run-key", "ddp/one"))
    two_proc = torchrun(step_env, 2, *args, "--run-key", "ddp/two")
    two = version_of(two_proc)
    # Only rank 0 registers: one version per run, and it says it trained in two processes.
    assert (one, two) == ("1", "2")
    run = registry.find_run(train.EXPERIMENT, "ddp/two")
    assert run is not None
    assert run.data.params["processes"] == "2"
    assert run.data.params["precision"] == "float32"  # CPU: no autocast
    a, b = scores("churn-ddp", one, held_out), scores("churn-ddp", two, held_out)
    # Same steps, different float summation order: measured 1.2e-7 apart on 3 epochs.
    assert np.abs(a - b).max() < 1e-5, np.abs(a - b).max()
    # ...and not because nothing was learnt: the scores spread over the holdout.
    assert a.std() > 0.05


def test_a_rank_killed_mid_epoch_resumes_from_rank_0s_checkpoint(
    step_env: dict[str, str], dataset: str, held_out: dict[str, object]
) -> None:
    args = [*ARGS, "--dataset-uri", dataset, "--model-name", "churn-ddp-resume"]
    killed = torchrun(step_env, 2, *args, "--run-key", "ddp-resume/a",
                      extra_env={fit.KILL_ENV: "1:2:3"})  # rank 1, epoch 2, step 3  # fmt: skip
    assert killed.returncode != 0
    assert "exitcode  : 137" in killed.stderr or "exitcode: 137" in killed.stderr, killed.stderr
    assert registry.client().search_model_versions("name='churn-ddp-resume'") == []

    resumed = torchrun(step_env, 2, *args, "--run-key", "ddp-resume/a")
    version = version_of(resumed)
    assert '"after_epoch": 1' in resumed.stderr  # epochs 0 and 1 were checkpointed
    assert '"epoch": 0,' not in resumed.stderr

    straight = version_of(torchrun(step_env, 2, *args, "--run-key", "ddp-resume/b"))
    a, b = scores("churn-ddp-resume", version, held_out), scores("churn-ddp-resume", straight,
                                                                  held_out)  # fmt: skip
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_bad_input_in_a_rank_fails_the_launch_as_bad_input(
    step_env: dict[str, str], tmp_path: Path
) -> None:
    """Exit 2 (not retried) survives torchrun, which ends with 1 whenever a worker fails."""
    args = [*ARGS, "--dataset-uri", str(tmp_path), "--model-name", "churn-ddp-bad"]
    proc = torchrun(step_env, 2, *args, "--run-key", "ddp-bad/a")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no dataset partition for 2026-03-02" in proc.stderr


@pytest.mark.parametrize(("rows", "batch", "world"), [(10, 4, 2), (9, 3, 4), (1000, 256, 3)])
def test_ranks_share_out_every_global_batch_exactly_once(rows: int, batch: int, world: int) -> None:
    import torch

    def batches(rank: int, size: int) -> list[tuple[torch.Tensor, int]]:
        generator = torch.Generator().manual_seed(5)
        return list(fit.GlobalBatchSampler(rows, batch, fit.World(rank, size), generator))

    shares = [batches(rank, world) for rank in range(world)]
    single = batches(0, 1)
    assert len(single) == -(-rows // batch)
    for step, (whole, size) in enumerate(single):
        parts = [shares[rank][step] for rank in range(world)]
        assert {p[1] for p in parts} == {size} == {len(whole)}
        together = torch.cat([p[0] for p in parts])
        assert sorted(together.tolist()) == sorted(whole.tolist())


def test_the_world_comes_from_torchruns_environment() -> None:
    assert fit.World.from_env({}) == fit.World(0, 1, 0)
    world = fit.World.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.leader) == (3, 4, 1, False)
    with pytest.raises(ValueError, match="rank 4 is not in a world of 4"):
        fit.World.from_env({"RANK": "4", "WORLD_SIZE": "4"})
