"""Training against a real MLflow server: registration with lineage, resume, model behaviour."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import numpy as np
import pytest

from helmsman_steps import contract, registry, train
from helmsman_steps.evaluate import holdout, metrics
from helmsman_steps.model import NumpyModel
from helmsman_steps.modelinfo import ModelInfo
from helmsman_steps.runtime import Predictor, load_scorer
from helmsman_steps.schema import CATEGORIES, LABEL, NUMERIC_RANGES
from helmsman_steps.store import DatasetStore
from tests.mlflow_fixtures import Trained, run_step


def load(name: str, version: str) -> Predictor:
    """The version as serving and evaluation load it (its ONNX graph on ONNX Runtime)."""
    resolved = registry.resolve(f"models:/{name}/{version}")
    with tempfile.TemporaryDirectory() as tmp:
        path = registry.download_serving_model(resolved, tmp)
        assert path.endswith(".onnx"), path
        return Predictor(ModelInfo.churn(), load_scorer(path))


def served_bytes(name: str, version: str) -> bytes:
    resolved = registry.resolve(f"models:/{name}/{version}")
    with tempfile.TemporaryDirectory() as tmp:
        return Path(registry.download_serving_model(resolved, tmp)).read_bytes()


def test_version_carries_lineage_tags(champion: Trained) -> None:
    mv = registry.client().get_model_version(champion.model_name, champion.version)
    assert mv.tags["helmsman.dag_id"] == "tests"
    assert mv.tags["helmsman.interval_start"] == str(champion.start)
    assert mv.tags[contract.RUN_KEY_TAG] == "session/champion"
    assert len(mv.tags["helmsman.dataset_hash"]) == 64


def test_rerunning_a_finished_run_reuses_its_version(champion: Trained) -> None:
    again = train.run(
        DatasetStore(champion.dataset_uri), champion.start, champion.end, champion.model_name,
        "session/champion", train.TrainConfig(epochs=6, window_days=3), registry.Lineage(),
    )  # fmt: skip
    assert (again.trained, again.model_version) == (False, champion.version)


def test_a_retried_pod_resumes_from_its_checkpoint_and_ends_identical(
    step_env: dict[str, str], dataset: str
) -> None:
    args = ["train", "--start", "2026-03-03", "--end", "2026-03-04", "--dataset-uri", dataset,
            "--model-name", "churn-resume", "--epochs", "4", "--window-days", "2"]  # fmt: skip
    crashed = run_step(step_env, *args, "--run-key", "resume/a",
                       extra_env={train.FAULT_ENV: "1"})  # fmt: skip
    assert crashed.returncode == 1, crashed.stderr
    assert '"fault injection: exiting after checkpoint"' in crashed.stderr

    resumed = run_step(step_env, *args, "--run-key", "resume/a")
    assert resumed.returncode == 0, resumed.stderr
    assert '"after_epoch": 1' in resumed.stderr  # picked up after the checkpointed epoch
    assert '"epoch": 0,' not in resumed.stderr
    assert '"epoch": 2,' in resumed.stderr

    straight = run_step(step_env, *args, "--run-key", "resume/b")
    assert straight.returncode == 0, straight.stderr
    # The same weights make the same graph, byte for byte.
    assert served_bytes("churn-resume", "1") == served_bytes("churn-resume", "2")


def test_missing_partitions_are_bad_input(step_env: dict[str, str], tmp_path: Path) -> None:
    proc = run_step(step_env, "train", "--start", "2026-03-03", "--end", "2026-03-04",
                    "--dataset-uri", str(tmp_path), "--window-days", "1")  # fmt: skip
    assert proc.returncode == 2
    assert "no dataset partition for 2026-03-03" in proc.stderr


# -- model tests: behaviour of the trained champion ---------------------------------------


@pytest.fixture(scope="module")
def model(champion: Trained) -> Predictor:
    return load(champion.model_name, champion.version)


def typical(n: int = 1, **overrides: object) -> dict[str, np.ndarray]:
    row: dict[str, object] = {"age": 40.0, "tenure_months": 24.0, "monthly_charges": 60.0,
                              "total_charges": 1440.0, "support_calls": 1.0, "plan": "standard",
                              "region": "north"}  # fmt: skip
    row.update(overrides)
    return {k: np.full(n, v) for k, v in row.items()}


def test_discriminates_better_than_the_strongest_single_feature(
    champion: Trained, model: Predictor
) -> None:
    rows = holdout(DatasetStore(champion.dataset_uri), champion.start, champion.end)
    y = rows[LABEL].to_numpy(np.float32)
    scored = metrics(y, model.predict(rows.to_dict("list")))
    baseline = metrics(y, rows["support_calls"].to_numpy(np.float32) / 50)
    assert scored["roc_auc"] > 0.7
    assert scored["roc_auc"] > baseline["roc_auc"] + 0.05


def test_more_support_calls_raise_churn_risk(model: Predictor) -> None:
    calm, angry = (
        model.predict(typical(support_calls=0.0)),
        model.predict(typical(support_calls=8.0)),
    )
    assert angry[0] > calm[0] + 0.1


def test_long_tenure_lowers_churn_risk(model: Predictor) -> None:
    new = model.predict(typical(tenure_months=2.0, total_charges=120.0))
    loyal = model.predict(typical(tenure_months=120.0, total_charges=7200.0))
    assert loyal[0] < new[0]


def test_premium_plan_churns_less_than_basic(model: Predictor) -> None:
    assert model.predict(typical(plan="premium"))[0] < model.predict(typical(plan="basic"))[0]


def test_outputs_are_probabilities_over_the_whole_input_space(model: Predictor) -> None:
    rng = np.random.default_rng(0)
    n = 5000
    columns = {k: rng.uniform(lo, hi, n) for k, (lo, hi) in NUMERIC_RANGES.items()}
    columns |= {k: rng.choice(v, n) for k, v in CATEGORIES.items()}
    p = model.predict(columns)
    assert np.isfinite(p).all()
    assert (p >= 0).all()
    assert (p <= 1).all()


def test_the_served_graph_matches_the_logged_pytorch_model(
    champion: Trained, model: Predictor
) -> None:
    import mlflow
    import torch

    from helmsman_steps import features

    logged = mlflow.pytorch.load_model(f"models:/{champion.model_name}/{champion.version}")
    rows = holdout(DatasetStore(champion.dataset_uri), champion.start, champion.end).head(500)
    x = features.to_matrix(rows.to_dict("list"))
    with torch.no_grad():
        expected = logged(torch.as_tensor(x)).numpy()[:, 0]
    np.testing.assert_allclose(model.scorer.predict_matrix(x), expected, rtol=1e-4, atol=1e-5)


def test_training_window_covers_the_interval_and_earlier_days() -> None:
    days = train.training_window(dt.date(2026, 3, 10), dt.date(2026, 3, 11), 3)
    assert days == [dt.date(2026, 3, 8), dt.date(2026, 3, 9), dt.date(2026, 3, 10)]
    wide = train.training_window(dt.date(2026, 3, 1), dt.date(2026, 3, 8), 3)
    assert wide[0] == dt.date(2026, 3, 1)
    assert len(wide) == 7


def test_the_version_carries_an_onnx_graph_that_reproduces_it(
    champion: Trained, tmp_path: Path
) -> None:
    """The registered version holds model.onnx beside the numpy export; the run logs the ONNX
    flavor and the parity training checked; ONNX Runtime reproduces the native model."""
    import mlflow
    import onnx

    from helmsman_steps import features, onnx_model
    from helmsman_steps.model import FILENAME

    mv = registry.client().get_model_version(champion.model_name, champion.version)
    run = registry.client().get_run(mv.run_id)
    assert run.data.metrics["onnx_max_abs_diff"] <= onnx_model.PARITY_TOLERANCE
    assert run.data.metrics["onnx_parity_rows"] > 0
    model_dir = Path(mlflow.artifacts.download_artifacts(
        f"models:/{champion.model_name}/{champion.version}", dst_path=str(tmp_path / "native")
    ))  # fmt: skip
    graph = onnx.load(str(model_dir / "extra_files" / onnx_model.FILENAME))
    native = NumpyModel.load(model_dir / "extra_files" / FILENAME)
    (logged,) = [m for m in mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    ) if m.source_run_id == mv.run_id and m.name == "onnx"]  # fmt: skip
    flavor = mlflow.onnx.load_model(logged.model_uri)
    rng = np.random.default_rng(3)
    columns = {n: rng.uniform(lo, hi, 300) for n, (lo, hi) in NUMERIC_RANGES.items()}
    columns |= {n: rng.choice(list(v), 300) for n, v in CATEGORIES.items()}
    matrix = features.to_matrix(columns)
    expected = native.predict_matrix(matrix)
    for proto in (graph, flavor):
        assert np.max(np.abs(onnx_model.predict(proto, matrix) - expected)) <= 1e-5


def test_a_version_trained_with_its_spec_carries_it_and_a_mismatched_spec_is_refused(
    step_env: dict[str, str], dataset: str, tmp_path: Path
) -> None:
    """The DAG hands the pods the model's spec; training stores it with the version, and
    fetch-model (what a serving pod runs) finds it; a spec of another model is bad input."""
    import json

    from helmsman_steps import spec

    churn = spec.load(Path(__file__).resolve().parents[2] / "models" / "churn")
    declared = spec.to_json(churn.model_copy(update={"name": "churn-spec"}))
    # With a spec, a model's dataset is <root>/<model>: models share the root.
    root = tmp_path / "datasets"
    root.mkdir()
    (root / "churn-spec").symlink_to(dataset)
    args = ["train", "--start", "2026-03-03", "--end", "2026-03-04", "--dataset-uri", str(root),
            "--model-name", "churn-spec", "--epochs", "1", "--window-days", "1"]  # fmt: skip
    trained = run_step(step_env, *args, "--run-key", "spec/a",
                       extra_env={contract.MODEL_SPEC_ENV: declared})  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    version = json.loads(trained.stdout)["model_version"]  # stdout: the one JSON result
    fetched = run_step(step_env, "fetch-model", "--model-uri", f"models:/churn-spec/{version}",
                       "--dest", str(tmp_path))  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    stored = json.loads(Path(json.loads(fetched.stdout)["spec_path"]).read_text())
    assert stored == json.loads(declared)
    assert spec.from_json(json.dumps(stored)) == churn.model_copy(update={"name": "churn-spec"})

    other = run_step(step_env, *args, "--run-key", "spec/b",
                     extra_env={contract.MODEL_SPEC_ENV: spec.to_json(churn)})  # fmt: skip
    assert other.returncode == 2
    assert "the spec is model 'churn', not --model-name 'churn-spec'" in other.stderr
