"""The DAG factory: a model folder becomes its DAGs, a broken one breaks only its own file.

Each DAG file is parsed by Airflow's DagBag in a fresh interpreter (tests/dagcheck.py), as the
DAG processor parses it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from helmsman import factory
from helmsman_steps.spec import ModelSpecError
from tests.dags.test_dag_integrity import parse_report

REPO = Path(__file__).resolve().parents[2]
CHURN = yaml.safe_load((REPO / "models" / "churn" / "model.yaml").read_text())
DAG_FILE = '''"""Airflow DAGs of the {name} model, built from models/{name}/model.yaml."""

from pathlib import Path

from helmsman.factory import model_dags

train, rollback, scale, monitor = model_dags("{name}", Path(__file__).parents[1] / "models")
'''


def add_model(root: Path, name: str, **changes: Any) -> Path:
    """A model folder (churn's spec under another name, with changes) and its DAG file."""
    data = copy.deepcopy(CHURN) | {"name": name}
    for section, value in changes.items():
        data[section] = value if not isinstance(value, dict) else data.get(section, {}) | value
    (root / "models" / name).mkdir(parents=True)
    (root / "models" / name / "model.yaml").write_text(yaml.safe_dump(data))
    (root / "dags").mkdir(exist_ok=True)
    dag_file = root / "dags" / f"model_{name}.py"
    dag_file.write_text(DAG_FILE.format(name=name))
    return dag_file


def test_each_model_folder_becomes_its_four_dags_with_its_own_params(
    tmp_path: Path, dev_env: dict[str, str]
) -> None:
    files = [
        add_model(tmp_path, "churn"),
        add_model(tmp_path, "fraud", gpus=0, schedule="@hourly",
                  serving={"replicas": 5, "strategy": "blue-green", "canary_steps": [10, 50],
                           "resources": {"cpu": "2", "memory": "1Gi"}},
                  trainer={"kind": "mlp", "params": {"epochs": 3, "hidden": "128"}},
                  evaluation={"metric": "roc_auc", "floor": 0.7, "min_improvement": 0.01},
                  monitoring={"schedule": "*/30 * * * *", "window_hours": 2, "retrain": False}),
    ]  # fmt: skip
    reports = [parse_report(f, dev_env, tmp_path) for f in files]
    assert [r["import_errors"] for r in reports] == [{}, {}]
    churn, fraud = ({d["dag_id"]: d for d in r["dags"]} for r in reports)
    assert sorted(churn) == ["monitor_churn", "rollback_churn", "scale_churn", "train_churn"]
    assert sorted(fraud) == ["monitor_fraud", "rollback_fraud", "scale_fraud", "train_fraud"]
    train = fraud["train_fraud"]["params"]
    assert (train["epochs"], train["hidden"], train["gpus"], train["replicas"]) == (3, "128", 0, 5)
    assert (train["strategy"], train["canary_steps"]) == ("blue-green", "10,50")
    assert train["min_improvement"] == 0.01
    # Retrain off: the cron alone (@hourly, as cron).
    assert fraud["train_fraud"]["schedule"].startswith("SlotCron(expression='0 * * * *'")
    assert "expression='*/30 * * * *'" in fraud["monitor_fraud"]["schedule"]
    assert fraud["monitor_fraud"]["tasks"] == [
        "alarm", "monitor", "retrain_on_drift", "retrain_on_performance"
    ]  # fmt: skip
    # A breach of churn's monitoring (either breach asset) or its cron starts its training.
    assert churn["train_churn"]["schedule"].startswith("AssetOrTimeSchedule(")
    assert "AssetAny(" in churn["train_churn"]["schedule"]
    assert "helmsman://churn/drift" in churn["train_churn"]["schedule"]
    assert "helmsman://churn/performance" in churn["train_churn"]["schedule"]
    assert CHURN["schedule"] in churn["train_churn"]["schedule"]
    assert fraud["scale_fraud"]["params"] == {"replicas": 5}
    assert fraud["train_fraud"]["serving_resources"] == {"cpu": "2", "memory": "1Gi"}
    assert churn["train_churn"]["serving_resources"] == CHURN["serving"]["resources"]
    assert fraud["rollback_fraud"]["params"]["strategy"] == "blue-green"
    assert churn["train_churn"]["params"]["epochs"] == CHURN["trainer"]["params"]["epochs"]
    assert churn["train_churn"]["tasks"] == [
        "decide", "etl", "evaluate", "plan", "promote", "rollout", "train"
    ]  # fmt: skip
    assert "model:fraud" in fraud["train_fraud"]["tags"]


def test_a_broken_model_is_an_import_error_of_its_own_file_only(
    tmp_path: Path, dev_env: dict[str, str]
) -> None:
    good = add_model(tmp_path, "churn")
    broken = add_model(tmp_path, "fraud", evaluation={"metric": "auc"})
    good_report = parse_report(good, dev_env, tmp_path)
    broken_report = parse_report(broken, dev_env, tmp_path)
    assert good_report["import_errors"] == {}
    assert len(good_report["dags"]) == 4
    assert broken_report["dags"] == []
    (error,) = broken_report["import_errors"].values()
    assert "models/fraud/model.yaml: evaluation.metric: Input should be 'roc_auc'" in error


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"gpus": 6}, "gpus: 6 x nodes: 1 is above the 4 GPUs a run may ask for"),
        ({"gpus": 2, "nodes": 3}, "gpus: 2 x nodes: 3 is above the 4 GPUs a run may ask for"),
        (
            {"trainer": {"kind": "sklearn"}, "gpus": 0, "nodes": 2},
            "nodes: the sklearn trainer runs in one process; set nodes: 1",
        ),
        ({"features": "features.py:derive"}, "features: 'features.py:derive': no features.py in"),
        (
            {"trainer": {"kind": "custom", "entrypoint": "fit.py:train"}, "gpus": 0},
            "trainer.entrypoint: 'fit.py:train': no fit.py in models/fraud/",
        ),
        (
            {
                "task": "regression",
                "evaluation": {"metric": "rmse", "floor": 1.0},
                "schema": {
                    "id": "i",
                    "timestamp": "t",
                    "label": {"name": "y", "range": [0, 1]},
                    "columns": {"x": {"type": "float"}},
                },
            },
            "trainer.kind: the mlp trainer trains binary models, not regression; use sklearn or",
        ),
        ({"serving": {"thresholds": {"max_p95_ms": 9}}}, "unknown ['max_p95_ms']; one of"),
        ({"trainer": {"params": {"hidden": "64,5000"}}}, "hidden '64,5000': comma-separated"),
        ({"trainer": {"params": {"seed": 2**32}}}, f"seed {2**32}: 0 to {2**32 - 1}"),
    ],
)
def test_what_the_pipeline_cannot_run_is_refused_with_the_field(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    add_model(tmp_path, "fraud", **changes)
    with pytest.raises(ModelSpecError) as failure:
        factory.load("fraud", tmp_path / "models")
    assert str(failure.value).startswith("models/fraud/model.yaml: ")
    assert expected in str(failure.value)


def test_every_pipeline_pod_of_a_model_gets_its_spec() -> None:
    """ETL, training and evaluation pods read the model's spec from HELMSMAN_MODEL_SPEC (the
    JSON of model.yaml, validated); training stores it with the version it registers."""
    import json

    from helmsman.pods import Platform
    from helmsman_steps import contract, spec

    model = factory.load("churn", REPO / "models")
    dag = factory.training_dag(model, Platform())
    for task_id in ("etl", "train", "evaluate"):
        env = {e.name: e.value for e in dag.get_task(task_id).env_vars}
        assert spec.from_json(env[contract.MODEL_SPEC_ENV]) == model
        assert json.loads(env[contract.MODEL_SPEC_ENV])["schema"]["id"] == CHURN["schema"]["id"]


def test_a_gradient_boosting_regression_gets_its_own_form_and_pod_arguments() -> None:
    """The diabetes model: no MLP knobs in its form or its train pod, no GPUs to ask for, its
    window and metric in the defaults, and evaluation told the window it judges on."""
    train, _, _, _ = factory.model_dags("diabetes", REPO / "models")
    params = train.params
    assert not {"epochs", "learning_rate", "hidden", "batch_size"} & set(params)
    assert params["window_days"] == 14
    assert params.get_param("gpus").schema["maximum"] == 0
    assert params.get_param("min_improvement").schema["title"] == "Minimum rmse gain"
    assert train.get_task("train").pool != "gpu"  # a CPU trainer waits for no GPU slot
    pod_args = train.get_task("train").arguments
    assert "--epochs" not in pod_args
    assert pod_args[pod_args.index("--seed") + 1] == "{{ params.seed }}"
    evaluate_args = train.get_task("evaluate").arguments
    assert evaluate_args[evaluate_args.index("--window-days") + 1] == "{{ params.window_days }}"
    assert evaluate_args[evaluate_args.index("--min-primary") + 1] == "75.0"


def test_the_monitor_judges_the_hour_up_to_its_run_scheduled_or_manual() -> None:
    """A scheduled run judges up to its data interval's end; a manual run (Airflow gives it no
    data interval: the name is undefined in its context) up to when it runs."""
    import datetime as dt
    from types import SimpleNamespace

    monitor = factory.model_dags("churn", REPO / "models")[3]
    when = dt.datetime(2026, 12, 2, 1, 41, 20, tzinfo=dt.UTC)
    hour = when.replace(minute=0, second=0)
    for interval_end, expected in ((None, "2026-12-02T01:41:20"), (hour, "2026-12-02T01:00:00")):
        task = copy.deepcopy(monitor.get_task("monitor"))
        run = SimpleNamespace(data_interval_end=interval_end, run_after=when)
        context = {"dag_run": run, "dag": monitor, "run_id": "manual_1", "params": {}}
        task.render_template_fields(context)  # type: ignore[arg-type]
        assert task.arguments[task.arguments.index("--end") + 1] == expected


def test_a_missed_slot_is_skipped_after_an_unpause_or_a_backfill_and_a_backfill_gets_its_days() -> (
    None
):
    """What the scheduler computes (the timetables as it deserializes them, through the
    plugin): no run yet, or a backfill of March as the last automated run, gives the next slot
    to come, never the one already missed; a backfill's range gets every day in it."""
    import datetime as dt

    import pendulum
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction

    train, _, _, monitor = factory.model_dags("churn", REPO / "models")
    now = dt.datetime.now(dt.UTC)
    march = pendulum.datetime(2026, 3, 8, 3)  # the scheduler's datetimes are pendulum's
    scheduled = TimeRestriction(earliest=None, latest=None, catchup=False)
    grace = dt.timedelta(minutes=10)
    for dag, period in ((train, dt.timedelta(days=1)), (monitor, dt.timedelta(hours=1))):
        assert dag.start_date is None
        timetable = decode_timetable(encode_timetable(dag.timetable))
        for last in (None, DataInterval(march, march)):
            first = timetable.next_dagrun_info(
                last_automated_data_interval=last, restriction=scheduled
            )
            assert first is not None
            # The next slot, or one that passed within the grace.
            assert now - grace <= first.run_after <= now + period, (dag.dag_id, last, first)
    # A test stack's switch: no cron slot at all (asset events and backfills run as ever).
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HELMSMAN_CRON", "off")
        assert timetable.next_dagrun_info(last_automated_data_interval=None,
                                          restriction=scheduled) is None  # fmt: skip
    backfill = TimeRestriction(earliest=march, latest=march + dt.timedelta(days=2), catchup=True)
    timetable, days, last = decode_timetable(encode_timetable(train.timetable)), [], None
    while (info := timetable.next_dagrun_info(last_automated_data_interval=last,
                                              restriction=backfill)) is not None:  # fmt: skip
        days.append(info.run_after.date().isoformat())
        last = info.data_interval
    assert days == ["2026-03-08", "2026-03-09", "2026-03-10"]
