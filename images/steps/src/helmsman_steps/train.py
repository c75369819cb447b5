"""Train: a PyTorch network on a window of dataset partitions, registered in MLflow.

- Same code on CPU and GPU: CUDA is used when the pod has a GPU.
- Seeds are fixed and the batch order comes from a seeded generator, so a run is repeatable.
- A checkpoint (weights, optimizer, generator state, history) goes to the run's artifacts
  after every epoch; a retried pod finds its run by run key and resumes after the last
  checkpointed epoch instead of starting over, and ends with the same weights as an
  uninterrupted run.
- The finished network is logged as an MLflow PyTorch model with signature and input example,
  with the numpy export (helmsman_steps.model) beside it for serving, and registered as a new
  model version tagged with its lineage. A run that already registered its version is not
  trained again.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version as version_of
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from helmsman_steps import contract, fit, logs, monitor, onnx_model, registry
from helmsman_steps.custom import Fitted, TrainingData
from helmsman_steps.exitcodes import BadInputError
from helmsman_steps.model import FILENAME, NumpyModel
from helmsman_steps.modelinfo import ModelInfo
from helmsman_steps.store import DatasetStore, days_in

if TYPE_CHECKING:
    import onnx
    import pandas as pd
    import torch

log = logs.get(__name__)

EXPERIMENT = contract.TRAINING_EXPERIMENT
CHECKPOINT = "checkpoints/last.pt"
PARITY_ROWS = 4096  # held-out rows the ONNX graph is checked on before registration
# Rows are split by a hash of their id: bucket 0 is held out for evaluation, bucket 1
# validates each epoch, the rest train. The same id always lands in the same bucket.
HOLDOUT_BUCKET, VALIDATION_BUCKET, BUCKETS = 0, 1, 10
# Fault injection for resume tests and chaos drills: exit as a preempted pod would, right
# after checkpointing this epoch.
FAULT_ENV = "HELMSMAN_FAULT_EXIT_AFTER_EPOCH"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 1024
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    hidden: tuple[int, ...] = (64, 32)
    seed: int = 42
    window_days: int = 7
    amp: bool = True  # bf16 (or fp16) autocast on CUDA; CPU trains in float32 regardless
    compile: bool = False  # torch.compile the network


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    model_version: str
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from_epoch: int | None = None
    trained: bool = True


def buckets(ids: pd.Series) -> npt.NDArray[np.int64]:
    return np.fromiter((zlib.crc32(i.encode()) % BUCKETS for i in ids), np.int64, len(ids))


def training_window(start: dt.date, end: dt.date, window_days: int) -> list[dt.date]:
    """The days training reads: the interval itself, extended back to ``window_days`` days."""
    first = min(start, end - dt.timedelta(days=window_days))
    return days_in(first, end)


def build_network(n_inputs: int, hidden: tuple[int, ...]) -> torch.nn.Sequential:
    import torch

    layers: list[torch.nn.Module] = []
    width = n_inputs
    for size in hidden:
        layers += [torch.nn.Linear(width, size), torch.nn.ReLU()]
        width = size
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers)


def export(
    net: torch.nn.Sequential, mean: npt.NDArray[np.float32], scale: Any, inputs: list[str]
) -> NumpyModel:
    import torch

    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    return NumpyModel(
        inputs=inputs,
        mean=mean.astype(np.float32),
        scale=np.asarray(scale, dtype=np.float32),
        weights=[m.weight.detach().cpu().numpy().astype(np.float32) for m in linear],
        biases=[m.bias.detach().cpu().numpy().astype(np.float32) for m in linear],
    )


def _probability_model(net: torch.nn.Sequential, mean: Any, scale: Any) -> torch.nn.Sequential:
    """The logged model: raw inputs in, probability out (standardization folded into layer 1)."""
    import copy

    import torch

    model = copy.deepcopy(net).cpu()
    first = model[0]
    if not isinstance(first, torch.nn.Linear):
        raise TypeError(f"the network must start with a Linear layer, not {type(first).__name__}")
    with torch.no_grad():
        m = torch.as_tensor(mean, dtype=torch.float32)
        s = torch.as_tensor(scale, dtype=torch.float32)
        first.bias.sub_(first.weight @ (m / s))
        first.weight.div_(s)
    return torch.nn.Sequential(*model, torch.nn.Sigmoid())


def _checkpoint_state(run_id: str) -> dict[str, Any] | None:
    import mlflow
    import torch

    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CHECKPOINT)
    except Exception:  # no checkpoint yet: MLflow raises different errors per store
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


def run(
    store: DatasetStore,
    start: dt.date,
    end: dt.date,
    model_name: str,
    run_key: str,
    config: TrainConfig,
    lineage: registry.Lineage,
    experiment: str = EXPERIMENT,
    model_spec: str | None = None,
) -> TrainResult:
    """Train and register a version; ``model_spec`` (validated JSON) is stored with it and
    says which trainer runs (the MLP without one)."""
    info = ModelInfo.from_dict(json.loads(model_spec)) if model_spec else ModelInfo.churn()
    world = fit.World.from_env()
    days = training_window(start, end, config.window_days)
    # The boosting trainers run in one process on the CPU and need no torch.
    device = fit.device_for(world) if info.trainer in contract.GPU_TRAINERS else None
    with fit.process_group(world, device):
        if world.leader:
            return _lead(store, days, start, end, model_name, run_key, config, lineage,
                         experiment, model_spec, info, world, device)  # fmt: skip
        return _follow(store, days, model_name, config, info, world, device)


def _read(store: DatasetStore, days: list[dt.date], info: ModelInfo) -> _Split:
    frame = store.read_features(days)
    reports = [store.read_report(d) for d in days]
    x = info.featurizer.to_matrix({c: frame[c].to_numpy() for c in frame.columns})
    y = info.target(frame[info.label].to_numpy())
    # The rows the reference profile describes: a seeded sample, the same on every try.
    rng = np.random.default_rng(0)
    profiled = np.sort(rng.choice(len(frame), min(len(frame), monitor.PROFILE_ROWS), replace=False))
    raw = frame.iloc[profiled][list(info.raw_columns)].reset_index(drop=True)
    return _Split(x, y, buckets(frame[info.id_column]), days, registry.dataset_hash(reports),
                  profiled, raw)  # fmt: skip


def _log_reference_profile(split: _Split, info: ModelInfo, graph: onnx.ModelProto) -> None:
    """What the monitor judges live traffic against: the training rows' raw columns and the
    registered graph's predictions on them (``monitor.reference_profile``)."""
    import mlflow

    scores = onnx_model.predict(graph, split.x[split.profiled])
    if info.task != "multiclass":
        scores = scores.reshape(len(scores), -1)[:, -1]
    profile = monitor.reference_profile(split.raw, scores, info)
    mlflow.log_dict(profile, contract.REFERENCE_PROFILE_ARTIFACT)


