"""What every model folder's own tests check (``models/<name>/test_model.py``, written by
``make new-model``): its spec builds its four DAGs, and its sample feed goes through the real
steps -- ETL against the declared schema, training with the ONNX parity check, evaluation on
the declared metric, and the served model answering a row of the sample -- as subprocesses of
``helmsman-step``, against an MLflow store of the test's own."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helmsman_steps import usercode

REPO = Path(__file__).resolve().parents[1]
STEPS_SRC = REPO / "images" / "steps" / "src"


def check_dags(folder: Path) -> None:
    """The factory builds train_, rollback_, scale_ and monitor_<name> from the folder."""
    from helmsman import factory

    name = folder.name
    dags = factory.model_dags(name, folder.parent)
    kinds = ["train", "rollback", "scale", "monitor"]
    assert [d.dag_id for d in dags] == [f"{kind}_{name}" for kind in kinds]
    assert {"etl", "train", "evaluate", "rollout"} <= set(dags[0].task_ids)


def step(env: dict[str, str], cwd: Path, *args: str) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "helmsman_steps", *args], env=env, cwd=cwd,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"helmsman-step {args[0]} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


@contextlib.contextmanager
def models_dir(root: Path) -> Iterator[None]:
    """Point this process at ``root`` for a model's own code (as the images' setting does)."""
    before = os.environ.get(usercode.MODELS_DIR_ENV)
    os.environ[usercode.MODELS_DIR_ENV] = str(root)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(usercode.MODELS_DIR_ENV, None)
        else:
            os.environ[usercode.MODELS_DIR_ENV] = before


def check_pipeline(folder: Path, tmp: Path) -> dict[str, Any]:
    """The sample's days through etl, train, evaluate; the served version answers a sample
    row. Returns the evaluation's decision."""
    tmp.mkdir(parents=True, exist_ok=True)
    with models_dir(folder.parent):
        return _check_pipeline(folder, tmp)


def _check_pipeline(folder: Path, tmp: Path) -> dict[str, Any]:
    import msgspec
    import numpy as np
    import pandas as pd

    from helmsman_steps import contract, spec
    from helmsman_steps.modelinfo import ModelInfo
    from helmsman_steps.runtime import Predictor, load_scorer
    from helmsman_steps.serve import request_type

    model = spec.load(folder)
    files = sorted((folder / "sample").glob("*.csv"))
    assert files, f"{folder / 'sample'} holds no daily files (YYYY-MM-DD.csv)"
    first, last = (dt.date.fromisoformat(f.stem) for f in (files[0], files[-1]))
    end = str(last + dt.timedelta(days=1))
    env = {
        **os.environ,
        "PYTHONPATH": str(STEPS_SRC),
        usercode.MODELS_DIR_ENV: str(folder.parent),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        contract.MODEL_SPEC_ENV: spec.to_json(model),
        f"HELMSMAN_SOURCE_URI_{model.name.upper().replace('-', '_')}": (folder / "sample").as_uri(),
    }
    data = ["--dataset-uri", str(tmp / "datasets")]
    window = ["--start", str(last), "--end", end, "--window-days", str((last - first).days + 1)]
    etl = step(env, tmp, "etl", "--start", str(first), "--end", end, *data)
    assert sum(d["valid_rows"] for d in etl["days"]) > 0
    trained = step(env, tmp, "train", *window, *data, "--model-name", model.name)
    version = trained["model_version"]
    decision: dict[str, Any] = step(env, tmp, "evaluate", *window, *data, "--model-name",
                                    model.name, "--challenger-version", version)  # fmt: skip
    assert decision["metric"] == model.evaluation.metric
    # The golden set is what the rollout's preview sends the served version: every row must
    # decode as a request, and the served graph must answer what evaluation recorded.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])  # not the process's store
    run_id = str(client.get_model_version(model.name, version).run_id)
    golden_path = client.download_artifacts(run_id, contract.GOLDEN_ARTIFACT, str(tmp))
    golden = json.loads(Path(golden_path).read_text())
    fetched = step(env, tmp, "fetch-model", "--model-uri", f"models:/{model.name}/{version}",
                   "--dest", str(tmp / "served"))  # fmt: skip
    info = ModelInfo.from_file(fetched["spec_path"], model.name)
    served = Predictor(info, load_scorer(fetched["path"]))
    # A request as a client sends it: the first sample row's raw columns, as JSON.
    row = json.loads(
        pd.read_csv(files[0], dtype_backend="numpy_nullable")[info.input_columns]
        .head(1)
        .to_json(orient="records")
    )[0]
    decoder = msgspec.json.Decoder(request_type(info.raw_columns))
    (decoded,) = decoder.decode(json.dumps({"instances": [row]}).encode()).instances
    assert {c: getattr(decoded, c) for c in info.input_columns} == row
    body = json.dumps({"instances": golden["inputs"]}, allow_nan=False).encode()
    rows = decoder.decode(body).instances
    columns = {c: [getattr(r, c) for r in rows] for c in info.input_columns}
    replayed = served.predict(columns)
    recorded = np.asarray(golden["predictions"])
    per_row = [info.n_outputs] if info.task == "multiclass" else []
    assert replayed.shape == recorded.shape == (len(rows), *per_row)
    assert float(np.max(np.abs(replayed - recorded))) < 1e-4
    (score,) = served.predict({k: [v] for k, v in row.items()})
    if info.label_range is not None:  # a boosted or linear model stays near the label's range
        low, high = info.label_range
        assert low - 0.1 * (high - low) <= score <= high + 0.1 * (high - low), score
    elif info.task == "multiclass":  # a probability per class, summing to one
        assert score.shape == (len(info.classes or ()),), score
        assert np.all((score >= 0) & (score <= 1)), score
        assert abs(float(score.sum()) - 1) < 1e-5, score
    else:
        assert 0.0 <= score <= 1.0, score
    return decision
