"""The training DAG run through Airflow for real, against localcluster and a real MLflow server.

The scenarios build on each other, in order, on one stack (the way a platform lives):

1. a REST trigger with invalid Params is refused (400) and starts nothing;
2. the first run (REST trigger, valid Params) deploys, the model answers through the Gateway,
   and the Params reached the pods; then a second model of another kind (the diabetes
   regression) deploys beside it, on its own path, churn's serving untouched, and a third, a
   multiclass LightGBM model (the wine cultivar), answers a probability per class;
3. a worse challenger is recorded, not deployed; the champion is untouched;
4. a challenger that passes evaluation but is served wrong (train/serve skew in its serving
   image) is caught behind the preview Service: no user request ever reaches it;
5. a challenger wrong only on live traffic is caught in the shadow step, its figures kept on
   the version; again no failed user request;
6. a three-day backfill records three runs and deploys nothing;
7. a canary (the default) and a blue-green rollout of good challengers reach every user with no
   failed request, step by step;
8. the rollout task's process killed mid-step: the task's retry resumes the rollout and
   finishes it; then the feed shifts, shifted traffic reaches the champion, the monitor flags
   the shifted features and training starts from the drift asset's event;
9. every Kubernetes call Airflow made is allowed by the Role in deploy/rbac.yaml; Prometheus
   discovers pods as its own account; MLflow signs every call in, the pipeline as its own
   account, whose password no file of the runs holds.

A steady client sends the champion's golden-set rows through the Gateway during every rollout
and the test asserts what it saw.

The only thing emulated is the GPU node (an "emulated GPU" node in localcluster: the scheduler
and the pod spec are real; the training pod computes on this machine's CPU).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import itertools
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from kubernetes import client, config

from helmsman.serving import objects
from helmsman_steps import sources
from helmsman_steps.store import DatasetStore
from tests.cluster_fixtures import faulty_image
from tests.faults import record
from tests.k8s_policy import role_check
from tools import drift, prometheus
from tools.airflow_api import AirflowApi, ApiError
from tools.kubeaccess import Access
from tools.stack import REPO, Stack, backfill_runs_at_once
from tools.users import Users

DAG = "train_churn"
MODEL = "churn"
NS = "ml"
INSTANCE = "churn-serving"
# Small, quick runs: two days of 4000 rows, a few epochs; rollouts of short steps.
BASE = {"window_days": 2, "gpus": 1, "hidden": "16,8", "canary_steps": "20,50",
        "analysis_interval": 6}  # fmt: skip
TIMINGS: dict[str, float] = {}
TEST_AGENT = "helmsman-e2e-tests"


@pytest.fixture(scope="module")
def k8s(stack: Stack) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(stack.kubeconfig))
    api.user_agent = TEST_AGENT  # the RBAC check below tells the tests' calls from Airflow's
    yield api
    api.close()


@pytest.fixture(scope="module")
def registry(stack: Stack) -> Iterator[Any]:
    """The stack's registry, as its admin. The credentials are taken back from the process's
    environment afterwards: the suites after this one talk to servers of their own."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in stack.mlflow_env().items():
            if name != "MLFLOW_TRACKING_URI":
                patch.setenv(name, value)  # and back to what it was at the end
        yield stack.mlflow_client()