def _lead(
    store: DatasetStore, days: list[dt.date], start: dt.date, end: dt.date, model_name: str,
    run_key: str, config: TrainConfig, lineage: registry.Lineage, experiment: str,
    model_spec: str | None, info: ModelInfo, world: fit.World, device: torch.device | None,
) -> TrainResult:  # fmt: skip
    """Rank 0 (or the only process): the MLflow run, checkpoints and the registered version."""
    import mlflow

    lineage = replace(lineage, interval_start=str(start), interval_end=str(end))
    with registry.get_or_start_run(experiment, run_key, f"train {start}", lineage.tags()) as run:
        run_id = run.info.run_id
        done = run.data.tags.get(contract.MODEL_VERSION_TAG)
        if done:
            log.info("already trained; reusing its model version", run_id=run_id, version=done)
            fit.broadcast(world, {"done": True})
            return TrainResult(run_id, model_name, done, trained=False)
        rows = _read(store, days, info)
        if info.trainer != "mlp":
            fit.broadcast(world, {"done": False})
            version, final = _train_fitted(rows, info, config, model_name, lineage, run_key,
                                           model_spec)  # fmt: skip
            mlflow.set_tags({contract.MODEL_VERSION_TAG: version,
                             contract.MODEL_NAME_TAG: model_name})  # fmt: skip
            return TrainResult(run_id, model_name, version, final)

        if device is None:  # the MLP is a torch trainer: run() chose its device
            raise RuntimeError("the MLP trainer needs a torch device")
        state = _checkpoint_state(run_id)
        fit.broadcast(world, {"done": False, "state": state})
        if state is not None:
            log.info("resuming from checkpoint", run_id=run_id, after_epoch=state["epoch"])
        else:
            mlflow.log_params({
                **asdict(config), "device": device.type, "processes": world.size,
                "days": f"{days[0]}..{days[-1]}",
                "train_rows": int(rows.train_rows.sum()),
                "validation_rows": int(rows.val_rows.sum()),
                "dataset_hash": rows.dataset_hash,
            })  # fmt: skip

        def after_epoch(epoch: int, metrics: dict[str, float], checkpoint: dict[str, Any]) -> None:
            mlflow.log_metrics(metrics, step=epoch)
            _save_checkpoint(checkpoint)
            log.info("epoch done", epoch=epoch, **{k: round(v, 5) for k, v in metrics.items()})
            if os.environ.get(FAULT_ENV) == str(epoch):
                log.warning("fault injection: exiting after checkpoint", epoch=epoch)
                raise SystemExit(1)

        trained, mean, scale = _fit_mlp(rows, config, world, device, state, after_epoch)
        if state is None:
            mlflow.log_params({"precision": trained.precision})
        exported = export(trained.net, mean, scale, info.featurizer.input_names())
        # The ONNX graph must reproduce the native model on rows it never trained on.
        graph = onnx_model.from_mlp(exported)
        val_rows = rows.val_rows
        parity_rows = rows.x[val_rows][:PARITY_ROWS]
        parity = onnx_model.check_parity(graph, exported.predict_matrix(parity_rows), parity_rows)
        mlflow.log_metrics({"onnx_max_abs_diff": parity, "onnx_parity_rows": len(parity_rows)})
        _log_reference_profile(rows, info, graph)
        version = _log_and_register(
            trained.net, exported, graph, mean, scale, rows.x[:5], model_name, lineage, run_key,
            rows.dataset_hash, model_spec,
        )  # fmt: skip
        mlflow.set_tags({contract.MODEL_VERSION_TAG: version, contract.MODEL_NAME_TAG: model_name})
        final = trained.history[-1] if trained.history else {}
        return TrainResult(run_id, model_name, version, final, trained.resumed_from_epoch)


