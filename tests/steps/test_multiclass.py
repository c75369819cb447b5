"""The third model, a multiclass one: the wine cultivar (three classes) trained by LightGBM on
a real dataset fed as daily files, through the same steps -- ETL, training with ONNX export
and parity, evaluation on macro F1 against @champion, serving a probability per class -- as
real processes against a real MLflow server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest

from helmsman_steps import contract, onnx_model, registry, spec
from helmsman_steps.modelinfo import ModelInfo
from helmsman_steps.runtime import Predictor, load_scorer
from tests.mlflow_fixtures import model_server, run_step, train_and_judge
from tools.procs import Server

REPO = Path(__file__).resolve().parents[2]
NAME = "wine-steps"  # its own registered model: other tests' versions do not mix in
# Wine 0 of the dataset, a first-cultivar wine.
WINE = {"alcohol": 14.23, "malic_acid": 1.71, "ash": 2.43, "alcalinity_of_ash": 15.6,
        "magnesium": 127.0, "total_phenols": 2.8, "flavanoids": 3.06,
        "nonflavanoid_phenols": 0.28, "proanthocyanins": 2.29, "color_intensity": 5.64,
        "hue": 1.04, "od280_od315": 3.92, "proline": 1065.0}  # fmt: skip
CLASSES = ["cultivar_1", "cultivar_2", "cultivar_3"]
WINDOW = ["--start", "2026-02-14", "--end", "2026-02-15", "--window-days", "14"]


@pytest.fixture(scope="module")
def trained(step_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two weeks of daily files through ETL, then two versions trained (seeds 1 and 2), the
    first evaluated and made champion, the second evaluated against it."""
    feed = tmp_path_factory.mktemp("raw") / "wine"
    made = run_step(step_env, "sample-data", "wine", "--dest", str(feed))
    assert made.returncode == 0, made.stderr
    declared = spec.to_json(spec.load(REPO / "models" / "wine").model_copy(update={"name": NAME}))
    root = tmp_path_factory.mktemp("datasets")
    env = {**step_env, contract.MODEL_SPEC_ENV: declared,
           f"HELMSMAN_SOURCE_URI_{NAME.upper().replace('-', '_')}": feed.as_uri()}  # fmt: skip
    common = ["--dataset-uri", str(root)]
    etl = run_step(env, "etl", "--start", "2026-02-01", "--end", "2026-02-15", *common)
    assert etl.returncode == 0, etl.stderr
    versions, decisions = train_and_judge(env, NAME, WINDOW, common, [1, 2])
    return {"etl": json.loads(etl.stdout), "versions": versions, "decisions": decisions}


def test_every_wine_of_the_study_enters_the_dataset(trained: dict[str, Any]) -> None:
    days = trained["etl"]["days"]
    assert len(days) == 14
    assert sum(d["valid_rows"] for d in days) == 178
    assert all(d["quarantined_rows"] == 0 for d in days)


