"""The ONNX form of a trained model: one graph with a declared input signature, checked
against the native model before it is registered.

Every trainer exports ONNX so that one runtime (ONNX Runtime) can serve and evaluate any model
a team brings. The signature: ``features``, float32 ``[batch, n_inputs]`` (the feature
function's matrix, columns named in the model's metadata), in; ``score``, float32 ``[batch]``,
out (a binary model's probability of the positive class, a regression model's value), or
float32 ``[batch, classes]`` for a multiclass model (a probability per class, in the order of
the spec's ``classes``).

The MLP needs no exporter: its numpy export (mean, scale, weights, biases) maps one to one
onto ONNX operators, so the graph is written directly, deterministic and small.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from helmsman_steps import contract

if TYPE_CHECKING:
    import onnx

    from helmsman_steps.model import NumpyModel

INPUT = "features"
OUTPUT = "score"
FILENAME = "model.onnx"
OPSET = 17  # ONNX Runtime 1.14 and later run it; every operator used here is in it
# The largest |ONNX - native| a prediction may differ by, relative to max(1, |native|): a
# probability's absolute difference, a regression value's relative one (float32 kernels).
PARITY_TOLERANCE = 1e-5
ML_OPSET = 3  # ai.onnx.ml: the tree ensembles scikit-learn's converter writes


class ParityError(RuntimeError):
    """The ONNX graph does not reproduce the native model: it must not be registered."""


def from_mlp(model: NumpyModel) -> onnx.ModelProto:
    """(x - mean) / scale, then Gemm + Relu per hidden layer, Gemm + Sigmoid, flattened."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: npt.NDArray[np.float32]) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)

    initializers = [const("mean", model.mean), const("scale", model.scale)]
    nodes = [
        helper.make_node("Sub", [INPUT, "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "scale"], ["h0"]),
    ]
    last = len(model.weights) - 1
    for i, (weight, bias) in enumerate(zip(model.weights, model.biases, strict=True)):
        initializers += [const(f"w{i}", weight), const(f"b{i}", bias)]
        nodes.append(helper.make_node("Gemm", [f"h{i}", f"w{i}", f"b{i}"], [f"z{i}"], transB=1))
        if i < last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("Sigmoid", [f"z{last}"], ["probability"]))
    initializers.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
    nodes.append(helper.make_node("Reshape", ["probability", "flat"], [OUTPUT]))
    graph = helper.make_graph(
        nodes,
        "helmsman-mlp",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", len(model.inputs)])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch"])],
        initializers,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="helmsman"
    )
    proto.ir_version = 8  # what ONNX Runtime 1.14+ reads; opset 17 needs no newer
    helper.set_model_props(proto, {contract.ONNX_INPUTS_PROP: json.dumps(model.inputs)})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _register_lightgbm() -> None:
    """Teach skl2onnx LightGBM's estimators: onnxmltools owns their converter (the recipe of
    skl2onnx's own documentation, "Convert a pipeline with a LightGBM model")."""
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import (  # type: ignore[import-untyped]
        convert_lightgbm,
    )
    from skl2onnx import update_registered_converter  # type: ignore[import-untyped]
    from skl2onnx.common.shape_calculator import (  # type: ignore[import-untyped]
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    update_registered_converter(
        LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
        convert_lightgbm, options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )  # fmt: skip
    update_registered_converter(
        LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
        convert_lightgbm, options={"split": None},
    )  # fmt: skip


def from_sklearn(estimator: Any, inputs: list[str], task: str) -> onnx.ModelProto:
    """A fitted scikit-learn estimator (or pipeline; LightGBM's estimators too) as ONNX
    (skl2onnx), with Helmsman's signature: the regressor's ``[batch, 1]`` output flattened,
    the binary classifier's probability of the positive class, or the multiclass
    classifier's probabilities, as ``score``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType  # type: ignore[import-untyped]

    classifier = task != "regression"
    final = estimator[-1] if hasattr(estimator, "steps") else estimator  # a Pipeline's model
    if type(final).__module__.startswith("lightgbm"):
        _register_lightgbm()
    proto = to_onnx(
        estimator,
        initial_types=[(INPUT, FloatTensorType([None, len(inputs)]))],
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        options={id(final): {"zipmap": False}} if classifier else None,
    )
    graph = proto.graph
    outputs = {o.name: o for o in graph.output}
    shape: list[str | int] = ["batch"]
    if task == "multiclass":
        node = helper.make_node("Identity", ["probabilities"], [OUTPUT])
        shape.append(len(final.classes_))
    elif classifier:
        index = numpy_helper.from_array(np.array(1, dtype=np.int64), "positive_class")
        graph.initializer.append(index)
        node = helper.make_node("Gather", ["probabilities", "positive_class"], [OUTPUT], axis=1)
    else:
        (name,) = outputs
        flat = numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat")
        graph.initializer.append(flat)
        node = helper.make_node("Reshape", [name, "flat"], [OUTPUT])
    graph.node.append(node)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, shape))
    proto.producer_name = "helmsman"
    helper.set_model_props(proto, {contract.ONNX_INPUTS_PROP: json.dumps(inputs)})
    onnx.checker.check_model(proto, full_check=True)
    converted: onnx.ModelProto = proto
    return converted


def predict(
    proto: onnx.ModelProto | bytes, matrix: npt.NDArray[np.floating]
) -> npt.NDArray[np.float32]:
    """Run the graph on a feature matrix with ONNX Runtime (CPU)."""
    import onnxruntime  # type: ignore[import-untyped]  # ships no type hints

    data = proto if isinstance(proto, bytes) else proto.SerializeToString()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (scores,) = session.run([OUTPUT], {INPUT: np.ascontiguousarray(matrix, dtype=np.float32)})
    return np.asarray(scores, dtype=np.float32)


def check_parity(
    proto: onnx.ModelProto, native: npt.NDArray[np.floating], matrix: npt.NDArray[np.floating]
) -> float:
    """The largest |ONNX - native| / max(1, |native|) over ``matrix``; ParityError beyond the
    tolerance."""
    if len(matrix) == 0:
        raise ParityError("no rows to check the ONNX graph on")
    expected = np.asarray(native, dtype=np.float64)
    error = np.abs(predict(proto, matrix) - expected) / np.maximum(1.0, np.abs(expected))
    diff = float(np.max(error))
    if not diff <= PARITY_TOLERANCE:  # also catches NaN
        raise ParityError(
            f"the ONNX graph differs from the native model by up to {diff:.2e} on "
            f"{len(matrix)} rows (tolerance {PARITY_TOLERANCE:.0e}, relative to max(1, |value|));"
            " not registering it"
        )
    return diff
