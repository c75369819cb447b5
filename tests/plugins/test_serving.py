"""The rollout's decisions as values: plans, verdicts, analysis, routers' arithmetic, the
settings a run's Params become. No cluster: the session's I/O is tested in
test_rollout_session.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from helmsman.serving import objects
from helmsman.serving.analysis import (
    Figures,
    Offline,
    Paired,
    StepReport,
    Thresholds,
    buckets_from_cumulative,
    jensen_shannon,
    judge,
    pair,
    parse_prediction_log,
)
from helmsman.serving.kube import owned, progress
from helmsman.serving.session import Settings, Step, plan
from helmsman.serving.traffic import ReplicaRouter
from helmsman.serving.verify import pod_problems, verdict
from tests.k8s_policy import restricted_violations, schema_errors

T = Thresholds(min_requests=10)
TARGET = objects.Target("churn-serving", "ml", "churn", "7", replicas=4)


def figures(
    requests: float, errors: float = 0, p99: float = 5, hist: list[float] | None = None
) -> Figures:
    return Figures(requests, errors, p99, hist if hist is not None else [25, 25, 25, 25])


def report(new: Figures, stable: Figures, weight: int = 20, **kw: Any) -> StepReport:
    return judge(StepReport(f"{weight}%", weight, 10.0, new, stable, **kw), T)


def test_plans_for_each_strategy() -> None:
    canary = Settings(strategy="canary", steps=(5, 25, 50))
    assert plan(canary, can_mirror=True, replicas=2, first=False) == [
        Step(0, True),
        Step(5),
        Step(25),
        Step(50),
    ]
    assert plan(canary, can_mirror=False, replicas=2, first=False) == [Step(5), Step(25), Step(50)]
    no_shadow = Settings(strategy="canary", shadow=False)
    assert [s.name for s in plan(no_shadow, True, 2, False)] == ["5%", "25%", "50%"]
    blue_green = Settings(strategy="blue-green")
    assert [s.name for s in plan(blue_green, True, 2, False)] == ["shadow", "100%"]
    rolling = Settings(strategy="rolling")
    assert [s.weight for s in plan(rolling, False, 4, False)] == [25, 50, 75]
    # The first version has nothing to split traffic with or compare against.
    assert plan(canary, True, 2, first=True) == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "sideways"}, "strategy must be one of canary, blue-green, rolling"),
        ({"steps": (50, 25)}, "must rise strictly"),
        ({"steps": (5, 100)}, "between 0 and 100"),
        ({"steps": (5, 5)}, "must rise strictly"),
        ({"interval_s": 0}, "must be positive"),
    ],
)
def test_settings_refuse_what_cannot_work(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**settings)


def test_jensen_shannon_is_zero_for_the_same_distribution_and_one_for_disjoint_ones() -> None:
    assert jensen_shannon([1, 2, 3], [10, 20, 30]) == pytest.approx(0.0)
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    # Half the mass moved: m = (0.75, 0.25); KL(p||m) = log2(4/3) = 0.41504,
    # KL(q||m) = 0.5 log2(2/3) + 0.5 log2(2) = 0.20752; JS = their mean = 0.31128.
    assert jensen_shannon([1, 0, 0], [0.5, 0.5, 0]) == pytest.approx(0.3113, abs=1e-4)
    with pytest.raises(ValueError, match="cannot be compared"):
        jensen_shannon([1], [1, 2])


def test_cumulative_buckets_become_counts_per_bucket() -> None:
    assert buckets_from_cumulative({0.5: 3.0, 1.0: 5.0, float("inf"): 6.0}) == [3.0, 2.0, 1.0]
    # A counter reset inside the window must not make a bucket negative.
    assert buckets_from_cumulative({0.5: 3.0, 1.0: 2.0, float("inf"): 4.0}) == [3.0, 0.0, 1.0]


def test_judge_fails_each_check_with_its_figures_and_notes_what_it_could_not_judge() -> None:
    healthy = figures(100)
    assert report(figures(100), healthy).failures == []
    errors = report(figures(100, errors=5), healthy).failures
    assert errors == ["error rate 5.00% over 1.00% (5 of 100 requests; stable 0.00%)"]
    assert report(figures(100, p99=400), healthy).failures == ["p99 400 ms over 250 ms"]
    slower = report(figures(100, p99=120), figures(100, p99=40)).failures
    assert slower == ["p99 120 ms over 2x the stable version's 40 ms"]
    # Within the slack: 2x of a tiny p99 is noise, not a regression.
    assert report(figures(100, p99=12), figures(100, p99=4)).failures == []
    diverged = report(figures(100, hist=[100, 0, 0, 0]), figures(100, hist=[0, 0, 0, 100]))
    assert diverged.divergence == pytest.approx(1.0)
    assert "prediction distribution diverges" in diverged.failures[0]
    # Too few predictions to tell a shift from sampling noise: noted, not judged.
    few = report(figures(100, hist=[30, 0, 0, 0]), figures(100, hist=[0, 0, 0, 30]))
    assert (few.divergence, few.failures) == (None, [])
    assert few.notes == ["30 predictions on a side (under 100): distributions not compared"]
    quiet = report(figures(3, errors=3), healthy)
    assert quiet.failures == []
    assert "3 requests" in quiet.notes[0]


def test_a_step_prometheus_saw_nothing_of_fails_instead_of_passing_unjudged() -> None:
    unseen = Figures(scraped=False)
    judged = report(unseen, Figures(scraped=False))
    assert judged.failures == [
        "Prometheus has no series of either version: is it scraping the serving pods "
        "(labels slot, service, version)? Nothing was judged"
    ]
    # Scraped but quiet (no users in the window): noted, not failed.
    quiet = report(Figures(), Figures())
    assert quiet.failures == []
    assert quiet.notes


def test_judge_compares_the_shadow_pairs() -> None:
    paired = Paired(pairs=50, disagreement=0.3, mean_abs_diff=0.25)
    failures = report(figures(100), figures(100), weight=0, paired=paired).failures
    assert failures == [
        "shadow: decisions differ on 30.0% of 50 requests (over 10.0%)",
        "shadow: mean |score difference| 0.250 over 0.100",
    ]
    few = report(figures(100), figures(100), weight=0, paired=Paired(3, 1.0, 1.0))
    assert few.failures == []
    assert few.notes == ["shadow: 3 paired requests, too few to compare"]


def test_the_shadow_step_allows_what_evaluation_saw_between_the_versions_and_no_more() -> None:
    # Evaluation found the retrained model 0.13 away from the champion on average: live, the
    # same 0.13 is expected, not a fault; 0.13 + the 0.05 margin is the limit.
    offline = Offline(disagreement=0.12, mean_abs_diff=0.13)
    as_evaluated = Paired(pairs=200, disagreement=0.13, mean_abs_diff=0.14)
    judged = judge(StepReport("shadow", 0, 10.0, figures(100), figures(100), paired=as_evaluated),
                   T, offline=offline)  # fmt: skip
    assert judged.failures == []
    skewed = Paired(pairs=200, disagreement=0.3, mean_abs_diff=0.25)
    judged = judge(StepReport("shadow", 0, 10.0, figures(100), figures(100), paired=skewed),
                   T, offline=offline)  # fmt: skip
    assert judged.failures == [
        "shadow: decisions differ on 30.0% of 200 requests (over 17.0%)",
        "shadow: mean |score difference| 0.250 over 0.180",
    ]


def test_a_skew_shows_as_a_shift_from_the_signed_difference_evaluation_saw() -> None:
    # Two versions far apart (mean |diff| 0.3), the new one 0.1 lower on average offline.
    offline = Offline(disagreement=0.4, mean_abs_diff=0.3, mean_diff=-0.1)
    served_right = Paired(200, 0.4, 0.3, -0.11)
    judged = judge(StepReport("shadow", 0, 10.0, figures(100), figures(100),
                              paired=served_right), T, offline=offline)  # fmt: skip
    assert judged.failures == []
    skewed = Paired(200, 0.4, 0.32, +0.15)  # same spread, but every score pushed up
    judged = judge(StepReport("shadow", 0, 10.0, figures(100), figures(100), paired=skewed),
                   T, offline=offline)  # fmt: skip
    assert judged.failures == [
        "shadow: scores shifted by +0.250 from what evaluation saw (live +0.150, evaluation "
        "-0.100, margin 0.05)"
    ]


def test_a_distribution_is_judged_against_what_evaluation_saw_between_the_versions() -> None:
    # Two models far apart by design (evaluation: 0.7): live 0.75 is them, served right.
    offline = Offline(disagreement=0.0, mean_abs_diff=0.0, divergence=0.7)
    apart = figures(100, hist=[100, 0, 0, 0]), figures(100, hist=[30, 70, 0, 0])
    assert judge(StepReport("20%", 20, 10.0, *apart), T, offline=offline).failures == []
    # Without that baseline the same figures fail the absolute limit.
    failures = judge(StepReport("20%", 20, 10.0, *apart), T).failures
    assert failures[0].startswith("prediction distribution diverges")
    # Further apart than evaluation saw, beyond the margin: a serving fault.
    offline = Offline(disagreement=0.0, mean_abs_diff=0.0, divergence=0.2)
    failures = judge(StepReport("20%", 20, 10.0, *apart), T, offline=offline).failures
    assert failures[0].endswith("over 0.300 (evaluation saw 0.200)")


def test_a_switch_is_judged_against_the_stable_versions_window_before() -> None:
    # After a blue-green switch the stable version has no traffic of its own: no note about it.
    switched = judge(StepReport("100%", 100, 10.0, figures(100), figures(0)), T, compare_live=False)
    assert switched.failures == []
    assert switched.notes == []


def test_predictions_are_paired_by_request_id() -> None:
    log = "\n".join([
        'garbage line',
        json.dumps({"event": "prediction", "request_id": "a", "predictions": [0.9]}),
        json.dumps({"event": "prediction", "request_id": "b", "predictions": [0.2]}),
        json.dumps({"event": "model ready"}),
    ])  # fmt: skip
    stable = parse_prediction_log(log)
    assert stable == {"a": [0.9], "b": [0.2]}
    new = {"a": [0.4], "b": [0.25], "c": [0.5]}
    result = pair(stable, new, threshold=0.5)
    assert result.pairs == 2  # "c" was answered by one side only
    assert result.disagreement == pytest.approx(0.5)
    assert result.mean_abs_diff == pytest.approx((0.5 + 0.05) / 2)
    assert result.mean_diff == pytest.approx((-0.5 + 0.05) / 2)


def test_a_multiclass_models_predictions_pair_by_class_and_decide_by_the_most_probable() -> None:
    log = json.dumps({"event": "prediction", "request_id": "a",
                      "predictions": [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]})  # fmt: skip
    stable = parse_prediction_log(log)
    assert stable == {"a": [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]}
    # Row 1 keeps its class (0) with other probabilities; row 2 moves from class 2 to 1.
    new = {"a": [[0.5, 0.4, 0.1], [0.1, 0.5, 0.4]]}
    result = pair(stable, new, threshold=0.5)  # a threshold means nothing to argmax
    assert result.pairs == 1
    assert result.disagreement == pytest.approx(1 / 2)
    assert result.mean_abs_diff == pytest.approx((0.2 + 0.2 + 0 + 0 + 0.2 + 0.2) / 6)
    assert result.mean_diff == pytest.approx(0.0)  # probabilities sum to one on both sides
    # Versions with other numbers of classes are not compared score by score.
    assert pair(stable, {"a": [[0.5, 0.5], [0.5, 0.5]]}, 0.5).pairs == 0


def test_replica_ratio_splits_pods_and_keeps_one_stable_pod_until_promotion() -> None:
    router = ReplicaRouter(None, TARGET, "blue", "green", lambda _: [])  # type: ignore[arg-type]
    assert router.split(5) == (1, 3)
    assert router.split(25) == (1, 3)
    assert router.split(50) == (2, 2)
    assert router.split(90) == (4, 1)


def test_verification_names_what_is_wrong() -> None:
    assert verdict("7", {"7"}, [0.1, 0.2], [0.1, 0.2], 1e-4) == []
    reasons = verdict("7", {"6", "7"}, [0.1, 0.5], [0.1, 0.2], 1e-4)
    assert reasons[0] == "/metadata reports versions ['6', '7'], expected 7"
    assert reasons[1].startswith("golden-set predictions differ from evaluation by up to 0.3")
    # A multiclass golden set: a probability per class a row, compared class by class.
    assert verdict("7", {"7"}, [[0.2, 0.8]], [[0.2, 0.8]], 1e-4) == []
    (moved,) = verdict("7", {"7"}, [[0.2, 0.8]], [[0.3, 0.7]], 1e-4)
    assert moved.startswith("golden-set predictions differ from evaluation by up to 0.1")
    (shape,) = verdict("7", {"7"}, [0.2], [[0.2, 0.8]], 1e-4)
    assert shape == "golden set: 1 scores for 1 rows answered, where evaluation recorded 2 for 1"
    crashing = {"metadata": {"name": "p"}, "status": {"containerStatuses": [
        {"restartCount": 2, "lastState": {"terminated": {"exitCode": 3}},
         "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "oops"}}}]}}  # fmt: skip
    assert pod_problems([crashing]) == [
        "pod p restarted 2 time(s) (last exit code 3)",
        "pod p: CrashLoopBackOff oops",
    ]


def test_progress_reads_a_deployment_like_kubectl_rollout_status() -> None:
    d = {"metadata": {"name": "d", "namespace": "ml", "generation": 2},
         "spec": {"replicas": 2},
         "status": {"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2,
                    "availableReplicas": 1}}  # fmt: skip
    assert not progress(d).done
    d["status"]["availableReplicas"] = 2
    assert progress(d).done
    d["status"]["conditions"] = [{"type": "Progressing", "reason": "ProgressDeadlineExceeded",
                                  "message": "too slow"}]  # fmt: skip
    assert progress(d).failed == "deployment ml/d: too slow (updated 2/2, available 2/2)"


def test_only_helmsmans_own_objects_of_the_instance_are_owned() -> None:
    ours = objects.deployment(TARGET, "blue", 2)
    assert owned(ours, "churn-serving")
    assert not owned(ours, "other-instance")
    assert not owned({"metadata": {"labels": {"team": "x"}}}, "churn-serving")
    legacy = {"metadata": {"labels": {"app.kubernetes.io/part-of": "helmsman"}}}
    assert owned(legacy, "churn-serving")  # objects from releases before the managed-by label


def test_a_serving_pod_requests_the_models_resources_and_runs_a_worker_per_cpu() -> None:
    """serving.resources of model.yaml become the pod's requests (the memory limit twice the
    request), and the server's worker count is the CPU request, through the downward API."""
    default = objects.deployment(TARGET, "blue", 1)["spec"]["template"]["spec"]["containers"][0]
    assert default["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"},
                                    "limits": {"memory": "512Mi"}}  # fmt: skip
    big = objects.Target("churn-serving", "ml", "churn", "7", cpu="2", memory="1Gi")
    container = objects.deployment(big, "blue", 1)["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "1Gi"},
                                      "limits": {"memory": "2Gi"}}  # fmt: skip
    (workers,) = [e for e in container["env"] if e["name"] == "HELMSMAN_WORKERS"]
    field = workers["valueFrom"]["resourceFieldRef"]
    assert (field["resource"], field["divisor"]) == ("requests.cpu", "1")


