"""The rollout session for real: localcluster with its Gateway, a real MLflow server with two
trained versions, a real Prometheus scraping the serving pods, and a steady client on the
Gateway's route that records what users saw.

The scenarios build on each other, in order, on one cluster (the way an instance lives):
first version, a good version through every step, bad versions of each kind, a session killed
mid-step, an abandoned rollout, API errors in every phase, a foreign object, and traffic by
the replica ratio where there is no Gateway.
"""

from __future__ import annotations

import base64
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from helmsman import models
from helmsman.serving import objects
from helmsman.serving.analysis import Prometheus, Thresholds
from helmsman.serving.kube import Kube, NotOwned
from helmsman.serving.session import (
    RECORD_ANNOTATION,
    RolloutBusy,
    RolloutSession,
    Settings,
)
from helmsman.serving.verify import Checks, Rejected
from helmsman_steps import contract
from tests import faults as table
from tests.cluster_fixtures import Cluster, faulty_image, faulty_images, start_cluster, wait_for
from tests.mlflow_fixtures import DAYS, Trained
from tools import prometheus
from tools.procs import Server, free_port
from tools.stack import LOCAL_PROBE_P99_MS
from tools.users import Users

NS = "ml"
INSTANCE = "churn-serving"
REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "gateway.networking.k8s.io", "v1"
# Quick steps: the client below sends ~40 requests/s, so a 4 s step at 20% gives the new
# version a few dozen requests to be judged on.
FAST = {"interval_s": 4.0, "steps": (20, 50), "ready_timeout_s": 60.0, "lease_s": 30,
        "checks": Checks(max_probe_p99_ms=LOCAL_PROBE_P99_MS)}  # fmt: skip


@dataclass
class Env:
    cluster: Cluster
    kube: Kube
    prometheus: str
    gateway: str
    versions: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, champion: Trained
) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("rollout")
    cluster = start_cluster(
        root / "cluster", {"restartBackoffSeconds": 0.5, "images": faulty_images()}
    )
    cluster.core.create_namespace({"metadata": {"name": NS}})
    secret = {"MLFLOW_TRACKING_URI": base64.b64encode(mlflow_server.encode()).decode()}
    for name in ("helmsman-mlflow", "helmsman-mlflow-serving"):
        cluster.core.create_namespaced_secret(NS, {"metadata": {"name": name}, "data": secret})
    # Where the serving pods write their inference log.
    settings = {"HELMSMAN_DATASET_URI": str(root / "datasets")}
    cluster.core.create_namespaced_config_map(
        NS, {"metadata": {"name": "helmsman-settings"}, "data": settings}
    )
    gateway = yaml.safe_load((REPO / "deploy" / "serving-gateway.yaml").read_text())
    custom = client.CustomObjectsApi(cluster.api)
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, "gateways", gateway)

    def address() -> str | None:
        gw = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "gateways", "helmsman-gateway")
        found = (gw.get("status") or {}).get("addresses") or []
        return found[0]["value"] if found else None

    ip = wait_for("the Gateway's address", address)
    port = free_port()
    prom = prometheus.server(root / "prometheus", port, NS, cluster.kubeconfig)
    prom.start(timeout=60)
    try:
        # Users reach the session champion's model (churn-test) under its route's path.
        users_url = f"http://{ip}{contract.route_path('churn-test')}"
        yield Env(cluster, Kube(cluster.api, NS), f"http://127.0.0.1:{port}", users_url)
    finally:
        prom.stop()
        cluster.api.close()
        cluster.server.stop()


@pytest.fixture(scope="module")
def challenger(champion: Trained) -> str:
    """A second version of the model (another seed), evaluated so it has a golden set."""
    from helmsman_steps import evaluate, registry, train
    from helmsman_steps.store import DatasetStore

    store = DatasetStore(champion.dataset_uri)
    result = train.run(
        store, champion.start, champion.end, champion.model_name, "session/challenger",
        train.TrainConfig(epochs=6, window_days=DAYS, seed=5), registry.Lineage(dag_id="tests"),
    )  # fmt: skip
    evaluate.run(
        store, champion.start, champion.end, champion.model_name, result.model_version,
        evaluate.Rules(min_improvement=-1.0),
    )  # fmt: skip
    return result.model_version


def session(
    env: Env, model: str, version: str, owner: str, image: str = "",
    register: Callable[[], None] | None = None, **settings: Any,
) -> RolloutSession:  # fmt: skip
    target = objects.Target(
        settings.pop("instance", INSTANCE), NS, model, version, image=image, replicas=2
    )
    chosen = Settings(**{**FAST, "thresholds": Thresholds(min_requests=10), **settings})
    return RolloutSession(
        env.kube, target, owner, chosen,
        golden=lambda: models.golden(models.get(model, version)),
        prometheus=Prometheus(env.prometheus), register=register,
    )  # fmt: skip


