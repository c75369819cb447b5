"""Evaluate: the challenger against ``@champion`` on the same held-out rows, and a decision.

Both models score the held-out rows (hash bucket 0, never trained on) of the data interval.
The primary metric is ROC AUC; log loss and Brier score are secondary. A paired bootstrap
over the held-out rows gives a confidence interval for the AUC difference. The decision and
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
from helmsman_steps.model import NumpyModel, score_counts
from helmsman_steps.schema import ID_COLUMN, LABEL, RAW_FEATURES
from helmsman_steps.store import DatasetStore, days_in
from helmsman_steps.train import HOLDOUT_BUCKET, buckets

if TYPE_CHECKING:
    import pandas as pd

log = logs.get(__name__)

DECISION_ARTIFACT = "evaluation/decision.json"


@dataclass(frozen=True)
class Rules:
    """When a challenger replaces the champion. Every threshold is a CLI option."""

    min_primary: float = 0.60  # absolute AUC floor, also for the very first model
    min_improvement: float = 0.0  # challenger AUC minus champion AUC must be at least this
    max_secondary_regression: float = 0.01  # log loss / Brier may worsen by at most this
    max_ci_regression: float = 0.02  # the CI's lower bound of the AUC gain must be above -this
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
    auc_difference: float | None = None
    auc_difference_ci: tuple[float, float] | None = None
    holdout_rows: int = 0
    rules: dict[str, Any] = field(default_factory=dict)


def metrics(y: npt.NDArray[np.float32], p: npt.NDArray[np.float32]) -> dict[str, float]:
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    clipped = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "log_loss": float(log_loss(y, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(y, clipped)),
    }


def bootstrap_auc_difference(
    y: npt.NDArray[np.float32],
    p_new: npt.NDArray[np.float32],
    p_old: npt.NDArray[np.float32],
    rules: Rules,
) -> tuple[float, float]:
    """Paired bootstrap CI of AUC(new) - AUC(old): both scored on the same resampled rows."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(rules.seed)
    diffs = []
    for _ in range(rules.n_bootstrap):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue  # a resample with one class has no AUC
        diffs.append(roc_auc_score(y[idx], p_new[idx]) - roc_auc_score(y[idx], p_old[idx]))
    alpha = (1 - rules.confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return float(low), float(high)


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    ci: tuple[float, float] | None,
    rules: Rules,
) -> tuple[str, list[str]]:
    reasons: list[str] = []
    if challenger["roc_auc"] < rules.min_primary:
        reasons.append(
            f"roc_auc {challenger['roc_auc']:.4f} is below the floor {rules.min_primary}"
        )
    if champion is None:
        if not reasons:
            return "promote", [
                f"no champion yet; roc_auc {challenger['roc_auc']:.4f} clears the floor"
            ]
        return "reject", reasons
    gain = challenger["roc_auc"] - champion["roc_auc"]
    if gain < rules.min_improvement:
        reasons.append(
            f"roc_auc gain {gain:+.4f} is below the required {rules.min_improvement:+.4f}"
        )
    if ci is not None and ci[0] < -rules.max_ci_regression:
        reasons.append(
            f"the {rules.confidence:.0%} CI of the roc_auc gain [{ci[0]:+.4f}, {ci[1]:+.4f}] "
            f"allows a regression beyond {rules.max_ci_regression}"
        )
    for name in ("log_loss", "brier"):
        worse = challenger[name] - champion[name]
        if worse > rules.max_secondary_regression:
            reasons.append(
                f"{name} worsens by {worse:.4f}, over the {rules.max_secondary_regression} allowed"
            )
    if reasons:
        return "reject", reasons
    return "promote", [f"roc_auc gain {gain:+.4f} with CI [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci
                       else f"roc_auc gain {gain:+.4f}"]  # fmt: skip


def holdout(store: DatasetStore, start: dt.date, end: dt.date) -> pd.DataFrame:
    frame = store.read_features(days_in(start, end))
    rows = frame[buckets(frame[ID_COLUMN]) == HOLDOUT_BUCKET].sort_values(ID_COLUMN)
    if rows[LABEL].nunique() < 2:
        raise BadInputError(f"the held-out rows of {start}..{end} hold one class only")
    return rows.reset_index(drop=True)