def run(airflow: AirflowApi, conf: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    started = time.monotonic()
    run_id = airflow.trigger(DAG, {**BASE, **conf})
    result = airflow.wait(DAG, run_id, timeout=900)
    TIMINGS[name] = time.monotonic() - started
    states = {t: ti["state"] for t, ti in airflow.task_instances(DAG, run_id).items()}
    return run_id, {"run": result, "states": states}


def service_address(stack: Stack, model: str = MODEL) -> str:
    """Where users reach a model: its path on the Gateway."""
    url = stack.model_url(model)
    assert url is not None, "the Gateway has no address"
    return url


def get_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - a Service address in the test cluster
        url, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return json.load(response)


def served_version(stack: Stack) -> str:
    return str(get_json(service_address(stack) + "/metadata")["model_version"])


def live_deployment(k8s: client.ApiClient) -> Any:
    """The Deployment of the slot the stable Service selects."""
    svc = client.CoreV1Api(k8s).read_namespaced_service(INSTANCE, NS)
    name = objects.deployment_name(INSTANCE, svc.spec.selector[objects.SLOT_LABEL])
    return client.AppsV1Api(k8s).read_namespaced_deployment(name, NS)


def serving_state(k8s: client.ApiClient) -> tuple[str, int]:
    """(live Deployment, its generation): unchanged means no rollout touched serving."""
    d = live_deployment(k8s)
    return d.metadata.name, int(d.metadata.generation)


def champion(registry: Any) -> str:
    return str(registry.get_model_version_by_alias(MODEL, "champion").version)


def golden_inputs(registry: Any, version: str, tmp: Path) -> list[dict[str, Any]]:
    run_id = registry.get_model_version(MODEL, version).run_id
    path = registry.download_artifacts(run_id, "evaluation/golden.json", str(tmp))
    inputs: list[dict[str, Any]] = json.loads(Path(path).read_text())["inputs"]
    return inputs


def test_1_invalid_params_are_refused_with_400_and_start_nothing(airflow: AirflowApi) -> None:
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    for conf, field in (
        ({"epochs": 0}, "epochs"),
        ({"strategy": "sideways"}, "strategy"),
        ({"hidden": "64,,32"}, "hidden"),
        ({"gpus": 9}, "gpus"),
        ({"canary_steps": "5,,25"}, "canary_steps"),
        ({"analysis_interval": 1}, "analysis_interval"),
        # Beyond what a training pod can run, or from a registry no one vetted.
        ({"seed": 10**30}, "seed"),
        ({"hidden": "64," + "9" * 40}, "hidden"),
        ({"serving_image": "docker.io/someone/serve:latest"}, "serving_image"),
        # What no schema says: a misspelt key, and a day with no data yet (Helmsman's check).
        ({"epoch": 3}, "unknown conf keys ['epoch']"),
        ({"data_end": str(tomorrow)}, f"data_end: {tomorrow} is in the future"),
    ):
        with pytest.raises(ApiError) as refused:
            airflow.trigger(DAG, conf)
        assert refused.value.status == 400, conf
        assert field in refused.value.detail, refused.value.detail
    # Someone Airflow would not let trigger gets Airflow's own answer, not the DAG's Params.
    stranger = AirflowApi(airflow.base_url, "nobody", "wrong", _token="not-a-token")  # noqa: S106
    with pytest.raises(ApiError) as refused:
        stranger.trigger(DAG, {"epoch": 3})
    assert refused.value.status in (401, 403), refused.value
    assert "epochs" not in refused.value.detail
    assert airflow.runs(DAG) == []
    record("bad conf (11 kinds: bounds, unknown key, future day, foreign image)", "stack",
           "400 naming the field; no run started", None, None)  # fmt: skip


def test_2_first_run_deploys_and_the_model_answers_through_the_gateway(
    airflow: AirflowApi, stack: Stack, k8s: client.ApiClient, registry: Any, tmp_path: Path
) -> None:
    conf = {"data_end": "2026-03-03", "epochs": 2, "seed": 11, "gpus": 2}
    run_id, result = run(airflow, conf, "first")
    assert result["run"]["state"] == "success", result["states"]
    train = airflow.task_instances(DAG, run_id)["train"]
    assert (train["pool"], train["pool_slots"]) == ("gpu", 2)  # slots follow the Param
    decision = airflow.xcom(DAG, run_id, "decide")
    assert decision["deploy"] is True
    assert decision["champion"] is None
    version = decision["version"]
    assert champion(registry) == version
    assert served_version(stack) == version

    rows = golden_inputs(registry, version, tmp_path)[:5]
    answer = get_json(service_address(stack) + "/predict", {"instances": rows})
    assert len(answer["predictions"]) == 5
    assert all(0.0 <= p <= 1.0 for p in answer["predictions"])

    # The Params reached the pods: the training run recorded what the trigger asked for.
    mv = registry.get_model_version(MODEL, version)
    params = registry.get_run(mv.run_id).data.params
    assert (params["epochs"], params["seed"], params["hidden"]) == ("2", "11", "(16, 8)")
    assert params["days"] == "2026-03-01..2026-03-02"
    # Lineage both ways: the version names the DAG run, the Deployment names both.
    assert mv.tags["helmsman.run_id"] == run_id
    assert mv.tags["helmsman.rollout"] == "passed"
    annotations = live_deployment(k8s).metadata.annotations
    assert annotations["helmsman.io/dag-run"] == run_id
    assert annotations["helmsman.io/model-uri"] == f"models:/{MODEL}/{version}"


def train_file_fed_model(airflow: AirflowApi, registry: Any, model: str) -> tuple[Any, Any]:
    """Train ``model`` on its two weeks of daily files through its DAG; it must be promoted
    and deployed. Returns the fence's decision and the model version."""
    dag = f"train_{model}"
    airflow.wait_for_dag(dag)
    airflow.unpause(dag)
    conf = {"data_end": "2026-02-15", "window_days": 14, "canary_steps": "50",
            "analysis_interval": 6}  # fmt: skip
    run_id = airflow.trigger(dag, conf)
    result = airflow.wait(dag, run_id, timeout=900)
    states = {t: ti["state"] for t, ti in airflow.task_instances(dag, run_id).items()}
    assert result["state"] == "success", states
    decision = airflow.xcom(dag, run_id, "decide")
    assert (decision["evaluation"], decision["deploy"]) == ("promote", True)
    return decision, registry.get_model_version(model, decision["version"])


def test_2b_a_second_model_of_another_kind_deploys_beside_the_first(
    airflow: AirflowApi, stack: Stack, k8s: client.ApiClient, registry: Any
) -> None:
    """The diabetes regression (scikit-learn gradient boosting, ONNX-served, fed as daily
    files) runs through the same DAG factory, pods and gated rollout; it gets its own
    Deployment, Service and route, and churn's serving is not touched."""
    churn_serving, churn_version = serving_state(k8s), served_version(stack)
    decision, mv = train_file_fed_model(airflow, registry, "diabetes")
    assert registry.get_run(mv.run_id).data.params["trainer"] == "GradientBoostingRegressor"
    patient = {"age": 59, "sex": 2, "bmi": 32.1, "bp": 101, "tc": 157, "ldl": 93.2, "hdl": 38,
               "tch": 4, "ltg": 4.86, "glu": 87}  # fmt: skip
    answer = get_json(service_address(stack, "diabetes") + "/predict", {"instances": [patient]})
    assert answer["model_version"] == decision["version"]
    assert 25 <= answer["predictions"][0] <= 346
    apps = client.AppsV1Api(k8s)
    names = {d.metadata.name for d in apps.list_namespaced_deployment(NS).items}
    assert any(n.startswith("diabetes-serving-") for n in names), names
    assert serving_state(k8s) == churn_serving  # churn's slot untouched
    assert served_version(stack) == churn_version


def test_2c_a_multiclass_model_deploys_and_answers_a_probability_per_class(
    airflow: AirflowApi, stack: Stack, k8s: client.ApiClient, registry: Any
) -> None:
    """The wine cultivar (three classes, LightGBM, ONNX-served, fed as daily files) through
    the same factory, pods and gated rollout: the preview's golden-set parity and the live
    steps compare a probability per class."""
    decision, mv = train_file_fed_model(airflow, registry, "wine")
    assert registry.get_run(mv.run_id).data.params["trainer"] == "LGBMClassifier"
    assert mv.tags["helmsman.rollout"] == "passed"
    wine = {"alcohol": 13.2, "malic_acid": 1.78, "ash": 2.14, "alcalinity_of_ash": 11.2,
            "magnesium": 100.0, "total_phenols": 2.65, "flavanoids": 2.76,
            "nonflavanoid_phenols": 0.26, "proanthocyanins": 1.28, "color_intensity": 4.38,
            "hue": 1.05, "od280_od315": 3.4, "proline": 1050.0}  # fmt: skip
    answer = get_json(service_address(stack, "wine") + "/predict", {"instances": [wine]})
    assert answer["model_version"] == decision["version"]
    assert answer["classes"] == ["cultivar_1", "cultivar_2", "cultivar_3"]
    (probabilities,) = answer["predictions"]
    assert len(probabilities) == 3
    assert abs(sum(probabilities) - 1) < 1e-5
    assert max(range(3), key=probabilities.__getitem__) == 0  # wine 1 of the study: cultivar 1


def test_2d_every_port_the_stack_and_its_pods_listen_on_is_on_loopback(stack: Stack) -> None:
    """Nothing the local stack runs is reachable from another machine: every listening socket
    of every component and of every pod process it started (serving pods included, three
    models serve by now) is bound to a loopback address, never a wildcard."""
    import ipaddress

    listening: dict[str, set[str]] = {}
    pods: set[str] = set()  # the addresses pod processes (below localcluster) listen on
    for name, pid in stack.pids.items():
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                sockets = proc.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            for sock in sockets:
                if sock.status == psutil.CONN_LISTEN:
                    listening.setdefault(f"{name}/{proc.name()}", set()).add(sock.laddr.ip)
                    if name == "localcluster" and proc.pid != pid:
                        pods.add(sock.laddr.ip)
    assert {"api-server", "mlflow", "localcluster"} <= {k.split("/")[0] for k in listening}
    assert pods, f"no pod process listens: {listening}"  # the pods were looked at
    exposed = {where: ips for where, ips in listening.items()
               if not all(ipaddress.ip_address(ip).is_loopback for ip in ips)}  # fmt: skip
    assert exposed == {}, listening
    # Nor can a local process break the stack's cluster on purpose: no fault endpoint.
    admin = Access.from_kubeconfig(stack.kubeconfig)
    with pytest.raises(urllib.error.HTTPError) as missing:
        admin.open("/localcluster/faults")
    assert missing.value.code == 404
    # ... and the cluster speaks TLS only, to callers with a token.
    with pytest.raises((ConnectionError, urllib.error.URLError)):  # plain HTTP: closed
        urllib.request.urlopen(stack.cluster_url.replace("https:", "http:"), timeout=10)  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(  # noqa: S310 - the stack's own cluster
            f"{stack.cluster_url}/api/v1/namespaces/ml/secrets", timeout=10,
            context=admin.ssl_context(),
        )  # fmt: skip
    assert anonymous.value.code == 403


def test_3_a_worse_challenger_is_recorded_and_not_deployed(
    airflow: AirflowApi, stack: Stack, k8s: client.ApiClient, registry: Any
) -> None:
    before = champion(registry)
    serving = serving_state(k8s)
    conf = {"data_end": "2026-03-04", "epochs": 1, "hidden": "1", "learning_rate": 0.00001}
    run_id, result = run(airflow, conf, "worse challenger")
    assert result["run"]["state"] == "success", result["states"]
    assert result["states"]["rollout"] == "skipped"
    assert result["states"]["promote"] == "skipped"
    decision = airflow.xcom(DAG, run_id, "decide")
    assert decision["evaluation"] == "reject"
    assert decision["deploy"] is False
    assert champion(registry) == before
    assert served_version(stack) == before
    assert serving_state(k8s) == serving
    tags = registry.get_model_version(MODEL, decision["version"]).tags
    assert tags["helmsman.fence"] == "hold"
    assert tags["helmsman.decision"] == "reject"


def users(stack: Stack, registry: Any, tmp: Path) -> Users:
    """A steady client on the Gateway: one prediction every 20 ms, the champion's golden-set
    rows in turn."""
    return Users(service_address(stack), golden_inputs(registry, champion(registry), tmp))


def test_4_a_challenger_served_wrong_is_caught_before_any_user_sees_it(
    airflow: AirflowApi, stack: Stack, k8s: client.ApiClient, registry: Any, tmp_path: Path
) -> None:
    before = champion(registry)
    serving = serving_state(k8s)
    skewed = faulty_image("skewed")
    conf = {"data_end": "2026-03-05", "epochs": 8, "min_improvement": -1.0,
            "serving_image": skewed}  # fmt: skip
    with users(stack, registry, tmp_path) as loop:
        run_id, result = run(airflow, conf, "skewed challenger (caught in preview)")
    assert result["run"]["state"] == "failed"
    assert result["states"]["rollout"] == "failed"
    assert result["states"]["promote"] == "upstream_failed"
    decision = airflow.xcom(DAG, run_id, "decide")
    assert decision["evaluation"] == "promote", "the challenger should pass evaluation"
    rejected = decision["version"]
    assert champion(registry) == before
    assert served_version(stack) == before
    tags = registry.get_model_version(MODEL, rejected).tags
    assert tags["helmsman.rollout"] == "rejected"
    assert "golden-set predictions differ" in tags["helmsman.rollout_reason"]
    log = airflow.task_log(DAG, run_id, "rollout")
    assert "rollout check failed: golden-set predictions differ" in log
    assert f"rolled back, version {before} serves again" in log
    assert airflow.task_instances(DAG, run_id)["rollout"]["try_number"] == 1  # no retry

    assert loop.failures == [], loop.failures[:5]
    assert len(loop.answers) > 100
    assert set(loop.versions()) == {before}  # no user request ever reached the skewed pods
    assert serving_state(k8s) == serving  # the live slot was never touched
    assert live_deployment(k8s).spec.template.spec.containers[0].image != skewed
    record("challenger served wrong (train/serve skew)", "stack",
           "caught behind the preview Service, no retry; champion serves", len(loop.failures),
           0)  # fmt: skip


def test_5_a_challenger_wrong_only_on_live_traffic_is_caught_in_the_shadow_step(
    airflow: AirflowApi, stack: Stack, registry: Any, tmp_path: Path
) -> None:
    before = champion(registry)
    conf = {"data_end": "2026-03-09", "epochs": 8, "min_improvement": -1.0,
            "serving_image": faulty_image("skew-live")}  # fmt: skip
    with users(stack, registry, tmp_path) as loop:
        run_id, result = run(airflow, conf, "live-only fault (caught in shadow)")
    assert result["states"]["rollout"] == "failed", airflow.xcom(DAG, run_id, "rollout")
    rejected = airflow.xcom(DAG, run_id, "decide")["version"]
    assert champion(registry) == before
    assert loop.failures == [], loop.failures[:5]
    assert set(loop.versions()) == {before}  # the shadow's answers were discarded
    tags = registry.get_model_version(MODEL, rejected).tags
    assert tags["helmsman.rollout"] == "rejected"
    reasons = tags["helmsman.rollout_reason"].split("; ")
    assert all(r.startswith("step shadow: ") for r in reasons), reasons
    figures = json.loads(tags["helmsman.rollout_figures"])
    assert figures[0]["step"] == "shadow"
    paired = figures[0]["paired"]
    assert paired["pairs"] > 50  # the same live requests, answered by both versions
    assert paired["disagreement"] > 0.1 or paired["mean_abs_diff"] > 0.1, paired
    # Every figure of the rollout is kept with the version's run in MLflow.
    run_artifacts = registry.list_artifacts(registry.get_model_version(MODEL, rejected).run_id,
                                            "rollout")  # fmt: skip
    assert [a.path for a in run_artifacts] == [f"rollout/{DAG}__{run_id}.json"]
    record("challenger wrong on live traffic only", "stack",
           "caught in the shadow step; champion serves", len(loop.failures), 0)  # fmt: skip


def test_6_a_three_day_backfill_records_three_runs_and_deploys_nothing(
    airflow: AirflowApi, stack: Stack, k8s: client.ApiClient, registry: Any
) -> None:
    before = champion(registry)
    serving = serving_state(k8s)
    started = time.monotonic()
    at_once = backfill_runs_at_once()
    assert at_once >= 2
    airflow.backfill(DAG, "2026-03-06T00:00:00Z", "2026-03-08T23:59:59Z", max_active_runs=at_once)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        runs = [r for r in airflow.runs(DAG) if r["run_type"] == "backfill"]
        if len(runs) == 3 and all(r["state"] in ("success", "failed") for r in runs):
            break
        time.sleep(3)
    TIMINGS["3-day backfill"] = time.monotonic() - started
    assert [r["state"] for r in runs] == ["success"] * 3
    versions = []
    for r in runs:
        tis = airflow.task_instances(DAG, r["dag_run_id"])
        # The cluster policy moved the backfill's GPU task to the backfill pool.
        assert (tis["train"]["pool"], tis["train"]["pool_slots"]) == ("gpu_backfill", 1)
        states = {t: ti["state"] for t, ti in tis.items()}
        assert (states["rollout"], states["promote"]) == ("skipped", "skipped"), states
        decision = airflow.xcom(DAG, r["dag_run_id"], "decide")
        assert decision["deploy"] is False
        assert "backfill" in decision["reason"]
        versions.append(decision["version"])
        tags = registry.get_model_version(MODEL, decision["version"]).tags
        assert tags["helmsman.fence"] == "hold"
    assert len(set(versions)) == 3
    intervals = sorted(r["data_interval_start"][:10] for r in runs)
    assert intervals == ["2026-03-06", "2026-03-07", "2026-03-08"]
    # ... and some of them ran at the same time.
    spans = sorted(tuple(dt.datetime.fromisoformat(r[k]) for k in ("start_date", "end_date"))
                   for r in runs)  # fmt: skip
    assert any(b_start < a_end for (_, a_end), (b_start, _) in itertools.pairwise(spans)), spans
    assert champion(registry) == before
    assert served_version(stack) == before
    assert serving_state(k8s) == serving


@pytest.mark.parametrize(
    ("strategy", "steps"),
    [("canary", ["shadow", "20%", "50%"]), ("blue-green", ["shadow", "100%"])],
)
def test_7_good_challengers_reach_every_user_step_by_step_with_no_failed_request(
    strategy: str, steps: list[str], airflow: AirflowApi, stack: Stack, k8s: client.ApiClient,
    registry: Any, tmp_path: Path,
) -> None:  # fmt: skip
    before = champion(registry)
    end = {"canary": "2026-03-21", "blue-green": "2026-03-22"}[strategy]  # newer each time
    # Forced: the rollout is under test, whatever evaluation's secondary rules say of a model
    # this small (force still goes through every check of the rollout).
    conf = {"data_end": end, "epochs": 4, "deploy": "force", "strategy": strategy}
    with users(stack, registry, tmp_path) as loop:
        run_id, result = run(airflow, conf, f"{strategy} rollout")
        time.sleep(1)
    log = airflow.task_log(DAG, run_id, "rollout")
    assert result["run"]["state"] == "success", (result["states"], log[-4000:])
    decision = airflow.xcom(DAG, run_id, "decide")
    assert result["states"]["rollout"] == "success", (result["states"], decision)
    version = decision["version"]
    outcome = airflow.xcom(DAG, run_id, "rollout")
    assert [s["step"] for s in outcome["steps"]] == steps
    assert all(s["passed"] for s in outcome["steps"])
    assert loop.failures == [], loop.failures[:5]
    assert set(loop.versions()) == {before, version}
    assert champion(registry) == version
    assert registry.get_model_version_by_alias(MODEL, "previous-champion").version == before
    assert {served_version(stack) for _ in range(8)} == {version}
    route = client.CustomObjectsApi(k8s).get_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", NS, "httproutes", INSTANCE
    )
    weights = [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]]
    assert weights == [100, 0]  # all on the stable Service, which now selects the new slot
    hpa = client.AutoscalingV2Api(k8s).read_namespaced_horizontal_pod_autoscaler(INSTANCE, NS)
    assert hpa.spec.scale_target_ref.name == live_deployment(k8s).metadata.name
    TIMINGS[f"{strategy} rollout task"] = outcome["seconds"]


