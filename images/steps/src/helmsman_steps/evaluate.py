"""Evaluate: the challenger against ``@champion`` on the same held-out rows, and a decision.

Both models score the held-out rows (hash bucket 0, never trained on) of the data interval (or
of the training window, for a model whose spec says ``evaluation.holdout: window``), through
the runtime that serves them (ONNX). The primary metric is the spec's (ROC AUC for a binary
model, RMSE, MAE or R² for a regression); a binary model's log loss and Brier score are
secondary. A paired bootstrap over the held-out rows gives a confidence interval for the gain
in the primary metric (its better direction: up for AUC and R², down for errors). The decision and
its reasons go to the challenger's model version and run as tags and a JSON artifact, with
ROC, precision-recall and calibration plots, and a golden set (inputs and the challenger's
offline predictions) that the rollout's parity check replays against the served model.
With no champion yet, the first model that clears the absolute floor is promoted.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from helmsman_steps import logs, registry
from helmsman_steps.contract import DECISION_REASONS_TAG as REASONS_TAG
from helmsman_steps.contract import DECISION_TAG, GOLDEN_ARTIFACT
from helmsman_steps.exitcodes import BadInputError
from helmsman_steps.modelinfo import LOWER_IS_BETTER, ModelInfo, score_counts
from helmsman_steps.runtime import Predictor, load_scorer
from helmsman_steps.store import DatasetStore, days_in
from helmsman_steps.train import HOLDOUT_BUCKET, buckets, training_window

if TYPE_CHECKING:
    import pandas as pd

log = logs.get(__name__)

DECISION_ARTIFACT = "evaluation/decision.json"


@dataclass(frozen=True)
class Rules:
    """When a challenger replaces the champion. Every threshold is a CLI option."""

    # The primary metric's floor (a maximum for an error), also for the very first model.
    min_primary: float = 0.60
    # The primary metric's gain over the champion, at least: in its units for a score (AUC,
    # R²), a share of the champion's error for an error (RMSE, MAE: 0.02 is 2% lower).
    min_improvement: float = 0.0
    max_secondary_regression: float = 0.01  # log loss / Brier may worsen by at most this
    # The CI's lower bound of the gain must be above -this: in the metric's units for a score
    # (AUC, R²), a share of the champion's error for an error (RMSE, MAE: 0.02 is 2%).
    max_ci_regression: float = 0.02
    n_bootstrap: int = 300
    confidence: float = 0.95
    seed: int = 0


@dataclass
class Decision:
    decision: str  # "promote" or "reject"
    reasons: list[str]
    model_name: str
    challenger_version: str
    champion_version: str | None
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    metric: str = "roc_auc"  # the primary metric
    # The primary metric's gain over the champion (in its better direction) and its CI; the
    # names are those of the decisions recorded when the metric was always ROC AUC.
    auc_difference: float | None = None
    auc_difference_ci: tuple[float, float] | None = None
    holdout_rows: int = 0
    rules: dict[str, Any] = field(default_factory=dict)


def metrics(
    y: npt.NDArray[np.float32], p: npt.NDArray[np.float32], task: str = "binary"
) -> dict[str, float]:
    """The task's metrics: ROC AUC, accuracy, macro F1, log loss and Brier score for a binary
    model's probabilities; accuracy, macro F1 and log loss for a multiclass model's (``p``:
    ``[rows, classes]``, ``y``: the class index); RMSE, MAE and R² for a regression's values."""
    if task == "multiclass":
        from sklearn.metrics import log_loss

        labels = list(range(p.shape[1]))
        return {
            "accuracy": _one("accuracy", y, p),
            "f1_macro": _one("f1_macro", y, p),
            "log_loss": float(log_loss(y, np.clip(p.astype(np.float64), 1e-7, 1), labels=labels)),
        }
    if task == "regression":
        from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

        return {
            "rmse": float(root_mean_squared_error(y, p)),
            "mae": float(mean_absolute_error(y, p)),
            "r2": float(r2_score(y, p)),
        }
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    clipped = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "accuracy": _one("accuracy", y, p),
        "f1_macro": _one("f1_macro", y, p),
        "log_loss": float(log_loss(y, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(y, clipped)),
    }