def post(url: str, body: Any) -> Any:
    request = urllib.request.Request(  # noqa: S310 - the local Gateway
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return json.load(response)


class Weights(threading.Thread):
    """What `kubectl get httproute` shows, sampled: (stable, preview, mirrored) in order."""

    def __init__(self, cluster: Cluster, name: str = INSTANCE) -> None:
        super().__init__(daemon=True)
        self.custom, self.name = client.CustomObjectsApi(cluster.api), name
        self.seen: list[tuple[int, int, bool]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                route = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, NS, "httproutes", self.name
                )
            except client.ApiException:
                route = None
            if route:
                rule = route["spec"]["rules"][0]
                stable, preview = (b["weight"] for b in rule["backendRefs"])
                mirrored = any(f["type"] == "RequestMirror" for f in rule.get("filters") or [])
                if not self.seen or self.seen[-1] != (stable, preview, mirrored):
                    self.seen.append((stable, preview, mirrored))
            time.sleep(0.2)

    def __enter__(self) -> Weights:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join()


def golden_rows(model: str, version: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = models.golden(models.get(model, version))["inputs"]
    return rows


def record(env: Env, instance: str = INSTANCE) -> dict[str, Any]:
    lease = env.kube.lease(f"{instance}-rollout")
    assert lease is not None
    return dict(json.loads(lease["metadata"]["annotations"][RECORD_ANNOTATION]))


def stable_slot(env: Env, instance: str = INSTANCE) -> str:
    svc = env.kube.read("Service", instance)
    assert svc is not None
    return str(svc["spec"]["selector"][objects.SLOT_LABEL])


def replicas(env: Env, slot: str, instance: str = INSTANCE) -> int:
    d = env.kube.read("Deployment", objects.deployment_name(instance, slot))
    return int(d["spec"]["replicas"]) if d else 0


def test_1_the_first_version_is_verified_then_serves_through_the_gateway(
    env: Env, champion: Trained
) -> None:
    outcome = session(env, champion.model_name, champion.version, "runs/first").run()
    assert outcome["steps"] == []  # nothing served before: nothing to split or compare
    assert outcome["preview"]["passed"] is True
    assert outcome["previous"] is None
    rows = golden_rows(champion.model_name, champion.version)[:1]
    answer = post(env.gateway + "/predict", {"instances": rows})
    assert str(answer["model_version"]) == champion.version
    hpa = env.kube.read("HorizontalPodAutoscaler", INSTANCE)
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{INSTANCE}-{outcome['slot']}"
    assert record(env)["phase"] == "done"


def test_2_a_good_version_goes_through_shadow_and_every_step_with_no_failed_request(
    env: Env, champion: Trained, challenger: str
) -> None:
    before = stable_slot(env)
    started = time.monotonic()
    with (
        Users(env.gateway, golden_rows(champion.model_name, champion.version)) as users,
        Weights(env.cluster) as weights,
    ):
        outcome = session(env, champion.model_name, challenger, "runs/good").run()
        time.sleep(1)
    wall = time.monotonic() - started
    assert [s["step"] for s in outcome["steps"]] == ["shadow", "20%", "50%"]
    assert all(s["passed"] for s in outcome["steps"]), outcome["steps"]
    assert users.failures == [], users.failures[:5]
    assert set(users.versions()) == {champion.version, challenger}  # both served during the steps
    assert users.answers[-1][0] == challenger
    # The route as kubectl showed it, step by step: mirrored, 20%, 50%, then all on the
    # stable Service, which now selects the new slot (the moment all weight is on the preview
    # Service, while the stable one is repointed, may fall between two samples).
    seen = [w for w in weights.seen if w != (0, 100, False)]
    assert seen == [(100, 0, False), (100, 0, True), (80, 20, False), (50, 50, False),
                    (100, 0, False)]  # fmt: skip
    new = outcome["slot"]
    assert new != before
    assert stable_slot(env) == new
    assert replicas(env, before) == 0
    hpa = env.kube.read("HorizontalPodAutoscaler", INSTANCE)
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{INSTANCE}-{new}"
    shadow = outcome["steps"][0]
    assert shadow["paired"]["pairs"] >= 10  # the same requests, answered by both versions
    print(f"\ngood canary: {wall:.1f}s wall for 3 steps of {FAST['interval_s']}s")
    env.versions["stable"] = challenger


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("crash", "restarted"),
        ("liar", "did not answer correctly"),
        ("skewed", "golden-set predictions differ"),
        ("slow", "probe load p99"),
        ("errors", "probe load error rate"),
    ],
)
def test_3_what_the_preview_catches_never_reaches_a_user(
    env: Env, champion: Trained, fault: str, reason: str
) -> None:
    stable = env.versions["stable"]
    slot = stable_slot(env)
    rows = golden_rows(champion.model_name, champion.version)
    expected = post(env.gateway + "/predict", {"instances": rows})["predictions"]
    with Users(env.gateway, rows) as users:
        bad = session(env, champion.model_name, champion.version, f"runs/{fault}",
                      image=faulty_image(fault))  # fmt: skip
        with pytest.raises(Rejected) as rejected:
            bad.run()
        time.sleep(0.5)
    assert any(reason in r for r in rejected.value.reasons), rejected.value.reasons
    assert users.failures == [], users.failures[:5]
    assert set(users.versions()) == {stable}  # no user request ever reached the new pods
    # Every answer is the stable version's (one row alone or in a batch: float32 rounding).
    assert all(score == pytest.approx(expected[row], abs=1e-5) for _, row, score in users.answers)
    assert stable_slot(env) == slot
    assert replicas(env, objects.other_slot(slot)) == 0
    assert record(env)["phase"] == "aborted"


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("errors-live", "error rate"), ("skew-live", "shadow: mean |score difference|")],
)
def test_4_what_only_live_traffic_shows_is_caught_in_the_shadow_step_unseen(
    env: Env, champion: Trained, fault: str, reason: str
) -> None:
    stable = env.versions["stable"]
    with Users(env.gateway, golden_rows(champion.model_name, champion.version)) as users:
        bad = session(env, champion.model_name, champion.version, f"runs/live-{fault}",
                      image=faulty_image(fault))  # fmt: skip
        with pytest.raises(Rejected) as rejected:
            bad.run()
    assert any(r.startswith("step shadow:") and reason in r for r in rejected.value.reasons), (
        rejected.value.reasons
    )
    assert users.failures == [], users.failures[:5]  # the mirror's answers were discarded
    assert set(users.versions()) == {stable}
    assert record(env)["reports"][-1]["step"] == "shadow"