@pytest.mark.timeout(600)
def test_8_a_rollout_task_killed_mid_step_is_resumed_by_its_retry(
    airflow: AirflowApi, stack: Stack, k8s: client.ApiClient, registry: Any, tmp_path: Path
) -> None:
    conf = {"data_end": "2026-03-23", "epochs": 4, "deploy": "force",
            "analysis_interval": 10}  # fmt: skip
    custom = client.CustomObjectsApi(k8s)
    with users(stack, registry, tmp_path) as loop:
        run_id = airflow.trigger(DAG, {**BASE, **conf})
        deadline = time.monotonic() + 600
        killed = None
        while killed is None and time.monotonic() < deadline:
            rollout_ti = airflow.task_instances(DAG, run_id).get("rollout", {})
            route = None
            if rollout_ti.get("state") == "running":
                route = custom.get_namespaced_custom_object(
                    "gateway.networking.k8s.io", "v1", NS, "httproutes", INSTANCE
                )
            if route and route["spec"]["rules"][0]["backendRefs"][1]["weight"] == 20:
                # The LocalExecutor worker and the task process it forks both name the task
                # instance in their titles; the task's own process is the one whose parent is
                # the worker (found by relation, not by PID order: PIDs wrap on a long run).
                # SIGKILL it, as the OOM killer or a lost node would.
                named = {p.pid: p for p in psutil.process_iter(["cmdline"])
                         if rollout_ti["id"] in " ".join(p.info["cmdline"] or [])}  # fmt: skip
                tasks = [p for p in named.values() if p.ppid() in named]
                for task in tasks:
                    task.kill()
                killed = [t.pid for t in tasks] or None  # not started yet: look again
            time.sleep(0.5)
        assert killed, "the rollout never reached its 20% step"
        killed_at = time.monotonic()
        result = airflow.wait(DAG, run_id, timeout=900)
        recovered = time.monotonic() - killed_at
        time.sleep(1)
    assert result["state"] == "success"
    rollout_ti = airflow.task_instances(DAG, run_id)["rollout"]
    assert rollout_ti["try_number"] == 2  # the retry, not a second rollout
    log = airflow.task_log(DAG, run_id, "rollout", try_number=2)
    assert "resuming the rollout of version" in log
    version = airflow.xcom(DAG, run_id, "decide")["version"]
    assert served_version(stack) == version
    assert loop.failures == [], loop.failures[:5]
    record("rollout task SIGKILLed at its 20% step", "stack",
           "the retry resumed the rollout from its record and finished it",
           len(loop.failures), recovered)  # fmt: skip


