"""``helmsman-step``: every pipeline stage as one typed command-line tool.

Exit codes: 0 success; 2 bad input (options, data) -- fix the input, a retry will not help;
1 internal failure (a bug, MLflow unreachable) -- worth a retry. Logs are JSON lines on
stderr; the command's result is one JSON object on stdout. Stage modules are imported inside
each command, so the serving image needs none of the training dependencies.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from dataclasses import asdict, is_dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from helmsman_steps import contract, exitcodes, logs
from helmsman_steps.exitcodes import BadInputError, ExitCode, Skipped

if TYPE_CHECKING:
    from helmsman_steps.spec import ModelSpec
    from helmsman_steps.store import DatasetStore

app = typer.Typer(
    name="helmsman-step",
    help="Helmsman pipeline stages: etl, train, evaluate, serve, monitor.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Dates as Airflow renders them: "2026-11-01" ({{ ds }}) or ISO 8601 with an offset
# ({{ data_interval_start }}).
_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]
Start = Annotated[
    dt.datetime,
    typer.Option(formats=_DATE_FORMATS, help="Data interval start (inclusive), YYYY-MM-DD."),
]
End = Annotated[
    dt.datetime,
    typer.Option(formats=_DATE_FORMATS, help="Data interval end (exclusive), YYYY-MM-DD."),
]
DatasetUri = Annotated[
    str,
    typer.Option(
        envvar="HELMSMAN_DATASET_URI",
        help="Root of the dataset store: a local path or fsspec URL (s3://bucket/datasets).",
    ),
]
ModelName = Annotated[
    str, typer.Option(envvar="HELMSMAN_MODEL_NAME", help="Registered model name in MLflow.")
]
RunKey = Annotated[
    str,
    typer.Option(
        envvar="HELMSMAN_RUN_KEY",
        help="Identifies this pipeline run (the DAG passes dag_id/run_id); a retry with the "
        "same key resumes or reuses the earlier attempt's MLflow run.",
    ),
]


ModelSpecJson = Annotated[
    str,
    typer.Option(
        envvar=contract.MODEL_SPEC_ENV,
        help="The model's validated spec as JSON (the DAG passes it to every pod): ETL "
        "validates raw rows against its schema; training stores it with the version, so "
        "that serving and rollbacks use the schema it was trained on.",
    ),
]


def _spec(text: str) -> ModelSpec | None:
    """The spec the DAG passed, validated again (a hand-edited variable is bad input)."""
    if not text:
        return None
    from helmsman_steps import spec

    try:
        return spec.from_json(text)
    except spec.ModelSpecError as exc:
        raise BadInputError(str(exc)) from None


def _store(dataset_uri: str, declared: ModelSpec | None) -> DatasetStore:
    """The model's dataset: ``<root>/<model>`` for a model with a spec (models share the root),
    the root itself for a step run without one."""
    from helmsman_steps.store import DatasetStore

    if declared is None:
        return DatasetStore(dataset_uri)
    return DatasetStore(f"{dataset_uri.rstrip('/')}/{declared.name}")


def _source_uri(explicit: str, declared: ModelSpec | None) -> str:
    """Where the raw records come from: ``--source-uri`` if given; else the cluster's setting
    for this model (``HELMSMAN_SOURCE_URI_<NAME>`` in the settings ConfigMap: a dev cluster
    reads local files where production reads the bucket); else ``HELMSMAN_SOURCE_URI`` when
    the settings name this model (``HELMSMAN_MODEL_NAME``: the one-model settings of earlier
    releases keep their meaning); else the spec's ``source``. Without a spec:
    ``HELMSMAN_SOURCE_URI``, else the synthetic churn feed."""
    if explicit:
        return explicit
    legacy = os.environ.get("HELMSMAN_SOURCE_URI")
    if declared is None:
        return legacy or "synthetic://churn"
    override = os.environ.get(f"HELMSMAN_SOURCE_URI_{declared.name.upper().replace('-', '_')}")
    if override:
        return override
    if legacy and os.environ.get("HELMSMAN_MODEL_NAME") == declared.name:
        return legacy
    return declared.source


def _canonical(declared: ModelSpec | None) -> str | None:
    from helmsman_steps import spec

    return spec.to_json(declared) if declared is not None else None


def _emit(result: Any) -> None:
    payload = asdict(result) if is_dataclass(result) and not isinstance(result, type) else result
    sys.stdout.write(json.dumps(payload, default=str) + "\n")


@app.callback()
def _setup(
    log_level: Annotated[
        str, typer.Option(envvar="HELMSMAN_LOG_LEVEL", help="Log level.")
    ] = "INFO",
) -> None:
    logs.configure(log_level.upper())
    # stdout carries the command's one JSON result; MLflow would print "View run" links there.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


@app.command()
def etl(
    start: Start,
    end: End,
    dataset_uri: DatasetUri,
    source_uri: Annotated[
        str,
        typer.Option(
            help="Raw records: synthetic://churn?rows_per_day=N&seed=S (&shift_from=YYYY-MM-DD: "
            "a shift from that day on), or a path/URL prefix "
            "holding YYYY-MM-DD.parquet|csv files. Default: HELMSMAN_SOURCE_URI_<MODEL>, then "
            "the spec's source, then HELMSMAN_SOURCE_URI, then synthetic://churn.",
        ),
    ] = "",
    max_bad_share: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fail if a day's share of invalid rows exceeds this."),
    ] = 0.05,
    run_key: RunKey = "",
    model_spec: ModelSpecJson = "",
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment for ETL runs.")
    ] = contract.ETL_EXPERIMENT,
) -> None:
    """Validate and featurize the raw records of [start, end) into dataset partitions."""
    import mlflow

    from helmsman_steps import etl as stage
    from helmsman_steps import registry, sources
    from helmsman_steps.modelinfo import ModelInfo

    declared = _spec(model_spec)
    source_uri = _source_uri(source_uri, declared)
    source = sources.from_uri(source_uri)
    featurizer = ModelInfo.of(declared).featurizer if declared else None
    reports = stage.run(
        source, _store(dataset_uri, declared), start.date(), end.date(), max_bad_share,
        declared.raw_schema if declared else None, featurizer,
    )  # fmt: skip
    key = run_key or contract.local_run_key(str(start.date()), str(end.date()), "etl")
    lineage = registry.Lineage.from_env(
        interval_start=str(start.date()), interval_end=str(end.date())
    )
    with registry.get_or_start_run(experiment, key, f"etl {start.date()}", lineage.tags()):
        digest = registry.dataset_hash(reports)
        mlflow.log_metrics(
            {
                "raw_rows": sum(r["raw_rows"] for r in reports),
                "valid_rows": sum(r["valid_rows"] for r in reports),
                "quarantined_rows": sum(r["quarantined_rows"] for r in reports),
                "bad_row_share": max(r["bad_row_share"] for r in reports),
            }
        )
        mlflow.set_tags({contract.DATASET_HASH_TAG: digest,
                         contract.SOURCE_URI_TAG: sources.redact(source_uri)})  # fmt: skip
        mlflow.log_dict({"days": reports}, "etl/reports.json")
    _emit({"dataset_hash": digest, "days": reports})


@app.command()
def train(
    start: Start,
    end: End,
    dataset_uri: DatasetUri,
    model_name: ModelName = "churn",
    run_key: RunKey = "",
    window_days: Annotated[
        int, typer.Option(min=1, help="Train on the interval plus earlier days, this many in all.")
    ] = 7,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training rows.")] = 8,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per optimizer step.")] = 1024,
    learning_rate: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate.")] = 3e-3,
    hidden: Annotated[
        str, typer.Option(help="Hidden layer widths, comma-separated, e.g. 64,32.")
    ] = "64,32",
    seed: Annotated[int, typer.Option(help="Seed for weights and batch order.")] = 42,
    model_spec: ModelSpecJson = "",
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment for training runs.")
    ] = contract.TRAINING_EXPERIMENT,
    amp: Annotated[
        bool,
        typer.Option(
            help="Mixed precision on CUDA: bf16 autocast, or fp16 with a "
            "gradient scaler where bf16 is not supported. CPU runs float32."
        ),
    ] = True,
    compile_network: Annotated[
        bool, typer.Option("--compile", help="torch.compile the network before training.")
    ] = False,
) -> None:
    """Train the model on the dataset window ending at END and register a model version.

    Under torchrun (``torchrun --nproc-per-node=N -m helmsman_steps train ...``) every process
    trains its share of each batch with DDP and rank 0 registers the version."""
    from helmsman_steps import registry
    from helmsman_steps import train as stage

    try:
        widths = tuple(int(w) for w in hidden.split(",") if w.strip())
    except ValueError as exc:
        raise BadInputError(f"--hidden must be comma-separated integers, got {hidden!r}") from exc
    if not widths or min(widths) < 1:
        raise BadInputError(f"--hidden needs at least one positive width, got {hidden!r}")
    if len(widths) > contract.MAX_LAYERS or max(widths) > contract.MAX_WIDTH:
        raise BadInputError(
            f"--hidden {hidden!r}: at most {contract.MAX_LAYERS} layers of at most "
            f"{contract.MAX_WIDTH} units each"
        )
    if not 0 <= seed <= contract.MAX_SEED:
        raise BadInputError(f"--seed {seed}: give 0 to {contract.MAX_SEED}")
    config = stage.TrainConfig(epochs, batch_size, learning_rate, 1e-4, widths, seed, window_days,
                               amp, compile_network)  # fmt: skip
    declared = _spec(model_spec)
    if declared is not None and declared.name != model_name:
        raise BadInputError(f"the spec is model {declared.name!r}, not --model-name {model_name!r}")
    lineage = registry.Lineage.from_env()  # train.run adds the interval
    key = run_key or contract.local_run_key(str(start.date()), str(end.date()), "train")
    result = stage.run(
        _store(dataset_uri, declared), start.date(), end.date(), model_name, key, config, lineage,
        experiment, _canonical(declared),
    )  # fmt: skip
    from helmsman_steps import fit

    if fit.World.from_env().leader:  # stdout is the one JSON result: rank 0's
        _emit(result)


@app.command()
def evaluate(
    start: Start,
    end: End,
    dataset_uri: DatasetUri,
    model_name: ModelName = "churn",
    challenger_version: Annotated[
        str, typer.Option(help="Model version to evaluate; default: the one --run-key trained.")
    ] = "",
    run_key: Annotated[
        str,
        typer.Option(
            envvar="HELMSMAN_TRAIN_RUN_KEY",
            help="Run key of the training run whose model version is the challenger.",
        ),
    ] = "",
    min_primary: Annotated[
        float,
        typer.Option(
            help="The primary metric's floor (ceiling for an error); default: the "
            "spec's evaluation.floor, else 0.60 (ROC AUC)."
        ),
    ] = float("nan"),
    min_improvement: Annotated[
        float, typer.Option(help="Required gain of the primary metric over the champion.")
    ] = 0.0,
    window_days: Annotated[
        int, typer.Option(min=1, help="The training window (for evaluation.holdout: window).")
    ] = 7,
    max_secondary_regression: Annotated[
        float, typer.Option(help="Allowed rise of log loss and Brier score.")
    ] = 0.01,
    max_ci_regression: Annotated[
        float,
        typer.Option(
            help="Reject if the gain's CI lower bound is below minus this (for an "
            "error metric: this share of the champion's error)."
        ),
    ] = 0.02,
    n_bootstrap: Annotated[int, typer.Option(min=50, help="Bootstrap resamples for the CI.")] = 300,
    golden_size: Annotated[int, typer.Option(min=1, help="Rows in the golden set.")] = 256,
    training_experiment: Annotated[
        str, typer.Option(help="MLflow experiment of the training runs.")
    ] = contract.TRAINING_EXPERIMENT,
    model_spec: ModelSpecJson = "",
) -> None:
    """Compare the challenger with @champion on held-out rows and record the decision."""
    import math

    from helmsman_steps import evaluate as stage
    from helmsman_steps import registry
    from helmsman_steps.modelinfo import ModelInfo

    version = challenger_version
    if not version:
        if not run_key:
            raise BadInputError("give --challenger-version or --run-key of the training run")
        trained = registry.find_run(training_experiment, run_key)
        version = trained.data.tags.get(contract.MODEL_VERSION_TAG, "") if trained else ""
        if not version:
            raise BadInputError(f"no model version was registered by training run {run_key!r}")
    declared = _spec(model_spec)
    info = ModelInfo.of(declared, model_name)
    if math.isnan(min_primary):
        min_primary = declared.evaluation.floor if declared else 0.60
    threshold = declared.serving.thresholds.get("decision_threshold", 0.5) if declared else 0.5
    rules = stage.Rules(min_primary, min_improvement, max_secondary_regression,
                        max_ci_regression, n_bootstrap)  # fmt: skip
    decision = stage.run(
        _store(dataset_uri, declared), start.date(), end.date(), model_name, version, rules,
        golden_size, info, window_days, threshold,
    )  # fmt: skip
    _emit(decision)


@app.command()
def monitor(
    model_name: ModelName,
    dataset_uri: DatasetUri,
    end: Annotated[
        dt.datetime | None,
        typer.Option(
            formats=_DATE_FORMATS,
            help="End of the judged window (exclusive; the DAG passes its data "
            "interval's end). Default: the current hour's start, UTC.",
        ),
    ] = None,
    window_hours: Annotated[
        int,
        typer.Option(
            min=0, max=168, help="Hours of traffic judged, ending at --end (0: the spec's)."
        ),
    ] = 0,
    run_key: RunKey = "",
    model_spec: ModelSpecJson = "",
    pushgateway: Annotated[
        str,
        typer.Option(
            envvar="HELMSMAN_PUSHGATEWAY_URL",
            help="A Prometheus Pushgateway (http://host:port) to push the verdict's gauges to; "
            "empty: MLflow only.",
        ),
    ] = "",
) -> None:
    """Judge a window of the champion's inference log against its training data's profile:
    per-column and prediction drift, data quality; recorded in MLflow and, with a Pushgateway,
    as Prometheus gauges. Exit 3 (skipped) when there is nothing to judge: no champion, no
    profile, too little traffic, an unreadable file."""
    from helmsman_steps import monitor as stage
    from helmsman_steps.modelinfo import ModelInfo
    from helmsman_steps.store import DatasetStore

    declared = _spec(model_spec)
    settings = declared.monitoring if declared else None
    hours = window_hours or (settings.window_hours if settings else 1)
    if end is None:
        end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    elif end.tzinfo is None:
        end = end.replace(tzinfo=dt.UTC)
    if end > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5):
        raise BadInputError(f"--end {end:%Y-%m-%dT%H:%M}Z is in the future: no traffic there yet")
    start = end - dt.timedelta(hours=hours)
    thresholds = stage.thresholds_of(
        settings.model_dump(include=set(stage.Thresholds.__dataclass_fields__))
        if settings
        else None
    )
    info = ModelInfo.of(declared, model_name)
    key = run_key or contract.run_key("local", f"monitor_{end:%Y%m%dT%H}", "monitor")
    # Where the server writes the model's inference log: the model's folder, spec or not.
    store = DatasetStore(f"{dataset_uri.rstrip('/')}/{model_name}")
    _emit(stage.run(store, info, start, end, thresholds, key, pushgateway))


@app.command("sample-data")
def sample_data(
    name: Annotated[str, typer.Argument(help="The packaged dataset: diabetes or wine.")],
    dest: Annotated[str, typer.Option(help="Folder (path or fsspec URL) for the daily files.")],
    first_day: Annotated[
        dt.datetime, typer.Option(formats=_DATE_FORMATS, help="The first file's day.")
    ] = dt.datetime(2026, 2, 1),
    days: Annotated[int, typer.Option(min=1, help="Spread the records over this many days.")] = 14,
) -> None:
    """Write a real dataset that ships with the step package's dependencies as daily raw files,
    for the file source (``source: file:///...``): the demo's diabetes and wine models' feeds."""
    from helmsman_steps import sources

    paths = sources.write_sample(name, dest, first_day.date(), days)
    _emit({"dataset": name, "files": len(paths), "first": paths[0], "last": paths[-1]})


@app.command("fetch-model")
def fetch_model(
    model_uri: Annotated[
        str, typer.Option(envvar="HELMSMAN_MODEL_URI", help="models:/NAME/VERSION or @ALIAS.")
    ],
    dest: Annotated[str, typer.Option(help="Folder to download the serving export into.")],
) -> None:
    """Resolve a model URI to its exact version and download its serving export.

    Prints {"name", "version", "run_id", "aliases", "path", "spec_path"} (``spec_path``: the
    spec the version was trained with, null for versions registered without one). The server
    runs this as a child process, so MLflow's client is never resident in a serving pod.
    """
    from helmsman_steps import registry

    resolved = registry.resolve(model_uri)
    path = registry.download_serving_model(resolved, dest)
    spec_path = registry.download_spec(resolved, dest)
    _emit({**asdict(resolved), "path": path, "spec_path": spec_path})


@app.command()
def serve(
    model_uri: Annotated[
        str,
        typer.Option(
            envvar="HELMSMAN_MODEL_URI",
            help="models:/NAME/VERSION or models:/NAME@ALIAS, resolved once at start.",
        ),
    ],
    host: Annotated[
        str, typer.Option(envvar="POD_IP", help="Address to bind (the pod's IP in Kubernetes).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="HELMSMAN_PORT", min=1, max=65535)] = 8080,
    graceful_seconds: Annotated[
        int, typer.Option(min=0, help="On SIGTERM, wait this long for requests in flight.")
    ] = 20,
    drain_seconds: Annotated[
        float,
        typer.Option(
            min=0,
            help="On SIGTERM, first keep serving this long while reporting not ready and "
            "closing connections, so clients move to other pods before this one stops.",
        ),
    ] = 0,
    batch_window_ms: Annotated[
        float,
        typer.Option(
            min=0,
            max=50,
            envvar="HELMSMAN_BATCH_WINDOW_MS",
            help="Micro-batching: the requests waiting at the same moment share one model "
            "call; above 0, a batch also waits this many milliseconds (whole ones) for more, "
            "adding up to that much latency.",
        ),
    ] = 0,
    batch_max_rows: Annotated[
        int,
        typer.Option(
            min=1,
            max=10_000,
            envvar="HELMSMAN_BATCH_MAX_ROWS",
            help="Micro-batching: a batch that reaches this many rows is scored at once "
            "(1: every request alone).",
        ),
    ] = 256,  # serve.BATCH_MAX_ROWS: stages are imported only when they run
    log_sample: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            envvar="HELMSMAN_LOG_SAMPLE",
            help="Inference log: the share of scored requests (0 to 1; 0: off) written, off the "
            "request path, to the model's folder of the dataset store, for its monitor.",
        ),
    ] = 0,
    dataset_uri: Annotated[
        str,
        typer.Option(
            envvar="HELMSMAN_DATASET_URI",
            help="Root of the dataset store (a path or fsspec URL): where the inference log goes.",
        ),
    ] = "",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            clamp=True,
            envvar="HELMSMAN_WORKERS",
            help="Worker processes on the one port (the serving Deployment passes the CPUs "
            "its container requests; 0, no request, is one): one core each; their metrics "
            "add up.",
        ),
    ] = 1,
) -> None:
    """Serve one model version over HTTP until SIGTERM."""
    from helmsman_steps import serve as stage

    settings = stage.Settings(model_uri, host, port, graceful_seconds, drain_seconds,
                              batch_window_ms, batch_max_rows, log_sample, dataset_uri)  # fmt: skip
    code = stage.serve(settings, workers)
    if code:
        raise typer.Exit(code)


def main() -> None:
    """Entry point: run the app and map failures to the documented exit codes.

    Usage errors (a missing or malformed option) are reported by typer, which exits 2 --
    the same code as any other bad input.
    """
    try:
        app()
    except Skipped as exc:
        logs.get("helmsman_steps").warning("skipped: nothing to judge", reason=str(exc))
        sys.exit(ExitCode.SKIPPED)
    except BadInputError as exc:
        logs.get("helmsman_steps").error("bad input", error=str(exc))
        exitcodes.record_bad_input()
        sys.exit(ExitCode.BAD_INPUT)
    except Exception:
        logs.get("helmsman_steps").exception("internal failure")
        sys.exit(ExitCode.INTERNAL)


if __name__ == "__main__":
    main()