def _load(model: registry.ResolvedModel, tmp: str) -> NumpyModel:
    return NumpyModel.load(registry.download_serving_model(model, f"{tmp}/{model.version}"))


def _golden(
    rows: pd.DataFrame,
    predictions: npt.NDArray[np.float32],
    size: int,
    versus: dict[str, Any] | None = None,
) -> dict[str, Any]:
    sample = rows.head(size)
    inputs = sample[list(RAW_FEATURES)].to_dict("records")
    golden = {"inputs": inputs, "predictions": [float(p) for p in predictions[: len(sample)]]}
    if versus is not None:
        golden["versus_champion"] = versus
    return golden


def versus_champion(
    new: npt.NDArray[np.float32], old: npt.NDArray[np.float32], champion_version: str
) -> dict[str, Any]:
    """How far the challenger's answers are from the champion's on the held-out rows: what a
    rollout's shadow step and live steps should see too, if both are served as evaluated."""
    return {
        "champion_version": champion_version,
        "mean_abs_diff": float(np.mean(np.abs(new - old))),
        "mean_diff": float(np.mean(new - old)),
        "disagreement": float(np.mean((new >= 0.5) != (old >= 0.5))),
        "rows": len(new),
        # Counts per serving histogram bucket: the distributions a live step compares.
        "challenger_counts": score_counts(new).tolist(),
        "champion_counts": score_counts(old).tolist(),
    }


def _plots(y: Any, scores: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
        ax.legend(loc="best")
        fig.tight_layout()
        path = folder / f"{kind}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def _earlier_decision(model: registry.ResolvedModel) -> Decision | None:
    import mlflow

    mv = registry.client().get_model_version(model.name, model.version)
    if DECISION_TAG not in (mv.tags or {}):
        return None
    data = mlflow.artifacts.load_dict(f"runs:/{model.run_id}/{DECISION_ARTIFACT}")
    ci = data.get("auc_difference_ci")
    return Decision(**{**data, "auc_difference_ci": tuple(ci) if ci else None})


def run(
    store: DatasetStore,
    start: dt.date,
    end: dt.date,
    model_name: str,
    challenger_version: str,
    rules: Rules,
    golden_size: int = 256,
) -> Decision:
    import mlflow

    challenger = registry.resolve(f"models:/{model_name}/{challenger_version}")
    earlier = _earlier_decision(challenger)
    if earlier is not None:
        # A retry, or a re-run after the rollout promoted this version: the decision was made
        # against the champion of that time, and must not change.
        log.info("already evaluated; reusing the decision", version=challenger.version)
        return earlier
    champion = registry.champion(model_name)
    rows = holdout(store, start, end)
    y = rows[LABEL].to_numpy(np.float32)
    columns = {c: rows[c].to_numpy() for c in rows.columns}
    with tempfile.TemporaryDirectory() as tmp:
        p_new = _load(challenger, tmp).predict(columns)
        p_old = _load(champion, tmp).predict(columns) if champion else None
        new_metrics = metrics(y, p_new)
        old_metrics = metrics(y, p_old) if p_old is not None else None
        ci = bootstrap_auc_difference(y, p_new, p_old, rules) if p_old is not None else None
        verdict, reasons = decide(new_metrics, old_metrics, ci, rules)
        decision = Decision(
            decision=verdict,
            reasons=reasons,
            model_name=model_name,
            challenger_version=challenger.version,
            champion_version=champion.version if champion else None,
            challenger_metrics=new_metrics,
            champion_metrics=old_metrics,
            auc_difference=(new_metrics["roc_auc"] - old_metrics["roc_auc"])
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
        plots = _plots(y, scores, folder)
        (folder / "decision.json").write_text(json.dumps(asdict(decision), indent=2))
        versus = (
            versus_champion(p_new, p_old, champion.version)
            if p_old is not None and champion is not None
            else None
        )
        artifacts, golden_name = Path(GOLDEN_ARTIFACT).parent, Path(GOLDEN_ARTIFACT).name
        (folder / golden_name).write_text(json.dumps(_golden(rows, p_new, golden_size, versus)))
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