def running_train_pod(stack: Stack, airflow: AirflowApi, run_id: str) -> str:
    """The name of the run's train pod once it is running (its task's first try)."""

    def pod() -> str | None:
        if airflow.task_instances(DAG, run_id).get("train", {}).get("state") != "running":
            return None
        pods = json.loads(stack.kubectl("-n", NS, "get", "pods", "-o", "json", "-l",
                                        "app.kubernetes.io/component=train"))["items"]  # fmt: skip
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return str(running[0]["metadata"]["name"]) if running else None

    deadline = time.monotonic() + 300
    while (name := pod()) is None:
        assert time.monotonic() < deadline, "the train pod never ran"
        time.sleep(0.5)
    time.sleep(2)  # into its training, not its start
    return name


def train_pods(stack: Stack) -> list[str]:
    out = stack.kubectl("-n", NS, "get", "pods", "-o", "name", "-l",
                        "app.kubernetes.io/component=train")  # fmt: skip
    return out.split()


def retried_once(
    airflow: AirflowApi, stack: Stack, registry: Any, run_id: str, result: dict[str, Any],
    before: str, loop: Users,
) -> None:  # fmt: skip
    """A fault in training cost one retry of train and nothing else: the run succeeded, no
    train pod is left (the failed try's went with it; the retry's succeeded), the champion and
    its users untouched."""
    states = airflow.task_instances(DAG, run_id)
    assert result["state"] == "success", states
    assert states["train"]["try_number"] == 2  # one retry, not a storm
    assert train_pods(stack) == []
    assert champion(registry) == before
    assert loop.failures == [], loop.failures[:5]


