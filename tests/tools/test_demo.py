"""`make demo`, `make backfill` and `make down`, through the same code (tools/demo.py), on
free ports and smaller data; and the Airflow UI's trigger form in a real headless browser.

The tests run in order on one stack: the first demo run deploys, a second trains a
challenger and the gate (or the evaluation) decides, a run triggered from the UI form
succeeds, a backfill deploys nothing, and `down` leaves no process and no port behind.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
import pytest

from tools import demo
from tools.procs import alive, port_taken
from tools.stack import REPO, Ports, Settings, Stack

CHROMIUM = Path("/usr/bin/chromium")
# Chromium on a closed network: no background connections, no sandbox as root.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def demo_root() -> Iterator[Path]:
    root = REPO / ".state" / f"demo-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as patch:  # the demo signs the process in to its MLflow
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            patch.setenv(name, os.environ.get(name, ""))
        yield root
    demo.down(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def first(demo_root: Path) -> tuple[Stack, demo.Outcome]:
    return demo.up(demo_root, Ports.free(), Settings(rows_per_day=4000), show=False)


def test_the_first_demo_deploys_and_the_model_answers_through_the_service(
    first: tuple[Stack, demo.Outcome],
) -> None:
    stack, outcome = first
    assert outcome.state == "success", outcome.summary
    s = outcome.summary
    assert s["deploy"] is True
    assert s["rollout"] == "passed"
    assert s["served_version"] == s["model_version"]
    assert 0.0 <= s["prediction"] <= 1.0
    assert s["mlflow_run"].startswith(stack.mlflow_url)
    assert s["service"].startswith("http://127.")
    assert s["service"].endswith("/models/churn")


def test_the_first_demo_also_trains_the_second_model_and_both_answer_side_by_side(
    first: tuple[Stack, demo.Outcome],
) -> None:
    """The diabetes regression (gradient boosting, daily files) trains, deploys through the same
    gate and answers on its own path of the same Gateway, beside churn."""
    stack, outcome = first
    diabetes = outcome.others["diabetes"]
    assert diabetes.state == "success", diabetes.summary
    d = diabetes.summary
    assert (d["evaluation"], d["deploy"], d["rollout"]) == ("promote", True, "passed")
    endpoints = outcome.endpoints
    assert set(endpoints) == {"churn", "diabetes"}
    assert endpoints["diabetes"]["served_version"] == d["model_version"]
    assert 25 <= endpoints["diabetes"]["prediction"] <= 346  # progression units, not a probability
    assert 0.0 <= endpoints["churn"]["prediction"] <= 1.0
    assert endpoints["diabetes"]["service"] == stack.model_url("diabetes")
    # The path the plugin routes a model under is the one the stack's users are sent to.
    from helmsman_steps import contract

    assert stack.model_url("diabetes") == stack.gateway_url() + contract.route_path("diabetes")


def test_a_second_demo_reuses_the_stack_and_trains_a_challenger(
    first: tuple[Stack, demo.Outcome], demo_root: Path
) -> None:
    stack, outcome = first
    pids = dict(stack.pids)
    again, second = demo.up(demo_root, show=False)
    assert again.pids == pids  # the same processes: nothing restarted
    assert second.state == "success", second.summary
    s = second.summary
    assert s["model_version"] != outcome.summary["model_version"]
    assert s["evaluation"] in ("promote", "reject")
    # Whatever was decided, the Gateway answers with the version that decision implies.
    expected = s["model_version"] if s["deploy"] else outcome.summary["model_version"]
    assert s["served_version"] == expected
    # Simulated users were on the Gateway all along; none of their requests failed.
    assert s["users"]["requests"] > 100
    assert s["users"]["failed"] == 0
    if s["deploy"]:
        assert [step["step"] for step in s["rollout_outcome"]["steps"]] == ["shadow", "10%", "50%"]
    # The second model trained once; it keeps serving its version beside churn.
    assert second.others == {}
    assert (
        second.endpoints["diabetes"]["served_version"]
        == (outcome.others["diabetes"].summary["model_version"])
    )


def test_the_ui_trigger_form_shows_the_params_and_a_run_triggered_from_it_succeeds(
    first: tuple[Stack, demo.Outcome],
) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium as root")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    stack, _ = first
    api = demo.api_for(stack)
    before = {r["dag_run_id"] for r in api.runs(demo.DAG)}
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            page.goto(stack.airflow_url + "/auth/login/")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(stack.password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_load_state("networkidle")
            page.goto(f"{stack.airflow_url}/dags/{demo.DAG}")
            trigger = page.get_by_role("button", name="Trigger").first
            try:  # the DAG page renders after its API calls; a loaded machine is slow at it
                trigger.wait_for(timeout=60_000)
            except PlaywrightTimeout:
                page.reload()
                trigger.wait_for(timeout=60_000)
            trigger.click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_text("Run Parameters").wait_for()
            text = dialog.inner_text()
            for shown in ("Training window (days)", "Days of data to train on",
                          "GPUs for the training pod (0 to 4", "Rollout strategy",
                          "Passes over the training data (1 to 500)", "Dry run"):  # fmt: skip
                assert shown in text
            dialog.locator("input[name=element_data_end]").fill("2026-04-02")
            dialog.locator("input[name=element_window_days]").fill("2")
            dialog.locator("input[name=element_epochs]").fill("3")
            dialog.locator("input[name=element_gpus]").fill("0")
            page.screenshot(path=str(ARTIFACTS / "trigger-form.png"), full_page=True)
            dialog.get_by_role("button", name="Trigger").click()
            dialog.wait_for(state="hidden")
        finally:
            browser.close()
    new = [r for r in api.runs(demo.DAG) if r["dag_run_id"] not in before]
    assert len(new) == 1
    run: dict[str, Any] = new[0]
    assert run["triggered_by"] == "ui"
    conf = run["conf"]
    assert (conf["data_end"], conf["window_days"], conf["epochs"], conf["gpus"]) == (
        "2026-04-02", 2, 3, 0,
    )  # fmt: skip
    assert api.wait(demo.DAG, run["dag_run_id"], timeout=600)["state"] == "success"


def test_a_backfill_from_the_demo_deploys_nothing(
    first: tuple[Stack, demo.Outcome], demo_root: Path
) -> None:
    stack, _ = first
    before = demo.serving(stack)["served_version"]
    runs = demo.backfill("2026-02-01", "2026-02-01", root=demo_root)
    assert [r["state"] for r in runs] == ["success"]
    decision = demo.api_for(stack).xcom(demo.DAG, runs[0]["dag_run_id"], "decide")
    assert decision["deploy"] is False
    assert demo.serving(stack)["served_version"] == before


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_killed_scheduler_is_restarted_then_down_leaves_no_process_and_no_port(
    first: tuple[Stack, demo.Outcome], demo_root: Path
) -> None:
    stack, _ = first
    # The scheduler dies (OOM killer, a crash); its LocalExecutor workers are left behind.
    scheduler = psutil.Process(stack.pids["scheduler"])
    workers = [p.pid for p in scheduler.children(recursive=True)]
    assert workers, "the scheduler had no worker processes to orphan"
    scheduler.kill()
    scheduler.wait(10)
    assert any(running(pid) for pid in workers)
    restarted = demo.stack_for(demo_root)
    said: list[str] = []
    restarted.up(say=said.append)  # brings the scheduler back, in a new group
    stack = restarted
    assert stack.pids["scheduler"] != scheduler.pid
    # ...after stopping what the dead one left: no old worker runs beside the new scheduler.
    assert [pid for pid in workers if running(pid)] == []
    assert any("that dead components left behind" in line for line in said), said
    pids, ports = dict(stack.pids), list(asdict(stack.ports).values())
    gateway = urllib.parse.urlsplit(demo.serving(stack)["service"])
    stopped = demo.down(demo_root)
    assert set(pids) <= set(stopped)
    assert not any("orphaned" in line for line in stopped)  # stopped at the restart already
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert [pid for pid in workers if running(pid)] == []
    assert [p for p in ports if port_taken(p)] == []
    # The pods and the Gateway went with localcluster: its address no longer answers.
    assert gateway.hostname is not None
    assert not port_taken(gateway.port or 80, gateway.hostname)
    assert demo.down(demo_root) == []  # a second `make down` finds nothing to stop


def test_after_down_the_next_demo_serves_the_champion_again_before_training(
    demo_root: Path,
) -> None:
    """MLflow's database outlives `make down`, the cluster's objects do not: the next demo
    first rolls @champion out again through rollback_churn (the same preview checks), so the
    new challenger is judged and users are served as before."""
    stack, outcome = demo.up(demo_root, Ports.free(), Settings(rows_per_day=4000), show=False)
    api = demo.api_for(stack)
    (restore,) = api.runs(demo.ROLLBACK_DAG)
    assert restore["state"] == "success"
    # Both models' champions came back, each through its own rollback DAG.
    (again,) = api.runs(demo.DIABETES.rollback_dag)
    assert again["state"] == "success"
    assert "prediction" in outcome.endpoints["diabetes"]
    restored = restore["conf"]["model_version"]
    assert api.xcom(demo.ROLLBACK_DAG, restore["dag_run_id"], "decide")["deploy"] is True
    assert outcome.state == "success"
    # Users reached the restored version through the Gateway while the challenger trained.
    assert restored in outcome.summary["users"]["versions"]
    assert outcome.summary["users"]["failed"] == 0
    assert outcome.summary["served_version"] in {restored, outcome.summary["model_version"]}