def _follow(
    store: DatasetStore, days: list[dt.date], model_name: str, config: TrainConfig,
    info: ModelInfo, world: fit.World, device: torch.device | None,
) -> TrainResult:  # fmt: skip
    """Ranks above 0: train their share from rank 0's checkpoint; rank 0 registers. A custom
    trainer's function runs on every rank (in the process group, for its own collectives)."""
    plan = fit.broadcast(world, None)
    if plan["done"]:
        return TrainResult("", model_name, "", trained=False)
    rows = _read(store, days, info)
    if info.trainer == "mlp" and device is not None:
        _fit_mlp(rows, config, world, device, plan["state"], None)
    elif info.trainer == "custom":
        _CustomTrainer(info, config.seed).function(_training_data(rows, info, config))
    return TrainResult("", model_name, "", trained=True)


def _fit_mlp(
    rows: _Split, config: TrainConfig, world: fit.World, device: torch.device,
    state: dict[str, Any] | None,
    after_epoch: Callable[[int, dict[str, float], dict[str, Any]], None] | None,
) -> tuple[fit.Trained, npt.NDArray[np.float32], Any]:  # fmt: skip
    import torch

    train_rows, val_rows = rows.train_rows, rows.val_rows
    mean = rows.x[train_rows].mean(axis=0)
    scale = rows.x[train_rows].std(axis=0) + 1e-6
    torch.manual_seed(config.seed)
    net = build_network(rows.x.shape[1], config.hidden)
    options = fit.LoopOptions(config.batch_size, config.learning_rate, config.weight_decay,
                              config.amp, config.compile)  # fmt: skip
    trained = fit.train(
        net,
        ((rows.x[train_rows] - mean) / scale, rows.y[train_rows]),
        ((rows.x[val_rows] - mean) / scale, rows.y[val_rows]),
        config.epochs, config.seed, options, world, device, state, after_epoch,
    )  # fmt: skip
    return trained, mean, scale


def _save_checkpoint(state: dict[str, Any]) -> None:
    import mlflow
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(CHECKPOINT).name
        torch.save(state, path)
        mlflow.log_artifact(str(path), artifact_path=str(Path(CHECKPOINT).parent))