# Short runs that record a version and deploy nothing: the faults are in training.
RECORD_ONLY = {"epochs": 20, "deploy": "never"}


@pytest.mark.timeout(600)
def test_8c_a_scheduler_killed_mid_train_is_restarted_and_the_run_finishes(
    airflow: AirflowApi, stack: Stack, registry: Any, tmp_path: Path
) -> None:
    """The scheduler dies (the OOM killer) while a train pod runs. The stack's restart stops
    the dead scheduler's workers first, so no old try outlives it and deletes what a new try
    owns; the killed try ends, its retry trains again, and users never notice."""
    before = champion(registry)
    with users(stack, registry, tmp_path) as loop:
        run_id = airflow.trigger(DAG, {**BASE, **RECORD_ONLY, "data_end": "2026-03-24"})
        running_train_pod(stack, airflow, run_id)
        scheduler = psutil.Process(stack.pids["scheduler"])
        workers = [p.pid for p in scheduler.children(recursive=True)]
        scheduler.kill()
        scheduler.wait(10)
        killed_at = time.monotonic()
        said: list[str] = []
        stack.up(say=said.append)
        result = airflow.wait(DAG, run_id, timeout=600)
        recovered = time.monotonic() - killed_at
    assert any("that dead components left behind" in line for line in said), said
    assert [pid for pid in workers if psutil.pid_exists(pid)] == []
    retried_once(airflow, stack, registry, run_id, result, before, loop)
    record("scheduler SIGKILLed mid-train, then restarted", "stack",
           "old workers stopped; train retried once (5 s retry delay); run succeeded",
           len(loop.failures), recovered)  # fmt: skip


