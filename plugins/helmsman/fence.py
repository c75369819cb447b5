"""The backfill fence: whether a finished training run may roll out, and why.

Historical runs train, evaluate and record everything, but must never replace what serves
today. The rules, in order (the first that applies decides):

1. ``dry_run``: never deploy.
2. A backfill run (``run_type == "backfill"``): never deploy, whatever ``deploy`` says.
3. A data interval that ends before the champion's: never deploy (a re-run of an old day
   must not replace a model trained on newer data).
4. ``deploy == "never"``: no deploy. ``deploy == "force"``: deploy even if evaluation
   rejected the challenger (the rollout's health gate still applies).
5. ``deploy == "auto"``: deploy exactly when evaluation decided "promote".

Pure and cheap: the decide task calls it with what it read from the DAG run and MLflow, logs
the decision and records it on the model version.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

DEPLOY_MODES = ("auto", "never", "force")


@dataclass(frozen=True)
class FenceDecision:
    deploy: bool
    reason: str


def decide(
    *,
    run_type: str,
    interval_end: dt.datetime,
    champion_interval_end: dt.datetime | None,
    evaluation: str,
    deploy: str = "auto",
    dry_run: bool = False,
) -> FenceDecision:
    if deploy not in DEPLOY_MODES:
        raise ValueError(f"deploy must be one of {', '.join(DEPLOY_MODES)}, not {deploy!r}")
    if evaluation not in ("promote", "reject"):
        raise ValueError(f"evaluation must be 'promote' or 'reject', not {evaluation!r}")
    if dry_run:
        return FenceDecision(False, "dry run: nothing is deployed")
    if run_type == "backfill":
        return FenceDecision(False, "backfill run: historical runs are recorded, never deployed")
    if champion_interval_end is not None and interval_end < champion_interval_end:
        return FenceDecision(
            False,
            f"data interval ends {interval_end.isoformat()}, before the champion's "
            f"{champion_interval_end.isoformat()}: an older model never replaces a newer one",
        )
    if deploy == "never":
        return FenceDecision(False, "deploy=never: recorded, not deployed")
    if deploy == "force":
        return FenceDecision(
            True, f"deploy=force (evaluation said {evaluation}); the health gate still applies"
        )
    if evaluation == "promote":
        return FenceDecision(True, "evaluation promoted the challenger")
    return FenceDecision(False, "evaluation rejected the challenger")