def _log_and_register(
    net: torch.nn.Sequential,
    exported: NumpyModel,
    graph: onnx.ModelProto,
    mean: Any,
    scale: Any,
    example: npt.NDArray[np.float32],
    model_name: str,
    lineage: registry.Lineage,
    run_key: str,
    dataset_hash: str,
    model_spec: str | None,
) -> str:
    import mlflow
    from mlflow.models import infer_signature

    model = _probability_model(net, mean, scale)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / FILENAME
        exported.save(npz)
        extra = [str(npz), *_extra_files(Path(tmp), graph, exported.inputs, model_spec)]
        import torch

        with torch.no_grad():
            output = model(torch.as_tensor(example)).numpy()
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example, output),
            input_example=example,
            extra_files=extra,
            # Named rather than inferred: inference imports the model in a subprocess (~10 s),
            # and would drop the local "+cpu" label of a CPU build anyway.
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"numpy=={np.__version__}",
            ],
            registered_model_name=model_name,
            await_registration_for=60,
        )
        _log_onnx_flavor(graph, example, exported.predict_matrix(example))
    version = str(info.registered_model_version)
    _tag_version(model_name, version, lineage, dataset_hash, run_key)
    return version


def _extra_files(
    folder: Path, graph: onnx.ModelProto, inputs: list[str], model_spec: str | None
) -> list[str]:
    """What every version carries beside its native model: the ONNX graph that serves it, its
    input names, and the spec it was trained with."""
    files = {onnx_model.FILENAME: graph.SerializeToString(), "inputs.json": json.dumps(inputs)}
    if model_spec:
        files[contract.MODEL_SPEC_FILE] = model_spec
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return [str(folder / name) for name in files]


def _log_onnx_flavor(
    graph: onnx.ModelProto, example: npt.NDArray[np.float32], output: npt.NDArray[Any]
) -> None:
    """The ONNX flavor beside the native model: what any ONNX runtime (and MLflow's own
    tooling) loads; the registered version carries the same graph as model.onnx."""
    import mlflow
    from mlflow.models import infer_signature

    mlflow.onnx.log_model(
        graph,
        name="onnx",
        signature=infer_signature(example, np.asarray(output, dtype=np.float32)),
        input_example=example,
        pip_requirements=[f"onnxruntime=={version_of('onnxruntime')}"],
    )


def _tag_version(
    model_name: str, version: str, lineage: registry.Lineage, dataset_hash: str, run_key: str
) -> None:
    """Lineage on the registered version: the interval, the DAG run, the data and the run key."""
    client = registry.client()
    for key, value in {**lineage.tags(), contract.DATASET_HASH_TAG: dataset_hash,
                       contract.RUN_KEY_TAG: run_key}.items():  # fmt: skip
        client.set_model_version_tag(model_name, version, key, value)
    log.info("registered model version", model=model_name, version=version)


@dataclass(frozen=True)
class _Split:
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]
    bucket: npt.NDArray[np.int64]
    days: list[dt.date]
    dataset_hash: str
    profiled: npt.NDArray[np.int64]  # the rows of the reference profile
    raw: pd.DataFrame  # their raw columns

    @property
    def train_rows(self) -> npt.NDArray[np.bool_]:
        return self.bucket > VALIDATION_BUCKET

    @property
    def val_rows(self) -> npt.NDArray[np.bool_]:
        return np.equal(self.bucket, VALIDATION_BUCKET)


def sklearn_estimator(info: ModelInfo, seed: int) -> Any:
    """Gradient boosting for the task, with the spec's ``trainer.params`` (its keyword
    arguments; ``random_state`` is the run's seed), as one pipeline that ONNX export covers
    whole: scikit-learn's, after a median imputer for the columns declared nullable (it takes
    no missing values; with none missing the imputer passes rows through), or LightGBM's
    (``trainer.kind: lightgbm``), which routes missing values itself."""
    from sklearn.pipeline import Pipeline

    # The run's seed (the form's default is the spec's random_state or seed) wins.
    params = {**{k: v for k, v in info.trainer_params.items() if k != "seed"}, "random_state": seed}
    kind: Any
    if info.trainer == "lightgbm":
        from lightgbm import LGBMClassifier, LGBMRegressor

        kind = LGBMRegressor if info.task == "regression" else LGBMClassifier
        params = {"verbose": -1, **params}  # its per-iteration chatter is not a log
    else:
        from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

        regression = info.task == "regression"
        kind = GradientBoostingRegressor if regression else GradientBoostingClassifier
    try:
        model = kind(**params)
    except TypeError as exc:
        raise BadInputError(f"trainer.params: {exc} (the {kind.__name__} parameters)") from None
    if info.trainer == "lightgbm":
        return Pipeline([("model", model)])
    from sklearn.impute import SimpleImputer

    imputer = SimpleImputer(strategy="median", keep_empty_features=True)
    return Pipeline([("impute", imputer), ("model", model)])


