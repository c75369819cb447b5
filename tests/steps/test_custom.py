"""A model with its own code: a feature function and a custom trainer in its folder
(``features: features.py:derive``, ``trainer: {kind: custom, entrypoint: train.py:train}``),
through the real steps; and what a custom trainer gets wrong, said with the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helmsman_steps import spec
from helmsman_steps.exitcodes import BadInputError
from helmsman_steps.modelinfo import ModelInfo
from tests.model_checks import check_dags, check_pipeline, models_dir
from tools import new_model

FEATURES = '''
import numpy as np

def derive(columns):
    """x1 times x2: an interaction a linear model cannot make itself."""
    x1 = np.asarray(columns["x1"], dtype=float)
    x2 = np.nan_to_num(np.asarray(columns["x2"], dtype=float))
    return {"x1_x2": x1 * x2}
'''

# Ridge regression in numpy, exported as MatMul + Add: the whole contract of a custom trainer.
TRAIN = """
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from helmsman_steps.custom import Fitted

def train(data):
    x = np.nan_to_num(data.x_train).astype(np.float64)
    x1 = np.column_stack([x, np.ones(len(x))])
    alpha = float(data.params.get("alpha", 1.0))
    w = np.linalg.solve(x1.T @ x1 + alpha * np.eye(x1.shape[1]), x1.T @ data.y_train)
    weights, bias = w[:-1].astype(np.float32), np.float32(w[-1])

    def predict(rows):
        return np.nan_to_num(rows) @ weights + bias

    nodes = [
        helper.make_node("IsNaN", ["features"], ["missing"]),
        helper.make_node("Where", ["missing", "zero", "features"], ["clean"]),
        helper.make_node("MatMul", ["clean", "w"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "ridge",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", len(weights)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([bias]), "b"),
         numpy_helper.from_array(np.array(0, dtype=np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return Fitted(onnx=model, predict=predict, metrics={"alpha": alpha})
"""


def custom_model(root: Path, name: str = "ridge", train: str = TRAIN) -> Path:
    new_model.scaffold(name, "regression", root)
    folder = root / "models" / name
    data = yaml.safe_load((folder / "model.yaml").read_text())
    data["features"] = "features.py:derive"
    data["trainer"] = {"kind": "custom", "entrypoint": "train.py:train", "params": {"alpha": 0.5}}
    (folder / "model.yaml").write_text(yaml.safe_dump(data))
    (folder / "features.py").write_text(FEATURES)
    (folder / "train.py").write_text(train)
    return folder


def test_a_custom_trainer_and_feature_function_from_the_folder_train_evaluate_and_serve(
    tmp_path: Path,
) -> None:
    folder = custom_model(tmp_path / "repo")
    check_dags(folder)
    with models_dir(folder.parent):
        info = ModelInfo.from_dict(json.loads(spec.to_json(spec.load(folder))))
    assert "x1_x2" in info.featurizer.input_names()  # the folder's feature function ran
    decision = check_pipeline(folder, tmp_path)
    assert decision["metric"] == "rmse"
    assert decision["decision"] == "promote", decision["reasons"]


def test_a_custom_graph_without_helmsmans_signature_is_bad_input_naming_the_field(
    tmp_path: Path,
) -> None:
    renamed = TRAIN.replace('"score", TensorProto', '"prediction", TensorProto').replace(
        '["z", "b"], ["score"]', '["z", "b"], ["prediction"]'
    )
    folder = custom_model(tmp_path / "repo", "renamed", renamed)
    with pytest.raises(AssertionError, match=r"trainer.entrypoint train.py:train: the ONNX graph"
                       r" must take 'features' .* returns \['prediction'\]"):  # fmt: skip
        check_pipeline(folder, tmp_path / "renamed")
    # A graph whose declared output no node makes: invalid, and said so (exit 2, no retry).
    broken = TRAIN.replace('["z", "b"], ["score"]', '["z", "b"], ["other"]')
    folder = custom_model(tmp_path / "repo", "broken", broken)
    with pytest.raises(AssertionError, match="the returned graph is not a valid ONNX model"):
        check_pipeline(folder, tmp_path / "broken")


def test_a_missing_models_dir_or_function_says_what_to_set() -> None:
    from helmsman_steps import usercode

    with models_dir(Path("/nonexistent")), pytest.raises(BadInputError, match="no file"):
        usercode.load("ridge", "train.py:train", "trainer.entrypoint")
    with pytest.raises(BadInputError, match="has no function 'nope'"):
        usercode.load("ridge", "helmsman_steps.features:nope", "features")
