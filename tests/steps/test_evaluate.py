"""Evaluation against a real MLflow server: the decision both ways, its records, its rules."""

from __future__ import annotations

import datetime as dt
import json

import mlflow
import numpy as np
import pytest

from helmsman_steps import contract, evaluate, registry, train
from helmsman_steps.schema import RAW_FEATURES
from helmsman_steps.store import DatasetStore
from tests.mlflow_fixtures import Trained

MODEL = "churn-eval"


@pytest.fixture(scope="module")
def contest(champion: Trained) -> dict[str, evaluate.Decision]:
    """Under a model name of its own: a modest champion, then a better and a much worse
    challenger, all evaluated on the held-out rows of the whole three-day window."""
    store = DatasetStore(champion.dataset_uri)
    start = champion.end - dt.timedelta(days=3)

    def fit(key: str, config: train.TrainConfig) -> str:
        result = train.run(
            store,
            champion.start,
            champion.end,
            MODEL,
            key,
            config,
            registry.Lineage(dag_id="tests"),
        )
        return result.model_version

    def judge(version: str) -> evaluate.Decision:
        return evaluate.run(store, start, champion.end, MODEL, version, evaluate.Rules())

    # A linear model stopped well short of convergence: clears the floor, leaves room above.
    first = fit(
        "eval/first", train.TrainConfig(epochs=3, learning_rate=0.01, hidden=(), window_days=3)
    )
    decisions = {"first": judge(first)}
    registry.client().set_registered_model_alias(MODEL, "champion", first)
    decisions["better"] = judge(fit("eval/better", train.TrainConfig(epochs=8, window_days=3)))
    # One epoch at a tiny learning rate through a 1-unit bottleneck: barely trained.
    worse = train.TrainConfig(epochs=1, learning_rate=1e-5, hidden=(1,), window_days=3)
    decisions["worse"] = judge(fit("eval/worse", worse))
    return decisions


def test_the_first_model_is_promoted_without_a_champion(
    contest: dict[str, evaluate.Decision],
) -> None:
    first = contest["first"]
    assert first.decision == "promote"
    assert first.champion_version is None
    assert "no champion yet" in first.reasons[0]


def test_a_worse_challenger_is_rejected_with_reasons(contest: dict[str, evaluate.Decision]) -> None:
    worse = contest["worse"]
    assert worse.decision == "reject"
    assert worse.champion_version == contest["first"].challenger_version
    assert worse.auc_difference is not None
    assert worse.auc_difference < 0
    assert any("roc_auc gain" in r for r in worse.reasons), worse.reasons
    low, high = worse.auc_difference_ci or (0.0, 0.0)
    assert low <= worse.auc_difference <= high


def test_a_better_challenger_is_promoted(contest: dict[str, evaluate.Decision]) -> None:
    better = contest["better"]
    assert better.decision == "promote", better.reasons
    assert better.auc_difference is not None
    assert better.auc_difference > 0
    assert better.champion_version == contest["first"].challenger_version


def test_the_decision_is_recorded_on_the_version_and_the_run(
    contest: dict[str, evaluate.Decision],
) -> None:
    worse = contest["worse"]
    mv = registry.client().get_model_version(MODEL, worse.challenger_version)
    assert mv.tags[contract.DECISION_TAG] == "reject"
    assert "roc_auc gain" in mv.tags[contract.DECISION_REASONS_TAG]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(mv.run_id, "evaluation")}
    assert artifacts >= {"evaluation/roc.png", "evaluation/pr.png", "evaluation/calibration.png",
                         "evaluation/decision.json", "evaluation/golden.json"}  # fmt: skip
    stored = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/{evaluate.DECISION_ARTIFACT}")
    assert stored["decision"] == "reject"
    golden = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/{contract.GOLDEN_ARTIFACT}")
    assert len(golden["inputs"]) == len(golden["predictions"]) == 256
    assert set(golden["inputs"][0]) == set(RAW_FEATURES)
    # What the rollout's shadow step will compare live: the difference from this champion.
    assert golden["versus_champion"]["champion_version"] == worse.champion_version
    assert 0 < golden["versus_champion"]["mean_abs_diff"] < 1


def test_re_evaluating_returns_the_recorded_decision(
    champion: Trained, contest: dict[str, evaluate.Decision]
) -> None:
    first = contest["first"]  # now the champion itself: comparing it with itself must not happen
    again = evaluate.run(
        DatasetStore(champion.dataset_uri),
        champion.start,
        champion.end,
        MODEL,
        first.challenger_version,
        evaluate.Rules(min_primary=0.99),
    )
    assert json.dumps(again.__dict__, default=list) == json.dumps(first.__dict__, default=list)


@pytest.mark.parametrize(
    ("challenger", "champion", "ci", "verdict", "reason"),
    [
        ({"roc_auc": 0.55, "log_loss": 0.5, "brier": 0.2}, None, None, "reject", "below the floor"),
        (
            {"roc_auc": 0.80, "log_loss": 0.50, "brier": 0.20},
            {"roc_auc": 0.79, "log_loss": 0.45, "brier": 0.20},
            (0.0, 0.02),
            "reject",
            "log_loss worsens by 0.0500",
        ),
        (
            {"roc_auc": 0.80, "log_loss": 0.45, "brier": 0.20},
            {"roc_auc": 0.79, "log_loss": 0.45, "brier": 0.20},
            (-0.05, 0.07),
            "reject",
            "allows a regression beyond 0.02",
        ),
        (
            {"roc_auc": 0.80, "log_loss": 0.45, "brier": 0.20},
            {"roc_auc": 0.79, "log_loss": 0.45, "brier": 0.20},
            (-0.01, 0.03),
            "promote",
            "roc_auc gain +0.0100",
        ),
    ],
)
def test_decision_rules(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    ci: tuple[float, float] | None,
    verdict: str,
    reason: str,
) -> None:
    got, reasons = evaluate.decide(challenger, champion, ci, evaluate.Rules())
    assert got == verdict
    assert any(reason in r for r in reasons), reasons


def test_the_offline_difference_from_the_champion_is_what_the_rollout_expects_live() -> None:
    new = np.array([0.12, 0.62, 0.83, 0.22], dtype=np.float32)
    old = np.array([0.3, 0.4, 0.7, 0.2], dtype=np.float32)
    versus = evaluate.versus_champion(new, old, "3")
    assert versus["champion_version"] == "3"
    assert versus["mean_abs_diff"] == pytest.approx((0.18 + 0.22 + 0.13 + 0.02) / 4)
    assert versus["disagreement"] == pytest.approx(1 / 4)  # only 0.62 vs 0.4 crosses 0.5
    assert versus["mean_diff"] == pytest.approx((-0.18 + 0.22 + 0.13 + 0.02) / 4)
    assert versus["rows"] == 4
    # Counted in the serving histogram's buckets, (0.1, 0.15] being the third: 0.12 -> 2,
    # 0.22 -> 4, 0.62 -> 12, 0.83 -> 16.
    counts = versus["challenger_counts"]
    assert len(counts) == 20
    assert [i for i, n in enumerate(counts) if n] == [2, 4, 12, 16]
    assert sum(versus["champion_counts"]) == 4