def gain(metric: str, new: float, old: float) -> float:
    """How much better ``new`` is than ``old`` (positive: better), in the metric's units."""
    return old - new if metric in LOWER_IS_BETTER else new - old


def _one(metric: str, y: npt.NDArray[Any], p: npt.NDArray[Any]) -> float:
    """One primary metric (a bootstrap resample computes only the metric it compares). The
    class metrics judge decisions: a multiclass model's most probable class, a binary model's
    score at 0.5."""
    import sklearn.metrics as m

    if metric in ("accuracy", "f1_macro"):
        labels = list(range(p.shape[1])) if p.ndim == 2 else [0, 1]
        predicted = p.argmax(axis=1) if p.ndim == 2 else (p >= 0.5).astype(int)
        truth = y.astype(int)
        if metric == "accuracy":
            return float(m.accuracy_score(truth, predicted))
        return float(m.f1_score(truth, predicted, labels=labels, average="macro", zero_division=0))
    score = {"roc_auc": m.roc_auc_score, "rmse": m.root_mean_squared_error,
             "mae": m.mean_absolute_error, "r2": m.r2_score}[metric]  # fmt: skip
    return float(score(y, p))


def bootstrap_gain(
    y: npt.NDArray[np.float32],
    p_new: npt.NDArray[np.float32],
    p_old: npt.NDArray[np.float32],
    rules: Rules,
    metric: str = "roc_auc",
) -> tuple[float, float]:
    """Paired bootstrap CI of the primary metric's gain: both scored on the same resampled
    rows."""
    rng = np.random.default_rng(rules.seed)
    diffs = []
    for _ in range(rules.n_bootstrap):
        idx = rng.integers(0, len(y), len(y))
        if metric == "roc_auc" and y[idx].min() == y[idx].max():
            continue  # a resample with one class has no AUC
        new, old = _one(metric, y[idx], p_new[idx]), _one(metric, y[idx], p_old[idx])
        diffs.append(gain(metric, new, old))
    alpha = (1 - rules.confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_auc_difference(
    y: npt.NDArray[np.float32],
    p_new: npt.NDArray[np.float32],
    p_old: npt.NDArray[np.float32],
    rules: Rules,
) -> tuple[float, float]:
    """Paired bootstrap CI of AUC(new) - AUC(old)."""
    return bootstrap_gain(y, p_new, p_old, rules, "roc_auc")


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    ci: tuple[float, float] | None,
    rules: Rules,
    metric: str = "roc_auc",
) -> tuple[str, list[str]]:
    reasons: list[str] = []
    value = challenger[metric]
    if gain(metric, value, rules.min_primary) < 0:
        side = "above the ceiling" if metric in LOWER_IS_BETTER else "below the floor"
        reasons.append(f"{metric} {value:.4f} is {side} {rules.min_primary}")
    if champion is None:
        if not reasons:
            return "promote", [f"no champion yet; {metric} {value:.4f} clears the floor"]
        return "reject", reasons
    won = gain(metric, value, champion[metric])
    # For an error, the rule is a share of the champion's error (0.02: 2% lower), as the CI's.
    relative = metric in LOWER_IS_BETTER
    required = rules.min_improvement * (champion[metric] if relative else 1.0)
    if won < required:
        share = f" ({rules.min_improvement:+.1%} of the champion's {metric})" if relative else ""
        reasons.append(f"{metric} gain {won:+.4f} is below the required {required:+.4f}{share}")
    allowed = rules.max_ci_regression
    if metric in LOWER_IS_BETTER:
        allowed *= champion[metric]
    if ci is not None and ci[0] < -allowed:
        reasons.append(
            f"the {rules.confidence:.0%} CI of the {metric} gain [{ci[0]:+.4f}, {ci[1]:+.4f}] "
            f"allows a regression beyond {allowed:.4g}"
        )
    for name in ("log_loss", "brier"):
        if name == metric or name not in challenger or name not in champion:
            continue
        worse = challenger[name] - champion[name]
        if worse > rules.max_secondary_regression:
            reasons.append(
                f"{name} worsens by {worse:.4f}, over the {rules.max_secondary_regression} allowed"
            )
    if reasons:
        return "reject", reasons
    return "promote", [f"{metric} gain {won:+.4f} with CI [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci
                       else f"{metric} gain {won:+.4f}"]  # fmt: skip