def test_5_without_shadow_a_live_failure_costs_at_most_the_first_steps_share(
    env: Env, champion: Trained
) -> None:
    started = time.monotonic()
    with Users(env.gateway, golden_rows(champion.model_name, champion.version)) as users:
        bad = session(env, champion.model_name, champion.version, "runs/no-shadow",
                      image=faulty_image("errors-live"), shadow=False)  # fmt: skip
        with pytest.raises(Rejected) as rejected:
            bad.run()
        aborted = time.monotonic()
        time.sleep(1)
    report = record(env)["reports"][-1]
    assert report["step"] == "20%"
    assert any("error rate" in r for r in rejected.value.reasons)
    during_step = report["new"]["requests"] + report["stable"]["requests"]
    assert 0 < len(users.failures) <= 0.2 * during_step, (len(users.failures), during_step)
    assert users.answers[-1][0] == env.versions["stable"]  # all traffic back on the stable one
    print(f"\nlive failure: {len(users.failures)} failed of {during_step:.0f} requests in the "
          f"step; aborted {aborted - started:.1f}s after the session started")  # fmt: skip


SESSION_SCRIPT = """
import json, sys
from helmsman import models
from helmsman.serving import objects
from helmsman.serving.analysis import Prometheus, Thresholds
from helmsman.serving.kube import Kube
from helmsman.serving.session import RolloutSession, Settings
from kubernetes import config
args = json.loads(sys.argv[1])
api = config.new_client_from_config(config_file=args["kubeconfig"])
target = objects.Target(args["instance"], "ml", args["model"], args["version"], replicas=2)
settings = Settings(interval_s=args["interval"], steps=(20, 50), lease_s=args["lease"],
                    thresholds=Thresholds(min_requests=10))
golden = lambda: models.golden(models.get(args["model"], args["version"]))
RolloutSession(Kube(api, "ml"), target, args["owner"], settings, golden=golden,
               prometheus=Prometheus(args["prometheus"])).run()
"""