@pytest.mark.timeout(600)
def test_8d_a_train_pod_deleted_mid_train_is_replaced_by_the_retry(
    airflow: AirflowApi, stack: Stack, registry: Any, tmp_path: Path
) -> None:
    before = champion(registry)
    with users(stack, registry, tmp_path) as loop:
        run_id = airflow.trigger(DAG, {**BASE, **RECORD_ONLY, "data_end": "2026-03-25"})
        name = running_train_pod(stack, airflow, run_id)
        stack.kubectl("-n", NS, "delete", "pod", name, "--wait=false")
        deleted_at = time.monotonic()
        result = airflow.wait(DAG, run_id, timeout=600)
        recovered = time.monotonic() - deleted_at
    retried_once(airflow, stack, registry, run_id, result, before, loop)
    assert f'pods \\"{name}\\" not found' in airflow.task_log(DAG, run_id, "train", try_number=1)
    record("train pod deleted mid-train", "stack",
           "the try failed, its retry (5 s delay) trained in a new pod; run succeeded",
           len(loop.failures), recovered)  # fmt: skip


@pytest.mark.timeout(1200)
def test_8b_a_shift_in_live_traffic_is_flagged_and_retrains_on_the_shifted_day(
    stack: Stack, airflow: AirflowApi, registry: Any
) -> None:
    """The monitoring loop, as `make drift` shows it: the feed shifts from today on, shifted
    requests reach the champion through the Gateway, ``monitor_churn`` (its KPO pod) flags the
    shifted features, and ``train_churn`` starts from the drift asset's event and trains on the
    days up to the window's, today's shifted records included."""
    today = dt.datetime.now(dt.UTC).date()
    stack.inject_shift(today)
    version = champion(registry)
    since = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    # 6,000 rows in 300 requests; a tenth of the requests is logged: about 600 rows.
    assert drift.send(service_address(stack), drift.shifted_batches(today, 6000)) == 300
    drift.wait_logged(stack, version, since, 400, timeout=120)
    said: list[str] = []
    found = drift.detect_and_retrain(airflow, say=said.append, timeout=900)
    TIMINGS["drift_to_retrained"] = time.monotonic() - started
    print("\n" + "\n".join(said))

    assert found.state == "success", said
    assert found.alarm is not None, said
    assert found.alarm["version"] == version
    flagged = {b["what"] for b in found.alarm["breaches"]} - {"prediction"}
    assert flagged == set(sources.SHIFT), found.alarm["breaches"]
    # Prometheus has the verdict too: the monitor pod pushed it, Prometheus scraped it.
    series = prometheus_query(stack, f'helmsman_monitor_feature_drifted{{model="{MODEL}"}}')
    assert {s["metric"]["version"] for s in series} == {version}
    drifted = {s["metric"]["feature"] for s in series if float(s["value"][1]) == 1}
    assert drifted == set(sources.SHIFT), series
    assert found.retraining is not None, said
    assert found.retraining["state"] == "success"
    # The event chose the window: it ends after the monitored window's day (today).
    window_end = dt.datetime.fromisoformat(found.alarm["window_end"])
    plan = airflow.xcom(DAG, found.retraining["dag_run_id"], "plan")
    assert plan["end"] == str(
        (window_end - dt.timedelta(microseconds=1)).date() + dt.timedelta(days=1)
    )
    # ... so the retraining read today's records from the shifted feed.
    store = DatasetStore(str(stack.root / "datasets" / MODEL))
    now, before = (store.read_features([d]) for d in (today, today - dt.timedelta(days=1)))
    ratio = now["monthly_charges"].median() / before["monthly_charges"].median()
    print(f"retrained on {plan['window_start']}..{plan['end']}: today's median monthly charges "
          f"{ratio:.2f}x yesterday's")  # fmt: skip
    assert ratio > 1.4


