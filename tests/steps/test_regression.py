"""The second model, nothing like churn: a regression (diabetes progression) trained by
scikit-learn's gradient boosting on a real dataset fed as daily files, through the same steps
-- ETL, training with ONNX export and parity, evaluation against @champion, serving -- as
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
NAME = "diabetes-steps"  # its own registered model: other tests' versions do not mix in
PATIENT = {"age": 59, "sex": 2, "bmi": 32.1, "bp": 101, "tc": 157, "ldl": 93.2, "hdl": 38,
           "tch": 4, "ltg": 4.86, "glu": 87}  # fmt: skip
WINDOW = ["--start", "2026-02-14", "--end", "2026-02-15", "--window-days", "14"]


@pytest.fixture(scope="module")
def declared() -> str:
    model = spec.load(REPO / "models" / "diabetes")
    return spec.to_json(model.model_copy(update={"name": NAME}))


@pytest.fixture(scope="module")
def feed(step_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("raw") / "diabetes"
    proc = run_step(step_env, "sample-data", "diabetes", "--dest", str(folder))
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.fixture(scope="module")
def trained(
    step_env: dict[str, str], declared: str, feed: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Two weeks of daily files through ETL, then three versions trained (seeds 1, 2, 3), the
    first evaluated and made champion, the others evaluated against it; the third with a spec
    that lists the columns in another order (its inputs differ from the champion's)."""
    root = tmp_path_factory.mktemp("datasets")
    env = {**step_env, contract.MODEL_SPEC_ENV: declared,
           f"HELMSMAN_SOURCE_URI_{NAME.upper().replace('-', '_')}": feed.as_uri()}  # fmt: skip
    common = ["--dataset-uri", str(root)]
    etl = run_step(env, "etl", "--start", "2026-02-01", "--end", "2026-02-15", *common)
    assert etl.returncode == 0, etl.stderr
    data = json.loads(declared)
    data["schema"]["columns"] = dict(reversed(data["schema"]["columns"].items()))
    reordered = {**env, contract.MODEL_SPEC_ENV: json.dumps(data)}
    versions, decisions = train_and_judge(env, NAME, WINDOW, common, [1, 2, 3], {3: reordered})
    return {"etl": json.loads(etl.stdout), "versions": versions, "decisions": decisions,
            "root": root}  # fmt: skip


def test_daily_files_enter_the_dataset_whole(trained: dict[str, Any]) -> None:
    days = trained["etl"]["days"]
    assert [d["day"] for d in days][:2] == ["2026-02-01", "2026-02-02"]
    assert len(days) == 14
    assert sum(d["valid_rows"] for d in days) == 442  # every patient of the study
    assert (trained["root"] / NAME).is_dir()  # the model's own dataset under the shared root