def test_rendered_objects_pass_their_schemas_and_pss_restricted() -> None:
    gateway = objects.GatewayRef("helmsman-gateway")
    deployment = objects.deployment(TARGET, "green", 3)
    for obj in (deployment, objects.service(TARGET, "churn-serving", "green"),
                objects.route(TARGET, gateway, 25), objects.route(TARGET, gateway, 0, True),
                objects.autoscaler(TARGET, "green", 3), objects.budget(TARGET)):  # fmt: skip
        assert schema_errors(obj) is None, obj["kind"]
    assert restricted_violations(deployment["spec"]["template"]["spec"]) == []
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert labels[objects.SLOT_LABEL] == "green"
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model-uri") + 1] == "models:/churn/7"
    route = objects.route(TARGET, gateway, 25, mirror=True)
    rule = route["spec"]["rules"][0]
    assert [(b["name"], b["weight"]) for b in rule["backendRefs"]] == [
        ("churn-serving", 75),
        ("churn-serving-preview", 25),
    ]
    assert [f["type"] for f in rule["filters"]] == [
        "URLRewrite", "RequestHeaderModifier", "RequestMirror"
    ]  # fmt: skip
    # Each model under its own path, which the rewrite strips for the server.
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/models/churn"}}]
    assert rule["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"] == "/"
    assert objects.service(TARGET, "churn-serving", None)["spec"]["selector"] == {
        "app.kubernetes.io/name": "helmsman-serving",
        "app.kubernetes.io/instance": "churn-serving",
    }
