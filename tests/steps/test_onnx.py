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
