"""Input a person must fix ends the step with exit 2 (bad input, never retried) and a message
that names what to fix: a truncated or scrambled dataset partition (the file), a model version
whose files were deleted from the artifact store (the version), knobs beyond what a training
pod can run.

Real parts throughout: the step's command line in a subprocess, a real MLflow server (its
artifacts deleted through MLflow's own artifact API, as an operator cleaning up would)."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults import record
from tests.mlflow_fixtures import DAYS, FIRST_DAY, run_step

LAST_DAY = FIRST_DAY + dt.timedelta(days=DAYS - 1)
INTERVAL = ["--start", str(LAST_DAY), "--end", str(LAST_DAY + dt.timedelta(days=1))]


def _cut(whole: bytes) -> bytes:
    return whole[: len(whole) // 2]  # a copy cut off half way


def _scrambled_footer(whole: bytes) -> bytes:
    # Whole length, magic bytes intact, the metadata before them overwritten: pyarrow reports
    # it as an OSError ("Couldn't deserialize thrift"), as it does a failing disk.
    return whole[:-60] + b"\xff" * 52 + whole[-8:]


@pytest.mark.parametrize("damage", [_cut, _scrambled_footer], ids=["truncated", "scrambled"])
def test_a_damaged_partition_is_bad_input_naming_the_file_and_the_fix(
    dataset: str, step_env: dict[str, str], tmp_path: Path, damage: Any
) -> None:
    from helmsman_steps.store import DatasetStore

    root = tmp_path / "datasets"
    shutil.copytree(dataset, root)  # the session's dataset stays whole
    path = Path(DatasetStore(str(root)).features_path(LAST_DAY))
    path.write_bytes(damage(path.read_bytes()))

    started = time.monotonic()
    proc = run_step(step_env, "train", *INTERVAL, "--dataset-uri", str(root),
                    "--window-days", "1", "--model-name", "churn-truncated")  # fmt: skip

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"dataset partition {path} ({LAST_DAY}) is unreadable" in proc.stderr
    assert f"helmsman-step etl --start {LAST_DAY} --end" in proc.stderr
    what = {_cut: "cut off half way", _scrambled_footer: "with a scrambled footer"}[damage]
    record(f"a dataset partition {what}", "step",
           "train exits 2 (no retry), naming the file and the etl command that rebuilds it",
           None, time.monotonic() - started)  # fmt: skip


def test_a_partition_that_cannot_be_read_is_not_called_bad_input(
    dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that fails (a disk, a network file system) stays an OSError, which the task
    retries; only bytes that read whole and do not parse are the input's fault. The failing
    disk is simulated (``fs.open`` raises): one cannot be made here."""
    from helmsman_steps.store import DatasetStore

    store = DatasetStore(dataset)

    def failing_open(*args: Any, **kwargs: Any) -> Any:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store.fs, "open", failing_open)
    with pytest.raises(OSError, match="Input/output error"):  # BadInputError is no OSError
        store.read_features([LAST_DAY])


@pytest.mark.parametrize(
    ("knob", "message"),
    [
        (["--hidden", "64,5000"], "at most 8 layers of at most 4096 units each"),
        (["--hidden", ",".join(["8"] * 9)], "at most 8 layers"),
        (["--seed", str(2**32)], f"--seed {2**32}: give 0 to {2**32 - 1}"),
    ],
    ids=["wide", "deep", "seed"],
)
def test_knobs_beyond_a_training_pod_are_bad_input(
    step_env: dict[str, str], tmp_path: Path, knob: list[str], message: str
) -> None:
    proc = run_step(step_env, "train", *INTERVAL, "--dataset-uri", str(tmp_path),
                    "--model-name", "churn-knobs", *knob)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr


def test_a_version_whose_files_were_deleted_is_bad_input_naming_the_version(
    dataset: str, step_env: dict[str, str]
) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from helmsman_steps import registry, train
    from helmsman_steps.store import DatasetStore

    end = LAST_DAY + dt.timedelta(days=1)
    trained = train.run(
        DatasetStore(dataset), LAST_DAY, end, "churn-gone", "bad-input/gone",
        train.TrainConfig(epochs=1, window_days=1), registry.Lineage(dag_id="tests"),
    )  # fmt: skip
    version = trained.model_version
    where = registry.client().get_model_version_download_uri("churn-gone", version)
    get_artifact_repository(where).delete_artifacts("extra_files")

    started = time.monotonic()
    proc = run_step(step_env, "evaluate", *INTERVAL, "--dataset-uri", dataset,
                    "--model-name", "churn-gone", "--challenger-version", version)  # fmt: skip

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"version {version} of model churn-gone has no serving artifact" in proc.stderr
    assert "internal failure" not in proc.stderr
    record(
        "a model version's artifacts deleted",
        "step",
        "evaluate exits 2 (no retry), naming the version",
        None,
        time.monotonic() - started,
    )