def _all_classes_seen(info: ModelInfo, y: npt.NDArray[np.float32]) -> None:
    """A classifier learns the classes its rows show; one that never saw a declared class
    would answer fewer probabilities than the spec's ``classes``."""
    if info.task == "regression" or info.classes is None:
        return
    seen = {int(v) for v in np.unique(y)}
    missing = [c for i, c in enumerate(info.classes) if i not in seen]
    if missing:
        raise BadInputError(
            f"the training rows hold no example of the classes {missing} of "
            f"schema.label.classes: widen the training window (window_days), or drop the class"
        )


class _SklearnTrainer:
    """Gradient boosting (sklearn_estimator), exported by skl2onnx; the native model is logged
    with MLflow's sklearn flavor, the graph beside it."""

    def __init__(self, info: ModelInfo, seed: int) -> None:
        self.info, self.estimator = info, sklearn_estimator(info, seed)
        self.name = type(self.estimator[-1]).__name__
        self.params = self.estimator[-1].get_params()
        self.metrics: dict[str, float] = {}

    def fit(self, data: TrainingData) -> onnx.ModelProto:
        from sklearn.utils._param_validation import InvalidParameterError

        _all_classes_seen(self.info, data.y_train)
        try:
            self.estimator.fit(data.x_train, data.y_train)
        except (InvalidParameterError, ValueError) as exc:
            # Both mean a parameter the estimator refuses (LightGBM raises ValueError).
            raise BadInputError(f"trainer.params: {exc}") from None
        return onnx_model.from_sklearn(self.estimator, data.inputs, self.info.task)

    def predict(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        if self.info.task == "regression":
            return np.asarray(self.estimator.predict(x), dtype=np.float64)
        probabilities = np.asarray(self.estimator.predict_proba(x), dtype=np.float64)
        return probabilities if self.info.task == "multiclass" else probabilities[:, 1]

    def log(self, graph: onnx.ModelProto, example: Any, extra: list[str], name: str) -> Any:
        import mlflow
        from mlflow.models import infer_signature

        output = self.predict(example)
        lightgbm = (
            [f"lightgbm=={version_of('lightgbm')}"] if self.info.trainer == "lightgbm" else []
        )
        logged = mlflow.sklearn.log_model(
            self.estimator,
            name="model",
            signature=infer_signature(example, output),
            input_example=example,
            extra_files=extra,
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            pip_requirements=[
                f"scikit-learn=={version_of('scikit-learn')}",
                f"numpy=={np.__version__}",
                *lightgbm,
            ],
            registered_model_name=name,
            await_registration_for=60,
        )
        _log_onnx_flavor(graph, example, output)
        return logged


class _CustomTrainer:
    """The model's own function (``trainer.entrypoint``; helmsman_steps.custom); its graph is
    the registered model (MLflow's ONNX flavor)."""

    def __init__(self, info: ModelInfo, seed: int) -> None:
        from helmsman_steps import usercode

        entry = info.trainer_entrypoint or ""
        self.info, self.seed = info, seed
        self.function = usercode.load(info.name, entry, "trainer.entrypoint")
        self.name, self.params = entry, dict(info.trainer_params)
        self.metrics: dict[str, float] = {}
        self._predict: Any = None

    def fit(self, data: TrainingData) -> onnx.ModelProto:
        import onnx

        fitted = self.function(data)
        if not isinstance(fitted, Fitted):
            raise BadInputError(
                f"trainer.entrypoint {self.name}: returned {type(fitted).__name__}, not "
                "helmsman_steps.custom.Fitted(onnx=..., predict=...)"
            )
        graph = fitted.onnx
        try:
            if isinstance(graph, bytes | bytearray):
                graph = onnx.load_model_from_string(bytes(graph))
            onnx.checker.check_model(graph, full_check=True)
        except Exception as exc:  # onnx raises several kinds; all mean the same to the user
            raise BadInputError(
                f"trainer.entrypoint {self.name}: the returned graph is not a valid ONNX model: "
                f"{str(exc).strip()[:500]}"
            ) from None
        inputs = [i.name for i in graph.graph.input if i.name not in
                  {t.name for t in graph.graph.initializer}]  # fmt: skip
        outputs = [o.name for o in graph.graph.output]
        if inputs != [onnx_model.INPUT] or onnx_model.OUTPUT not in outputs:
            raise BadInputError(
                f"trainer.entrypoint {self.name}: the ONNX graph must take "
                f"{onnx_model.INPUT!r} (float32 [batch, {len(data.inputs)}]) and return "
                f"{onnx_model.OUTPUT!r} (float32 [batch], or [batch, classes] for a multiclass "
                f"model); it takes {inputs}, returns {outputs}"
            )
        self._predict, self.metrics = fitted.predict, dict(fitted.metrics)
        # Record the input columns in the graph, as the built-in exports do (serving checks).
        onnx.helper.set_model_props(graph, {
            **{p.key: p.value for p in graph.metadata_props},
            contract.ONNX_INPUTS_PROP: json.dumps(data.inputs),
        })  # fmt: skip
        return graph  # type: ignore[no-any-return]

    def predict(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        scores = np.asarray(self._predict(x), dtype=np.float64)
        return scores.reshape(len(x), -1) if self.info.task == "multiclass" else scores.reshape(-1)

    def log(self, graph: onnx.ModelProto, example: Any, extra: list[str], name: str) -> Any:
        import mlflow
        from mlflow.models import infer_signature

        return mlflow.onnx.log_model(
            graph,
            name="model",
            signature=infer_signature(example, self.predict(example).astype(np.float32)),
            input_example=example,
            extra_files=extra,
            pip_requirements=[f"onnxruntime=={version_of('onnxruntime')}"],
            registered_model_name=name,
            await_registration_for=60,
        )


def _training_data(split: _Split, info: ModelInfo, config: TrainConfig) -> TrainingData:
    train_rows, val_rows = split.train_rows, split.val_rows
    return TrainingData(split.x[train_rows], split.y[train_rows], split.x[val_rows],
                        split.y[val_rows], info.featurizer.input_names(), info.task,
                        info.trainer_params, config.seed)  # fmt: skip


def _train_fitted(
    split: _Split,
    info: ModelInfo,
    config: TrainConfig,
    model_name: str,
    lineage: registry.Lineage,
    run_key: str,
    model_spec: str | None,
) -> tuple[str, dict[str, float]]:
    """Fit a trainer that is not the MLP (sklearn, custom) on the training buckets, score the
    validation bucket, check its ONNX graph against it and register the version."""
    import mlflow

    train_rows, val_rows = split.train_rows, split.val_rows
    if train_rows.sum() < 2 or val_rows.sum() < 1:
        raise BadInputError(
            f"{len(split.x)} rows in {split.days[0]}..{split.days[-1]} leave too few to train "
            "and validate on; widen the training window"
        )
    kind = _CustomTrainer if info.trainer == "custom" else _SklearnTrainer
    trainer = kind(info, config.seed)
    mlflow.log_params({
        **{f"trainer.{k}": v for k, v in trainer.params.items()},
        "trainer": trainer.name, "days": f"{split.days[0]}..{split.days[-1]}",
        "train_rows": int(train_rows.sum()), "validation_rows": int(val_rows.sum()),
        "dataset_hash": split.dataset_hash, "seed": config.seed,
    })  # fmt: skip
    x_val, y_val = split.x[val_rows], split.y[val_rows]
    inputs = info.featurizer.input_names()
    graph = trainer.fit(_training_data(split, info, config))
    predicted = trainer.predict(x_val)
    if info.task == "regression":
        final = {"val_rmse": float(np.sqrt(np.mean((predicted - y_val) ** 2))),
                 "val_mae": float(np.mean(np.abs(predicted - y_val)))}  # fmt: skip
    else:
        truth = y_val if info.task == "multiclass" else y_val >= 0.5
        final = {"val_accuracy": float(np.mean(info.decisions(predicted, 0.5) == truth))}
    final |= trainer.metrics
    mlflow.log_metrics(final)
    log.info("fitted", trainer=trainer.name, **{k: round(v, 5) for k, v in final.items()})

    parity_rows = x_val[:PARITY_ROWS]
    parity = onnx_model.check_parity(graph, trainer.predict(parity_rows), parity_rows)
    mlflow.log_metrics({"onnx_max_abs_diff": parity, "onnx_parity_rows": len(parity_rows)})
    _log_reference_profile(split, info, graph)
    with tempfile.TemporaryDirectory() as tmp:
        extra = _extra_files(Path(tmp), graph, inputs, model_spec)
        logged = trainer.log(graph, split.x[:5], extra, model_name)
    version = str(logged.registered_model_version)
    _tag_version(model_name, version, lineage, split.dataset_hash, run_key)
    return version, final