def test_the_trainer_is_lightgbm_and_its_graph_gives_a_probability_per_class(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    mv = registry.client().get_model_version(NAME, trained["versions"][0])
    run = registry.client().get_run(mv.run_id)
    assert run.data.params["trainer"] == "LGBMClassifier"
    assert run.data.params["trainer.num_leaves"] == "7"  # model.yaml's trainer.params
    assert run.data.params["trainer.random_state"] == "1"  # the run's seed
    assert run.data.metrics["onnx_max_abs_diff"] <= onnx_model.PARITY_TOLERANCE
    assert run.data.metrics["val_accuracy"] > 0.8
    native = mlflow.sklearn.load_model(f"models:/{NAME}/{mv.version}")
    folder = Path(mlflow.artifacts.download_artifacts(
        f"models:/{NAME}/{mv.version}", dst_path=str(tmp_path)
    ))  # fmt: skip
    info = ModelInfo.from_file(str(folder / "extra_files" / contract.MODEL_SPEC_FILE))
    served = Predictor(info, load_scorer(str(folder / "extra_files" / onnx_model.FILENAME)))
    rows = {k: np.asarray([v, v * 0.9, v * 1.2]) for k, v in WINE.items()}
    scores = served.predict(rows)
    assert scores.shape == (3, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    expected = native.predict_proba(info.featurizer.to_matrix(rows))
    np.testing.assert_allclose(scores, expected, atol=onnx_model.PARITY_TOLERANCE)


def test_evaluation_judges_macro_f1_with_a_confusion_matrix(trained: dict[str, Any]) -> None:
    first, second = trained["decisions"]
    assert first["metric"] == "f1_macro"
    assert first["decision"] == "promote"
    assert set(first["challenger_metrics"]) == {"accuracy", "f1_macro", "log_loss"}
    assert first["challenger_metrics"]["f1_macro"] >= 0.8  # the spec's floor
    assert 8 <= first["holdout_rows"] <= 30  # bucket 0 of the window's 178 wines
    assert second["champion_version"] == trained["versions"][0]
    assert second["champion_metrics"] == pytest.approx(first["challenger_metrics"])
    won = second["challenger_metrics"]["f1_macro"] - second["champion_metrics"]["f1_macro"]
    assert second["auc_difference"] == pytest.approx(won)
    low, high = second["auc_difference_ci"]
    assert low <= won <= high
    run_id = registry.client().get_model_version(NAME, trained["versions"][1]).run_id
    listed = {Path(a.path).name for a in registry.client().list_artifacts(run_id, "evaluation")}
    assert "confusion.png" in listed
    golden = mlflow.artifacts.load_dict(f"runs:/{run_id}/{contract.GOLDEN_ARTIFACT}")
    assert all(len(p) == 3 and abs(sum(p) - 1) < 1e-5 for p in golden["predictions"])
    versus = golden["versus_champion"]
    # One histogram bucket per class (serving observes the predicted class; +Inf's is the last).
    assert len(versus["challenger_counts"]) == 3
    assert sum(versus["challenger_counts"]) == versus["rows"]
    assert versus["mean_abs_diff"] > 0  # bagging with another seed: another model


@pytest.fixture(scope="module")
def server(
    trained: dict[str, Any], step_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    srv = model_server(f"models:/{NAME}@champion", step_env, tmp_path_factory.mktemp("serve"))
    try:
        yield srv
    finally:
        srv.stop()


def test_the_server_answers_a_probability_per_named_class(server: Server) -> None:
    url = server.health_url.replace("/readyz", "")
    answer = httpx.post(f"{url}/predict", json={"instances": [WINE, WINE]}).json()
    assert answer["classes"] == CLASSES
    first, second = answer["predictions"]
    assert first == second
    assert len(first) == 3
    assert abs(sum(first) - 1) < 1e-5
    assert max(range(3), key=first.__getitem__) == 0  # a first-cultivar wine
    assert httpx.get(f"{url}/metadata").json()["classes"] == CLASSES
    bad = httpx.post(f"{url}/predict", json={"instances": [{**WINE, "hue": -1}]})
    assert bad.status_code == 400
    assert "$.instances[0].hue" in bad.json()["error"]
    metrics = httpx.get(f"{url}/metrics").text
    # The histogram counts predicted classes: both rows in the first class's bucket.
    assert 'helmsman_prediction_bucket{le="0.5"} 2.0' in metrics
    assert 'helmsman_prediction_bucket{le="1.5"} 2.0' in metrics


def test_the_v2_protocol_answers_a_rows_by_classes_tensor(server: Server) -> None:
    url = server.health_url.replace("/readyz", "")
    inputs = [
        {"name": k, "shape": [2], "datatype": "FP64", "data": [v, v]} for k, v in WINE.items()
    ]
    body = httpx.post(f"{url}/v2/models/{NAME}/infer", json={"inputs": inputs}).json()
    (score,) = body["outputs"]
    assert score["shape"] == [2, 3]
    assert len(score["data"]) == 6  # row-major, as the protocol lays tensors out
    assert body["parameters"] == {"classes": CLASSES}
    predicted = httpx.post(f"{url}/predict", json={"instances": [WINE]}).json()["predictions"]
    assert score["data"][:3] == predicted[0]
    meta = httpx.get(f"{url}/v2/models/{NAME}").json()
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1, 3]}]
    assert json.loads(meta["properties"]["classes"]) == CLASSES