def holdout(
    store: DatasetStore, start: dt.date, end: dt.date, info: ModelInfo | None = None
) -> pd.DataFrame:
    info = info or ModelInfo.churn()
    frame = store.read_features(days_in(start, end))
    rows = frame[buckets(frame[info.id_column]) == HOLDOUT_BUCKET].sort_values(info.id_column)
    if info.task != "regression" and rows[info.label].nunique() < 2:
        raise BadInputError(f"the held-out rows of {start}..{end} hold one class only")
    if len(rows) < 2:
        raise BadInputError(
            f"{len(rows)} held-out rows in {start}..{end}: too few to judge a model on; widen "
            "the window (evaluation.holdout: window judges on the training window's rows)"
        )
    return rows.reset_index(drop=True)


def _load(model: registry.ResolvedModel, tmp: str, info: ModelInfo) -> Predictor:
    """The version as serving loads it: its ONNX graph on ONNX Runtime."""
    path = registry.download_serving_model(model, f"{tmp}/{model.version}")
    return Predictor(info, load_scorer(path))


def _info_of(model: registry.ResolvedModel, tmp: str, rows: pd.DataFrame) -> ModelInfo:
    """A version's own model (the spec it was trained with; churn's for a version from before
    specs), as serving builds it; BadInputError when the held-out rows lack its columns."""
    path = registry.download_spec(model, f"{tmp}/{model.version}-spec")
    info = ModelInfo.from_file(path, model.name)
    missing = sorted(set(info.input_columns) - set(rows.columns))
    if missing:
        raise BadInputError(
            f"champion version {model.version} of {model.name} was trained on columns this data "
            f"lacks ({', '.join(missing)}): it cannot be judged against the challenger here; "
            "roll back to a version of the current schema, or deploy the challenger with "
            "deploy=force (the rollout's checks still apply)"
        )
    return info


def _golden(
    rows: pd.DataFrame,
    predictions: npt.NDArray[np.float32],
    size: int,
    versus: dict[str, Any] | None = None,
    info: ModelInfo | None = None,
) -> dict[str, Any]:
    info = info or ModelInfo.churn()
    sample = rows.head(size)
    # As a client sends them: JSON values (a missing value is null, not NaN, which is no JSON).
    inputs = json.loads(sample[info.input_columns].to_json(orient="records", double_precision=15))
    # A score a row, or a multiclass model's probabilities a row: exactly the float32 values.
    answers = np.asarray(predictions[: len(sample)], dtype=np.float64).tolist()
    golden = {"inputs": inputs, "predictions": answers}
    if versus is not None:
        golden["versus_champion"] = versus
    return golden