def test_the_trainer_is_gradient_boosting_and_its_onnx_graph_reproduces_it(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    mv = registry.client().get_model_version(NAME, trained["versions"][0])
    run = registry.client().get_run(mv.run_id)
    assert run.data.params["trainer"] == "GradientBoostingRegressor"
    assert run.data.params["trainer.n_estimators"] == "150"  # model.yaml's trainer.params
    assert run.data.metrics["onnx_max_abs_diff"] <= onnx_model.PARITY_TOLERANCE
    native = mlflow.sklearn.load_model(f"models:/{NAME}/{mv.version}")
    folder = Path(mlflow.artifacts.download_artifacts(
        f"models:/{NAME}/{mv.version}", dst_path=str(tmp_path)
    ))  # fmt: skip
    info = ModelInfo.from_file(str(folder / "extra_files" / contract.MODEL_SPEC_FILE))
    served = Predictor(info, load_scorer(str(folder / "extra_files" / onnx_model.FILENAME)))
    rows = {k: np.asarray([v, v * 1.1]) for k, v in PATIENT.items()}
    expected = native.predict(info.featurizer.to_matrix(rows))
    np.testing.assert_allclose(served.predict(rows), expected, rtol=1e-5)


def test_the_champion_is_scored_with_its_own_spec_when_the_challengers_differs(
    trained: dict[str, Any],
) -> None:
    first, _, third = trained["decisions"]
    assert third["champion_version"] == trained["versions"][0]
    # The champion's figures on these rows are what it scored as a challenger: its own column
    # order, not the reordered spec's (scored that way, its graph's recorded inputs would not
    # match, and the run would fail).
    assert third["champion_metrics"] == pytest.approx(first["challenger_metrics"])


def test_evaluation_judges_rmse_in_its_better_direction(trained: dict[str, Any]) -> None:
    first, second, _ = trained["decisions"]
    assert first["metric"] == "rmse"
    assert first["decision"] == "promote"
    assert first["challenger_metrics"]["rmse"] < 75.0  # the spec's floor (a ceiling for errors)
    assert 30 <= first["holdout_rows"] <= 60  # bucket 0 of the whole window's 442 rows
    assert second["champion_version"] == trained["versions"][0]
    assert second["champion_metrics"]["rmse"] == pytest.approx(first["challenger_metrics"]["rmse"])
    # A gain is an error going down: its sign follows which of the two errs less.
    errs_less = second["challenger_metrics"]["rmse"] < second["champion_metrics"]["rmse"]
    assert (second["auc_difference"] > 0) == errs_less
    assert (second["decision"] == "promote") == (
        errs_less and second["auc_difference_ci"][0] >= -0.02 * second["champion_metrics"]["rmse"]
    )
    golden = mlflow.artifacts.load_dict(
        f"runs:/{registry.client().get_model_version(NAME, trained['versions'][1]).run_id}/"
        f"{contract.GOLDEN_ARTIFACT}"
    )
    assert set(golden["inputs"][0]) == set(PATIENT)  # the raw columns a request sends
    versus = golden["versus_champion"]
    assert len(versus["challenger_counts"]) == 20  # the label range's buckets, +Inf
    assert sum(versus["challenger_counts"]) == versus["rows"]


@pytest.fixture(scope="module")
def server(
    trained: dict[str, Any], step_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    srv = model_server(f"models:/{NAME}@champion", step_env, tmp_path_factory.mktemp("serve"))
    try:
        yield srv
    finally:
        srv.stop()


def test_the_server_answers_in_progression_units_and_names_a_bad_field(server: Server) -> None:
    url = server.health_url.replace("/readyz", "")
    answer = httpx.post(f"{url}/predict", json={"instances": [PATIENT]}).json()
    assert 25 <= answer["predictions"][0] <= 346  # the study's range of progression
    bad = httpx.post(f"{url}/predict", json={"instances": [{**PATIENT, "sex": 3}]})
    assert bad.status_code == 400
    assert "$.instances[0].sex" in bad.json()["error"]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'helmsman_prediction_bucket{le="200.0"}' in metrics  # buckets over [0, 400]


def test_a_trainer_param_the_estimator_lacks_is_bad_input_naming_the_field() -> None:
    from helmsman_steps.exitcodes import BadInputError
    from helmsman_steps.train import sklearn_estimator

    model = spec.load(REPO / "models" / "diabetes")
    wrong = model.model_copy(
        update={"trainer": model.trainer.model_copy(update={"params": {"n_estimator": 5}})}
    )
    info = ModelInfo.from_dict(json.loads(spec.to_json(wrong)))
    with pytest.raises(BadInputError, match=r"trainer.params: .*'n_estimator'.*GradientBoosting"):
        sklearn_estimator(info, seed=0)


def test_a_graph_whose_recorded_inputs_differ_from_the_featurizer_is_refused() -> None:
    from helmsman_steps.model import NumpyModel

    info = ModelInfo.churn()
    names = info.featurizer.input_names()
    width = len(names)
    model = NumpyModel(list(reversed(names)), np.zeros(width, np.float32),
                       np.ones(width, np.float32), [np.ones((1, width), np.float32)],
                       [np.zeros(1, np.float32)])  # fmt: skip
    scorer = load_scorer_bytes(onnx_model.from_mlp(model).SerializeToString())
    with pytest.raises(ValueError, match=r"the model's inputs .* are not what its spec's"):
        Predictor(info, scorer)


def load_scorer_bytes(data: bytes) -> Any:
    from helmsman_steps.runtime import OnnxScorer

    return OnnxScorer(data)


def test_the_v2_protocol_takes_an_int_column_as_an_integer_tensor(server: Server) -> None:
    url = server.health_url.replace("/readyz", "")
    inputs = [{"name": k, "shape": [1], "datatype": "INT64" if k == "sex" else "FP32",
               "data": [v]} for k, v in PATIENT.items()]  # fmt: skip
    body = httpx.post(f"{url}/v2/models/{NAME}/infer", json={"inputs": inputs}).json()
    predicted = httpx.post(f"{url}/predict", json={"instances": [PATIENT]}).json()["predictions"]
    assert body["outputs"][0]["data"] == predicted
    sex = next(i for i in inputs if i["name"] == "sex")
    sex["datatype"] = "FP32"  # a float tensor for an int column: refused, naming the fix
    refused = httpx.post(f"{url}/v2/models/{NAME}/infer", json={"inputs": inputs})
    assert refused.status_code == 400
    assert "input 'sex': datatype FP32 does not fit the int column; send INT64" in refused.text