def start_session_process(
    env: Env, model: str, version: str, owner: str, tmp: Path, lease: int = 30
) -> Server:
    args = {"kubeconfig": str(env.cluster.kubeconfig), "instance": INSTANCE, "model": model,
            "version": version, "owner": owner, "prometheus": env.prometheus, "interval": 6.0,
            "lease": lease}  # fmt: skip
    proc = Server(
        "rollout session", [sys.executable, "-c", SESSION_SCRIPT, json.dumps(args)], "",
        tmp / f"{owner.replace('/', '_')}.log",
    )  # fmt: skip
    proc.env["PYTHONPATH"] = f"{REPO / 'plugins'}:{REPO / 'images' / 'steps' / 'src'}:{REPO}"
    return proc.start_background()


def kill_at_step(env: Env, proc: Server, step: tuple[int, int, bool]) -> None:
    custom = client.CustomObjectsApi(env.cluster.api)

    def at_step() -> bool:
        route = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "httproutes", INSTANCE)
        rule = route["spec"]["rules"][0]
        mirrored = any(f["type"] == "RequestMirror" for f in rule.get("filters") or [])
        return (*(b["weight"] for b in rule["backendRefs"]), mirrored) == step

    wait_for(f"the session at step {step}", at_step, timeout=120)
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGKILL)  # as the OOM killer or a lost node would
    proc.proc.wait()


def test_6_a_session_killed_mid_step_is_resumed_by_its_next_try_and_others_wait(
    env: Env, champion: Trained, tmp_path: Path
) -> None:
    model, version = champion.model_name, champion.version
    proc = start_session_process(env, model, version, "runs/killed", tmp_path)
    kill_at_step(env, proc, (80, 20, False))
    killed_at = time.monotonic()
    assert record(env)["phase"] == "step"
    # Another run is refused while the killed one's lock is fresh, and says whose it is.
    with pytest.raises(RolloutBusy, match="runs/killed"):
        session(env, model, version, "runs/impatient").run()
    # The killed task's next try resumes the same rollout from its record and finishes it.
    with Users(env.gateway, golden_rows(model, version)) as users:
        outcome = session(env, model, version, "runs/killed").run()
    assert [s["step"] for s in outcome["steps"]] == ["shadow", "20%", "50%"]
    assert users.failures == []
    assert stable_slot(env) == outcome["slot"]
    env.versions["stable"] = version
    table.record("rollout session SIGKILLed at its 20% step", "session",
                  "a concurrent run refused; the next try resumed and finished it",
                  len(users.failures), time.monotonic() - killed_at)  # fmt: skip


def test_7_an_abandoned_rollout_is_taken_out_of_traffic_before_the_next_one_starts(
    env: Env, champion: Trained, challenger: str, tmp_path: Path
) -> None:
    model = champion.model_name
    slot = stable_slot(env)
    proc = start_session_process(env, model, challenger, "runs/abandoned", tmp_path, lease=5)
    kill_at_step(env, proc, (80, 20, False))
    time.sleep(6)  # its lock expires: nobody renews it
    with Users(env.gateway, golden_rows(model, champion.version)) as users:
        outcome = session(env, model, challenger, "runs/takes-over").run()
    assert users.failures == []
    assert outcome["previous"] == champion.version
    assert [s["step"] for s in outcome["steps"]] == ["shadow", "20%", "50%"]
    assert stable_slot(env) != slot
    env.versions["stable"] = challenger


def test_8_api_errors_in_every_phase_converge_on_one_rollout(env: Env, champion: Trained) -> None:
    faults = env.cluster.access.faults()
    faults.api_errors(0.25, "500", seed=3)
    tries = []
    started = time.monotonic()
    try:
        with Users(env.gateway, golden_rows(champion.model_name, champion.version)) as users:
            for _ in range(4):  # the task's tries
                try:
                    outcome = session(
                        env, champion.model_name, champion.version, "runs/flaky"
                    ).run()
                except client.ApiException as exc:
                    tries.append(exc.status)
                    continue
                break
    finally:
        faults.api_errors(0)
    assert outcome["version"] == champion.version
    assert users.failures == [], users.failures[:5]
    assert stable_slot(env) == outcome["slot"]
    assert replicas(env, objects.other_slot(outcome["slot"])) == 0
    assert record(env)["phase"] == "done"
    print(f"\nAPI errors: {len(tries)} failed tries before the rollout converged")
    env.versions["stable"] = champion.version
    table.record("a quarter of API calls fail (500) in every phase", "session",
                 f"one rollout after {len(tries)} failed tries; nothing half-done",
                 len(users.failures), time.monotonic() - started)  # fmt: skip