def versus_champion(
    new: npt.NDArray[np.float32],
    old: npt.NDArray[np.float32],
    champion_version: str,
    info: ModelInfo | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """How far the challenger's answers are from the champion's on the held-out rows: what a
    rollout's shadow step and live steps should see too, if both are served as evaluated.
    ``threshold``: the decision a score makes (the rollout's ``decision_threshold``)."""
    info = info or ModelInfo.churn()
    bounds = info.prediction_buckets()
    decided = info.decisions(new, threshold) != info.decisions(old, threshold)
    return {
        "champion_version": champion_version,
        # Over every score: a multiclass model's per-class probabilities (its mean_diff is 0).
        "mean_abs_diff": float(np.mean(np.abs(new - old))),
        "mean_diff": float(np.mean(new - old)),
        "disagreement": float(np.mean(decided)),
        "rows": len(new),
        # Counts per serving histogram bucket: the distributions a live step compares.
        "challenger_counts": score_counts(info.observed(new), bounds).tolist(),
        "champion_counts": score_counts(info.observed(old), bounds).tolist(),
    }


def _plots(
    y: Any,
    scores: dict[str, Any],
    folder: Path,
    task: str = "binary",
    classes: tuple[Any, ...] | None = None,
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if task == "regression":
        return _regression_plots(y, scores, folder, plt)
    if task == "multiclass":
        return _confusion_plots(y, scores, folder, plt, classes)
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    paths = []
    for kind in ("roc", "pr", "calibration"):
        fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
        for label, p in scores.items():
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, p)
                ax.plot(fpr, tpr, label=label)
                ax.plot([0, 1], [0, 1], ls=":", c="grey")
                ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
            elif kind == "pr":
                precision, recall, _ = precision_recall_curve(y, p)
                ax.plot(recall, precision, label=label)
                ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
            else:
                observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
                ax.plot(predicted, observed, marker="o", label=label)
                ax.plot([0, 1], [0, 1], ls=":", c="grey")
                ax.set(xlabel="predicted probability", ylabel="observed rate", title="Calibration")
        paths.append(_save(fig, ax, folder / f"{kind}.png", plt))
    return paths


def _save(fig: Any, ax: Any, path: Path, plt: Any) -> Path:
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _regression_plots(y: Any, scores: dict[str, Any], folder: Path, plt: Any) -> list[Path]:
    """Predicted against actual (the diagonal is perfect), and the residuals' spread."""
    paths = []
    for kind in ("predicted_vs_actual", "residuals"):
        fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
        for label, p in scores.items():
            if kind == "residuals":
                ax.hist(p - y, bins=20, alpha=0.5, label=label)
                ax.set(xlabel="predicted - actual", ylabel="rows", title="Residuals")
            else:
                ax.scatter(y, p, s=12, alpha=0.7, label=label)
                ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual")
        if kind != "residuals":
            low, high = float(np.min(y)), float(np.max(y))
            ax.plot([low, high], [low, high], ls=":", c="grey")
        paths.append(_save(fig, ax, folder / f"{kind}.png", plt))
    return paths


def _confusion_plots(
    y: Any, scores: dict[str, Any], folder: Path, plt: Any, classes: tuple[Any, ...] | None
) -> list[Path]:
    """A confusion matrix per version (rows: the true class, normalised; columns: the
    predicted one)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, axes = plt.subplots(1, len(scores), figsize=(4.5 * len(scores), 4.2), dpi=100,
                             squeeze=False)  # fmt: skip
    for ax, (label, p) in zip(axes[0], scores.items(), strict=True):
        ConfusionMatrixDisplay.from_predictions(
            y.astype(int), p.argmax(axis=1), labels=list(range(p.shape[1])), normalize="true",
            display_labels=[str(c) for c in classes] if classes else None, ax=ax,
            colorbar=False, values_format=".2f", cmap="Blues",
        )  # fmt: skip
        ax.set(title=label, xlabel="predicted class", ylabel="true class")
    fig.tight_layout()
    path = folder / "confusion.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]


def _earlier_decision(model: registry.ResolvedModel) -> Decision | None:
    import mlflow

    mv = registry.client().get_model_version(model.name, model.version)
    if DECISION_TAG not in (mv.tags or {}):
        return None
    data = mlflow.artifacts.load_dict(f"runs:/{model.run_id}/{DECISION_ARTIFACT}")
    ci = data.get("auc_difference_ci")
    fields = {**data, "auc_difference_ci": tuple(ci) if ci else None}
    return Decision(**fields)


def run(
    store: DatasetStore,
    start: dt.date,
    end: dt.date,
    model_name: str,
    challenger_version: str,
    rules: Rules,
    golden_size: int = 256,
    info: ModelInfo | None = None,
    window_days: int = 7,
    decision_threshold: float = 0.5,
) -> Decision:
    """Judge version ``challenger_version`` of ``model_name`` against ``@champion``.

    ``info``: the model (churn's without a spec). ``window_days``: the training window, whose
    held-out rows judge a model with ``holdout: window``. ``decision_threshold``: where a score
    becomes a decision, for the golden set's offline disagreement."""
    import mlflow

    info = info or ModelInfo.churn(model_name)
    challenger = registry.resolve(f"models:/{model_name}/{challenger_version}")
    earlier = _earlier_decision(challenger)
    if earlier is not None:
        # A retry, or a re-run after the rollout promoted this version: the decision was made
        # against the champion of that time, and must not change.
        log.info("already evaluated; reusing the decision", version=challenger.version)
        return earlier
    champion = registry.champion(model_name)
    first = training_window(start, end, window_days)[0] if info.holdout == "window" else start
    rows = holdout(store, first, end, info)
    y = info.target(rows[info.label].to_numpy())
    columns = {c: rows[c].to_numpy() for c in rows.columns}
    metric = info.metric
    with tempfile.TemporaryDirectory() as tmp:
        p_new = _load(challenger, tmp, info).predict(columns)
        # The champion as it serves: scored with its own spec (columns, features, order).
        p_old = (
            _load(champion, tmp, _info_of(champion, tmp, rows)).predict(columns)
            if champion
            else None
        )
        new_metrics = metrics(y, p_new, info.task)
        old_metrics = metrics(y, p_old, info.task) if p_old is not None else None
        ci = bootstrap_gain(y, p_new, p_old, rules, metric) if p_old is not None else None
        verdict, reasons = decide(new_metrics, old_metrics, ci, rules, metric)
        decision = Decision(
            decision=verdict,
            reasons=reasons,
            model_name=model_name,
            challenger_version=challenger.version,
            champion_version=champion.version if champion else None,
            challenger_metrics=new_metrics,
            champion_metrics=old_metrics,
            metric=metric,
            auc_difference=gain(metric, new_metrics[metric], old_metrics[metric])
            if old_metrics
            else None,
            auc_difference_ci=ci,
            holdout_rows=len(rows),
            rules=asdict(rules),
        )
        folder = Path(tmp) / "evaluation"
        folder.mkdir()
        scores = {f"challenger v{challenger.version}": p_new}
        if p_old is not None and champion is not None:
            scores[f"champion v{champion.version}"] = p_old
        plots = _plots(y, scores, folder, info.task, info.classes)
        (folder / "decision.json").write_text(json.dumps(asdict(decision), indent=2))
        versus = (
            versus_champion(p_new, p_old, champion.version, info, decision_threshold)
            if p_old is not None and champion is not None
            else None
        )
        artifacts, golden_name = Path(GOLDEN_ARTIFACT).parent, Path(GOLDEN_ARTIFACT).name
        golden = _golden(rows, p_new, golden_size, versus, info)
        (folder / golden_name).write_text(json.dumps(golden))
        with mlflow.start_run(run_id=challenger.run_id):
            mlflow.log_metrics({f"eval_{k}": v for k, v in new_metrics.items()})
            for path in [*plots, folder / "decision.json", folder / golden_name]:
                mlflow.log_artifact(str(path), artifact_path=str(artifacts))
            mlflow.set_tags({DECISION_TAG: verdict, REASONS_TAG: "; ".join(reasons)[:5000]})
    c = registry.client()
    c.set_model_version_tag(model_name, challenger.version, DECISION_TAG, verdict)
    c.set_model_version_tag(model_name, challenger.version, REASONS_TAG, "; ".join(reasons)[:5000])
    log.info("decision", decision=verdict, reasons=reasons, challenger=challenger.version,
             champion=champion.version if champion else None)  # fmt: skip
    return decision