def test_9_every_kubernetes_call_airflow_made_is_allowed_by_the_role(stack: Stack) -> None:
    ours = ("kubectl", TEST_AGENT)
    check = role_check(REPO / "deploy" / "rbac.yaml", stack.audit_log, ours)
    assert check.made, "the audit log saw no call from Airflow"
    # Airflow made every one of them as its service account, which only the Role empowers
    # (localcluster enforces RBAC: a call outside the Role would have failed the scenario) ...
    calls = [json.loads(line) for line in stack.audit_log.read_text().splitlines()]
    theirs = [c for c in calls if not c["userAgent"].startswith(ours)]
    allowed = {c["user"] for c in theirs if c["decision"] == "allow"}
    assert allowed == {"system:serviceaccount:airflow:airflow-worker"}
    # The only refusals: test 2d's anonymous probe (had Airflow been refused, a task failed).
    assert {c["user"] for c in theirs if c["decision"] != "allow"} <= {"system:anonymous"}
    # ... and what the Role does not grant is refused to that identity.
    for args, refusal in (
        (("-n", "ml", "get", "secrets"), 'cannot list resource "secrets" in API group ""'),
        (("-n", "default", "get", "pods"), 'in the namespace "default"'),
        (("-n", "ml", "delete", "deployment", "x"), 'cannot delete resource "deployments"'),
    ):
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(stack.airflow_kubeconfig), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 1, (args, done.stderr)
        assert "(Forbidden)" in done.stderr, done.stderr
        assert refusal in done.stderr, done.stderr
    assert check.outside == [], f"calls outside the Role's namespace: {check.outside}"
    assert check.denied == [], f"calls the Role does not allow: {check.denied}"
    print("\nRBAC: rules granted but not exercised by the scenarios:", check.unused)
    print("scenario timings (s):", {k: round(v, 1) for k, v in TIMINGS.items()})