def test_9_an_object_helmsman_does_not_manage_is_never_changed(env: Env, champion: Trained) -> None:
    foreign = objects.deployment(
        objects.Target("churn-other", NS, champion.model_name, champion.version), "blue", 1
    )
    foreign["metadata"]["labels"] = {"team": "someone-else"}
    env.cluster.apps.create_namespaced_deployment(NS, foreign)
    before = env.kube.read("Deployment", "churn-other-blue")
    with pytest.raises(NotOwned, match="churn-other-blue exists and is not Helmsman's"):
        session(
            env, champion.model_name, champion.version, "runs/other", instance="churn-other"
        ).run()
    after = env.kube.read("Deployment", "churn-other-blue")
    assert after is not None
    assert before is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_10_without_a_gateway_traffic_moves_pod_by_pod(
    env: Env, champion: Trained, challenger: str
) -> None:
    model, instance = champion.model_name, "churn-ratio"
    first = session(env, model, champion.version, "runs/ratio-1", instance=instance,
                    gateway=None, strategy="rolling").run()  # fmt: skip
    svc = env.kube.read("Service", instance)
    assert svc is not None
    url = f"http://{svc['spec']['clusterIP']}"
    with Users(url, golden_rows(model, champion.version)) as users:
        outcome = session(env, model, challenger, "runs/ratio-2", instance=instance,
                          gateway=None, strategy="rolling").run()  # fmt: skip
    assert outcome["router"] == "replicas"
    assert [s["step"] for s in outcome["steps"]] == ["50%"]  # 2 replicas: one pod, then both
    assert users.failures == [], users.failures[:5]
    assert set(users.versions()) == {champion.version, challenger}
    assert stable_slot(env, instance) == outcome["slot"] != first["slot"]
    assert env.kube.read("HTTPRoute", instance) is None  # no Gateway: no route


def test_11_the_deferred_wait_reports_an_available_slot_from_the_triggerer_side(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeploymentAvailableTrigger, run as the triggerer runs it (asyncio, kubernetes_asyncio,
    the connection from the environment), on the slot that serves now."""
    import asyncio

    from helmsman.deploy import DeploymentAvailableTrigger

    conn = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(env.cluster.kubeconfig)}}
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(conn))
    live = objects.deployment_name(INSTANCE, stable_slot(env))
    trigger = DeploymentAvailableTrigger(live, NS, "kubernetes_default", 60, {})
    classpath, kwargs = trigger.serialize()
    assert classpath == "helmsman.deploy.DeploymentAvailableTrigger"
    payload = asyncio.run(asyncio.wait_for(first_event(DeploymentAvailableTrigger(**kwargs)), 90))
    assert payload == {"plan": {}, "error": None}
    # A slot that is not available when the trigger's time is up is reported as such.
    env.kube.scale(live, 3)
    impatient = DeploymentAvailableTrigger(live, NS, "kubernetes_default", 0, {})
    payload = asyncio.run(asyncio.wait_for(first_event(impatient), 90))
    assert "timed out" in (payload["error"] or "")
    env.kube.scale(live, 2)


async def first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event.payload
    return None


def test_12_a_registry_that_cannot_be_written_leaves_the_stable_version_serving(
    env: Env, champion: Trained, challenger: str
) -> None:
    """Every check passed, but the registry cannot record it (@champion, the rollout tag):
    users go back to the stable version, which the registry still names, and the next try
    registers, then promotes. The registry and what serves never disagree."""
    model, slot = champion.model_name, stable_slot(env)
    assert env.versions["stable"] == champion.version
    told: list[str] = []

    def registry_down() -> None:
        told.append("refused")
        raise ConnectionError("the registry is unreachable")

    with Users(env.gateway, golden_rows(model, champion.version)) as users:
        with pytest.raises(ConnectionError):
            session(env, model, challenger, "runs/registry", register=registry_down).run()
        failed_at = time.monotonic()
        assert record(env)["phase"] == "registering"
        assert stable_slot(env) == slot
        time.sleep(1)  # the Gateway applies the route change it was given
        answers = len(users.answers)
        wait_for("requests after the failure", lambda: len(users.answers) > answers + 10)
        assert {v for v, *_ in users.answers[answers:]} == {champion.version}
        outcome = session(env, model, challenger, "runs/registry",
                          register=lambda: told.append("recorded")).run()  # fmt: skip
        recovered = time.monotonic() - failed_at
    assert told == ["refused", "recorded"]
    assert [s["step"] for s in outcome["steps"]] == ["shadow", "20%", "50%"]  # not again
    assert stable_slot(env) == outcome["slot"] != slot
    assert users.failures == [], users.failures[:5]
    env.versions["stable"] = challenger
    table.record("registry unwritable once every check passed", "session",
                 "traffic back to the stable version (still @champion); the retry registered "
                 "and promoted", len(users.failures), recovered)  # fmt: skip
