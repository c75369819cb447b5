"""The MLP's ONNX graph: its declared signature, and parity with the native model."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest

from helmsman_steps import contract, features, onnx_model
from helmsman_steps.model import NumpyModel
from helmsman_steps.onnx_model import ParityError


def mlp(seed: int = 0, hidden: tuple[int, ...] = (16, 8)) -> NumpyModel:
    """A random MLP over the churn features, initialised as training starts one (He-scaled),
    a little wider so that its scores span (0, 1)."""
    rng = np.random.default_rng(seed)
    widths = [len(features.input_names()), *hidden, 1]
    return NumpyModel(
        inputs=features.input_names(),
        mean=rng.normal(size=widths[0]).astype(np.float32),
        scale=rng.uniform(0.5, 2.0, size=widths[0]).astype(np.float32),
        weights=[rng.normal(0, 2 / np.sqrt(i), size=(o, i)).astype(np.float32)
                 for i, o in itertools.pairwise(widths)],
        biases=[rng.normal(size=o).astype(np.float32) for o in widths[1:]],
    )  # fmt: skip


def rows(n: int, seed: int = 1) -> np.ndarray:
    matrix = np.random.default_rng(seed).normal(0, 3, size=(n, len(features.input_names())))
    return matrix.astype(np.float32)  # what features.to_matrix hands the model


def test_the_graph_declares_its_input_and_output_signature() -> None:
    graph = onnx_model.from_mlp(mlp())
    (given,), (out,) = graph.graph.input, graph.graph.output
    assert given.name == "features"
    assert given.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in given.type.tensor_type.shape.dim] == [
        "batch", len(features.input_names())
    ]  # fmt: skip
    assert out.name == "score"
    assert [d.dim_param for d in out.type.tensor_type.shape.dim] == ["batch"]
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props[contract.ONNX_INPUTS_PROP]) == features.input_names()
    assert graph.opset_import[0].version == onnx_model.OPSET


@pytest.mark.parametrize("hidden", [(), (16,), (64, 32), (32, 16, 8)])
def test_onnx_runtime_reproduces_the_native_model(hidden: tuple[int, ...]) -> None:
    model, matrix = mlp(hidden=hidden), rows(2000)
    native = model.predict_matrix(matrix)
    diff = onnx_model.check_parity(onnx_model.from_mlp(model), native, matrix)
    assert diff <= onnx_model.PARITY_TOLERANCE
    assert float(np.std(native)) > 0.1  # the rows span the output, not one saturated value


def test_a_graph_that_does_not_reproduce_the_model_is_refused() -> None:
    model, matrix = mlp(), rows(500)
    other = NumpyModel(model.inputs, model.mean, model.scale * 1.01, model.weights, model.biases)
    with pytest.raises(ParityError, match=r"differs from the native model by up to .* on 500 rows"):
        onnx_model.check_parity(onnx_model.from_mlp(other), model.predict_matrix(matrix), matrix)
    with pytest.raises(ParityError, match="no rows"):
        onnx_model.check_parity(onnx_model.from_mlp(model), np.zeros(0), matrix[:0])


TASK_CLASSES = {"binary": (0, 1), "multiclass": ("a", "b", "c"), "regression": None}


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("trainer", ["sklearn", "lightgbm"])
def test_every_boosting_trainer_exports_a_graph_that_reproduces_it(trainer: str, task: str) -> None:
    """Each built-in trainer for each task: fitted on rows with missing values, exported, and
    scored by ONNX Runtime as the native model scores them (the check training makes)."""
    from dataclasses import replace

    from helmsman_steps.modelinfo import ModelInfo
    from helmsman_steps.train import sklearn_estimator

    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, size=(600, 5)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    signal = np.nan_to_num(x[:, 0] + 0.5 * x[:, 1] * x[:, 2])
    y = {"binary": (signal > 0).astype(np.float32),
         "multiclass": np.digitize(signal, [-1, 1]).astype(np.float32),
         "regression": (10 * signal + rng.normal(0, 1, 600)).astype(np.float32)}[task]  # fmt: skip
    params = {"n_estimators": 40, "max_depth": 3}
    info = replace(ModelInfo.churn(), task=task, trainer=trainer, classes=TASK_CLASSES[task],
                   trainer_params=params)  # fmt: skip
    estimator = sklearn_estimator(info, seed=0).fit(x, y)
    graph = onnx_model.from_sklearn(estimator, [f"x{i}" for i in range(5)], task)
    if task == "regression":
        native = estimator.predict(x)
    else:
        probabilities = estimator.predict_proba(x)
        native = probabilities if task == "multiclass" else probabilities[:, 1]
    assert onnx_model.check_parity(graph, native, x) <= onnx_model.PARITY_TOLERANCE
    (out,) = graph.graph.output
    shape = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert shape == (["batch", 3] if task == "multiclass" else ["batch"])
    assert type(estimator[-1]).__module__.split(".")[0] == trainer