def test_9b_prometheus_discovers_the_serving_pods_as_its_own_account_and_nothing_more(
    stack: Stack,
) -> None:
    """Prometheus scrapes with the ``prometheus`` service account's token, which the cluster
    allows its discovery URL and nothing else (the rollouts above were judged on its scrapes)."""
    token = (stack.root / "prometheus" / prometheus.CREDENTIALS / "token").read_text()
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["sub"] == "system:serviceaccount:monitoring:prometheus"
    access = dataclasses.replace(Access.from_kubeconfig(stack.kubeconfig), token=token)
    with access.open(f"{prometheus.SD_PATH}?namespace={NS}") as response:
        groups = json.load(response)
    assert groups, "no serving pod discovered"
    assert {g["labels"]["__meta_kubernetes_namespace"] for g in groups} == {NS}
    for path in (f"/api/v1/namespaces/{NS}/secrets", f"/api/v1/namespaces/{NS}/pods", "/metrics"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            access.open(path).close()
        assert refused.value.code == 403, path
    # ... and Prometheus itself, with that token, finds and scrapes them.
    targets_url = f"{stack.prometheus_url}/api/v1/targets"
    with urllib.request.urlopen(targets_url, timeout=10) as response:  # noqa: S310 - http
        targets = json.load(response)["data"]["activeTargets"]
    serving = [t for t in targets if t["labels"]["job"] == "helmsman-serving"]
    assert any(t["health"] == "up" for t in serving), targets


def prometheus_query(stack: Stack, query: str) -> list[dict[str, Any]]:
    """The stack's Prometheus' answer to an instant ``query``: its series."""
    url = f"{stack.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - http
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def secret_env(stack: Stack, name: str) -> dict[str, str]:
    """What a pod reading Secret ``name`` by envFrom gets."""
    secret = json.loads(stack.kubectl("-n", NS, "get", "secret", name, "-o", "json"))
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def test_9c_mlflow_signs_every_call_in_and_the_pipeline_is_not_its_admin(stack: Stack) -> None:
    """The stack's MLflow runs its basic-auth app. Its pods and tasks signed in as the pipeline's
    account (from the Secret and the connection): the models they registered are its to manage,
    and its password is in no log."""
    import requests

    search = f"{stack.mlflow_url}/api/2.0/mlflow/registered-models/search"
    assert requests.get(search, timeout=10).status_code == 401
    assert requests.get(search, auth=("helmsman", "guessed"), timeout=10).status_code == 401
    pod_env = secret_env(stack, "helmsman-mlflow")
    user, password = pod_env["MLFLOW_TRACKING_USERNAME"], pod_env["MLFLOW_TRACKING_PASSWORD"]
    assert user != "admin"
    pipeline = requests.Session()
    pipeline.auth = (user, password)
    assert pipeline.get(search, timeout=10).status_code == 200
    # Not an admin: it may not make accounts or grant itself more.
    make_user = f"{stack.mlflow_url}/api/2.0/mlflow/users/create"
    denied = pipeline.post(make_user, json={"username": "x", "password": "y"}, timeout=10)
    assert denied.status_code == 403
    # The train pods registered the models as that account, which therefore manages them.
    admin = requests.Session()
    admin.auth = ("admin", stack.mlflow_env()["MLFLOW_TRACKING_PASSWORD"])
    permission = admin.get(
        f"{stack.mlflow_url}/api/3.0/mlflow/users/permissions/get",
        params={"username": user, "resource_type": "registered_model", "resource_id": MODEL},
        timeout=10,
    )  # fmt: skip
    assert permission.ok, permission.text
    assert permission.json()["permission"] == "MANAGE"
    # The serving pods sign in with an account of their own, which reads the models it serves
    # and changes none: a serving pod's credentials cannot move @champion.
    selector = f"app.kubernetes.io/instance={INSTANCE}"
    served = json.loads(stack.kubectl("-n", NS, "get", "deployments", "-l", selector, "-o", "json"))
    assert served["items"]
    for deployment in served["items"]:
        sources = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        secrets = [s["secretRef"]["name"] for s in sources if "secretRef" in s]
        assert secrets == ["helmsman-mlflow-serving"], deployment["metadata"]["name"]
    reader_env = secret_env(stack, "helmsman-mlflow-serving")
    reader = requests.Session()
    reader.auth = (reader_env["MLFLOW_TRACKING_USERNAME"], reader_env["MLFLOW_TRACKING_PASSWORD"])
    assert reader.auth[0] not in {"admin", user}
    models = f"{stack.mlflow_url}/api/2.0/mlflow/registered-models"
    champion = reader.get(f"{models}/alias", params={"name": MODEL, "alias": "champion"},
                          timeout=10)  # fmt: skip
    assert champion.status_code == 200, champion.text
    version = champion.json()["model_version"]["version"]
    moved = reader.post(f"{models}/alias", timeout=10,
                        json={"name": MODEL, "alias": "champion", "version": version})  # fmt: skip
    assert moved.status_code == 403
    tagged = reader.post(f"{models}/set-tag", json={"name": MODEL, "key": "k", "value": "v"},
                         timeout=10)  # fmt: skip
    assert tagged.status_code == 403
    # No file the runs above wrote holds either password: task and pod logs, Airflow's database
    # (XCom, rendered templates), the cluster's state, the datasets. Only MLflow's folder does.
    secrets_in = stack.mlflow_credentials_file.parent
    passwords = [password.encode(), reader_env["MLFLOW_TRACKING_PASSWORD"].encode()]
    leaked = [
        path for path in stack.root.rglob("*")
        if path.is_file() and secrets_in not in path.parents
        and any(secret in path.read_bytes() for secret in passwords)
    ]  # fmt: skip
    assert not leaked, leaked
