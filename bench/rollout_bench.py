"""Rollout timing: how fast a bad canary leaves traffic, and how close a good one keeps to plan.

On one local stack (localcluster with its Gateway, a real MLflow server, a real Prometheus) and
under a steady client on the Gateway, it alternates, round by round:

- a **bad** canary: a version that fails one request in four on live traffic, with no shadow
  step, so the first weighted step must catch it; measured from the moment that step's traffic
  moved to the moment all traffic is back on the stable version, divided by the analysis
  interval (goal <= 1.2: abort within the step that showed the fault);
- a **good** canary (shadow step, then 20% and 50%): the wall time from the verified preview to
  the promotion, divided by steps x interval (goal <= 1.2: the steps cost little beyond their
  windows), and the whole rollout including pod start and preview.

It prints the ratios of the same run side by side; absolute times are not compared across
runs. ``--smoke`` runs one short round (what `make test` runs, so the bench cannot rot).

Usage: python -m bench.rollout_bench [--interval 10] [--rounds 2] [--smoke]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins"), str(REPO / "images" / "steps" / "src")]

import yaml  # noqa: E402 - needs the path set above
from kubernetes import client  # noqa: E402

from helmsman import models  # noqa: E402
from helmsman.serving import objects  # noqa: E402
from helmsman.serving.analysis import Prometheus, Thresholds  # noqa: E402
from helmsman.serving.kube import Kube  # noqa: E402
from helmsman.serving.session import RolloutSession, Settings  # noqa: E402
from helmsman.serving.verify import Rejected  # noqa: E402
from helmsman_steps import contract  # noqa: E402
from tests.cluster_fixtures import faulty_image, faulty_images, start_cluster, wait_for  # noqa: E402
from tools import procs, prometheus  # noqa: E402
from tools.procs import free_port  # noqa: E402
from tools.users import Users  # noqa: E402

MODEL, NS, INSTANCE = "bench-churn", "ml", "churn-serving"
FIRST_DAY = dt.date(2026, 3, 1)


def train_versions(root: Path, rows_per_day: int, epochs: int) -> tuple[str, str]:
    """Two evaluated versions of the model (two seeds), each with its golden set."""
    from helmsman_steps import etl, evaluate, registry, sources, train
    from helmsman_steps.store import DatasetStore

    store = DatasetStore(str(root / "datasets"))
    end = FIRST_DAY + dt.timedelta(days=2)
    uri = f"synthetic://churn?rows_per_day={rows_per_day}&seed=7"
    etl.run(sources.from_uri(uri), store, FIRST_DAY, end, 0.05)
    versions = []
    for seed in (1, 2):
        result = train.run(
            store, end - dt.timedelta(days=1), end, MODEL, f"bench/{seed}",
            train.TrainConfig(epochs=epochs, window_days=2, seed=seed),
            registry.Lineage(dag_id="bench"),
        )  # fmt: skip
        evaluate.run(store, end - dt.timedelta(days=1), end, MODEL, result.model_version,
                     evaluate.Rules(min_improvement=-1.0))  # fmt: skip
        versions.append(result.model_version)
    return versions[0], versions[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--interval", type=float, default=10.0, help="analysis interval (s)")
    parser.add_argument("--rounds", type=int, default=2, help="bad + good canaries per round")
    parser.add_argument("--smoke", action="store_true", help="one short round: does it run?")
    args = parser.parse_args(argv)
    interval, rounds = (3.0, 1) if args.smoke else (args.interval, args.rounds)
    with tempfile.TemporaryDirectory(
        dir=REPO / ".state" if (REPO / ".state").is_dir() else None
    ) as tmp:
        return run(Path(tmp), interval, rounds, small=args.smoke)


def run(root: Path, interval: float, rounds: int, small: bool) -> int:
    port = free_port()
    tracking = procs.mlflow(root, port).start(timeout=120)
    uri = f"http://127.0.0.1:{port}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    cluster = prom = None
    try:
        print("training two versions ...", flush=True)
        first, second = train_versions(root, 2000 if small else 5000, 2 if small else 4)
        cluster = start_cluster(
            root / "cluster", {"restartBackoffSeconds": 0.5, "images": faulty_images()}
        )
        cluster.core.create_namespace({"metadata": {"name": NS}})
        for secret in ("helmsman-mlflow", "helmsman-mlflow-serving"):
            cluster.core.create_namespaced_secret(NS, {
                "metadata": {"name": secret},
                "data": {"MLFLOW_TRACKING_URI": base64.b64encode(uri.encode()).decode()},
            })  # fmt: skip
        # The platform's settings, which every serving pod reads (here: where its log goes).
        cluster.core.create_namespaced_config_map(NS, {
            "metadata": {"name": "helmsman-settings"},
            "data": {"HELMSMAN_DATASET_URI": str(root / "datasets")},
        })  # fmt: skip
        custom = client.CustomObjectsApi(cluster.api)
        gateway = yaml.safe_load((REPO / "deploy" / "serving-gateway.yaml").read_text())
        custom.create_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", NS, "gateways", gateway
        )
        ip = wait_for("the Gateway's address", lambda: (custom.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", NS, "gateways", "helmsman-gateway"
        ).get("status") or {}).get("addresses"))[0]["value"]  # fmt: skip
        prom = prometheus.server(root / "prometheus", free_port(), NS, cluster.kubeconfig)
        prom.start(timeout=60)
        kube = Kube(cluster.api, NS)

        def session(
            version: str, owner: str, image: str = "", shadow: bool = True
        ) -> RolloutSession:
            target = objects.Target(INSTANCE, NS, MODEL, version, image=image, replicas=2)
            settings = Settings(interval_s=interval, steps=(20, 50), shadow=shadow,
                                thresholds=Thresholds(min_requests=10))  # fmt: skip
            return RolloutSession(
                kube, target, owner, settings,
                golden=lambda: models.golden(models.get(MODEL, version)),
                prometheus=Prometheus(prom.health_url.rsplit("/-/", 1)[0]),
            )  # fmt: skip

        session(first, "bench/first").run()
        rows = models.golden(models.get(MODEL, first))["inputs"]
        users = Users(f"http://{ip}{contract.route_path(MODEL)}", rows)  # the model's path
        users.start()
        aborts, goods, walls = [], [], []
        stable, other = first, second
        for n in range(rounds):
            bad = session(other, f"bench/bad-{n}", image=faulty_image("errors-live"), shadow=False)
            try:
                bad.run()
                print("a bad canary was not caught: the bench cannot measure its abort")
                return 1
            except Rejected:
                r = bad.record
                aborts.append((r["restored_at"] - r["step_started"]) / interval)
            started = time.monotonic()
            good = session(other, f"bench/good-{n}")
            outcome = good.run()
            walls.append(time.monotonic() - started)
            steps = len(outcome["steps"])
            goods.append(
                (good.record["finished"] - good.record["verified_at"]) / (steps * interval)
            )
            stable, other = other, stable
        users.__exit__()
        print(f"\nrollout bench: interval {interval:.0f}s, {rounds} round(s), steps shadow/20%/50%")
        print(f"  bad canary: abort time / interval        {fmt(aborts)}   (goal <= 1.2)")
        print(f"  good canary: steps wall / (steps x int.) {fmt(goods)}   (goal <= 1.2)")
        whole = [w / (3 * interval) for w in walls]
        start_s = statistics.mean(walls) - 3 * interval
        print(f"  good canary: whole rollout / (steps x int.) {fmt(whole)} "
              f"(pod start and preview: {start_s:.1f}s)")  # fmt: skip
        seen = users.summary()
        print(f"  client: {seen['requests']} requests, {seen['failed']} failed "
              f"(the bad canaries' first step may cost a few)")  # fmt: skip
        return 0
    finally:
        if prom is not None:
            prom.stop()
        if cluster is not None:
            cluster.api.close()
            cluster.server.stop()
        tracking.stop()


def fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) + f"  (mean {statistics.mean(values):.2f})"


if __name__ == "__main__":
    sys.exit(main())
