"""What a training run may be asked to do, refused before it starts: unknown conf keys, a data
end in the future, knobs beyond what a training pod can run, a serving image from a registry
the platform does not permit.

The API server's 400 for each is tested through the real stack (tests/e2e, test_1); here are
the rules themselves, Airflow's own Param validation of the DAG's Params, and the trigger
form's view of the image pattern (ECMAScript's regular expressions, run by node).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from helmsman import factory, runconf
from helmsman.pods import REGISTRY, Platform
from helmsman_steps import contract

REPO = Path(__file__).resolve().parents[2]
TODAY = dt.date(2026, 12, 2)
DECLARED = ["data_end", "epochs", "seed"]


def test_unknown_keys_and_future_days_are_each_named_with_the_fix() -> None:
    found = runconf.problems({"epoch": 3, "data_end": "2026-12-03"}, DECLARED, TODAY)
    assert found == [
        "unknown conf keys ['epoch']: this DAG takes ['data_end', 'epochs', 'seed'] "
        "(check the spelling)",
        "data_end: 2026-12-03 is in the future (today is 2026-12-02 UTC): no data exists after "
        "today; give 2026-12-02 or an earlier day",
    ]


@pytest.mark.parametrize(
    "conf",
    [{}, {"data_end": "2026-12-02"}, {"data_end": "2020-01-01", "epochs": 2}, {"data_end": None}],
)
def test_a_run_up_to_today_with_declared_keys_passes(conf: dict[str, object]) -> None:
    assert runconf.problems(conf, DECLARED, TODAY) == []


def test_a_date_param_the_dag_does_not_declare_is_only_an_unknown_key() -> None:
    assert runconf.problems({"data_end": "2999-01-01"}, ["epochs"], TODAY) == [
        "unknown conf keys ['data_end']: this DAG takes ['epochs'] (check the spelling)"
    ]


def test_the_hidden_pattern_takes_exactly_the_widths_and_depths_the_step_takes() -> None:
    pattern = re.compile(factory.HIDDEN_PATTERN)
    accepted = [w for w in range(0, 5001) if pattern.fullmatch(str(w))]
    assert accepted == list(range(1, contract.MAX_WIDTH + 1))
    assert pattern.fullmatch(",".join(["4096"] * contract.MAX_LAYERS))
    assert not pattern.fullmatch(",".join(["8"] * (contract.MAX_LAYERS + 1)))
    for bad in ("", "64,,32", "064", "64,", " 64", "1" * 40):
        assert not pattern.fullmatch(bad), bad
    # Airflow's validator searches (re.search), where $ also matches before a final newline.
    assert not pattern.search("64,32\n")


@pytest.fixture(scope="module")
def train_params() -> object:
    train, _, _, _ = factory.model_dags("churn", REPO / "models")
    return train.params


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("seed", contract.MAX_SEED, contract.MAX_SEED + 1),
        ("seed", 0, 10**30),
        ("hidden", "4096,8", "64,5000"),
        ("serving_image", f"{REGISTRY}/helmsman-serve:0.2.0", "docker.io/someone/serve:latest"),
        ("serving_image", None, f"{REGISTRY}-evil/helmsman-serve:0.1.0"),
        ("serving_image", f"{REGISTRY}/serve:1", f"{REGISTRY}/serve:1\n"),
        ("hidden", "64,32", "64,32\n"),
    ],
)
def test_airflow_validates_the_bounds_of_the_form(
    train_params: object, name: str, good: object, bad: object
) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    param = train_params.get_param(name)  # type: ignore[attr-defined]
    assert param.resolve(value=good) == good
    with pytest.raises(ParamValidationError):
        param.resolve(value=bad)


DIGEST = "@sha256:" + "0123456789abcdef" * 4
IMAGES = [
    "",
    f"{REGISTRY}/helmsman-serve:0.1.0",
    f"{REGISTRY}/helmsman-serve:0.1.0-crash",  # the tests' fault images
    f"{REGISTRY}/helmsman-serve{DIGEST}",
    f"{REGISTRY}x/helmsman-serve:0.1.0",
    "ghcr.io/acme/serve:1.2",
    f"ghcr.io/acme/serve{DIGEST}",
    f"ghcr.io/acme/server{DIGEST}",
    f"registry.acme.internal:5000/ml/team-a/serve{DIGEST}",
    "registry.acme.internal:5000/ml/serve:1",
    f"{REGISTRY}/a b",
    f"{REGISTRY}/sérve:1",  # \w would take it in Python and not in the browser
]
PINNED = Platform(
    serving_images=("ghcr.io/acme/serve", "registry.acme.internal:5000/ml/"), pin_digests=True
)


ALLOWED = {
    "default": IMAGES[:4],
    "pinned": [
        "",
        f"ghcr.io/acme/serve{DIGEST}",
        f"registry.acme.internal:5000/ml/team-a/serve{DIGEST}",
    ],
}


@pytest.mark.parametrize(
    ("platform", "allowed"),
    [(Platform(), ALLOWED["default"]), (PINNED, ALLOWED["pinned"])],
    ids=["default", "pinned"],
)
def test_serving_images_come_only_from_the_permitted_places(
    platform: Platform, allowed: list[str]
) -> None:
    for image in IMAGES:
        if image in allowed:
            platform.check_serving_image(image)
        else:
            with pytest.raises(ValueError, match="is not permitted: it must come from"):
                platform.check_serving_image(image)
    # The trigger form's validator reads the pattern as ECMAScript (unicode mode): same answers.
    script = (
        "const [p, images] = [process.argv[1], JSON.parse(process.argv[2])];"
        "const re = new RegExp(p, 'u');"
        "console.log(JSON.stringify(images.filter((i) => re.test(i))));"
    )
    ran = subprocess.run(
        ["node", "-e", script, platform.serving_image_pattern(), json.dumps(IMAGES)],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert json.loads(ran.stdout) == allowed


def test_by_default_overrides_come_from_the_platforms_own_registry() -> None:
    corp = Platform(registry="registry.corp.example/ml")
    corp.check_serving_image("registry.corp.example/ml/helmsman-serve:0.2.0")
    with pytest.raises(ValueError, match=r"registry\.corp\.example/ml/"):
        corp.check_serving_image(f"{REGISTRY}/helmsman-serve:0.1.0")


@pytest.mark.parametrize(
    ("path", "root_path", "dag_id"),
    [
        ("/api/v2/dags/train_churn/dagRuns", "", "train_churn"),
        ("/airflow/api/v2/dags/train_churn/dagRuns", "/airflow", "train_churn"),  # a sub-path
        ("/api/v2/dags/train_churn/dagRuns/manual__1", "", None),
        ("/api/v2/dags/train_churn", "", None),
    ],
)
def test_the_middleware_knows_a_trigger_under_any_root_path(
    path: str, root_path: str, dag_id: str | None
) -> None:
    scope = {"type": "http", "method": "POST", "path": path, "root_path": root_path}
    assert runconf._trigger_of(scope) == dag_id
    assert runconf._trigger_of({**scope, "method": "GET"}) is None


def test_the_rollout_refuses_an_image_the_trigger_would_have() -> None:
    """A run started without the API (the CLI, dag.test) meets the same rule in the rollout,
    before any object changes."""
    from airflow.sdk.exceptions import AirflowFailException

    from helmsman.deploy import RolloutOperator

    operator = RolloutOperator(task_id="rollout", model_name="churn",
                               image="docker.io/someone/serve:latest", replicas=1)  # fmt: skip
    context = {"dag_run": SimpleNamespace(dag_id="train_churn", run_id="manual__1")}
    with pytest.raises(AirflowFailException, match=r"'docker\.io/someone/serve:latest' is not"):
        operator._target(context, "3")
    allowed = RolloutOperator(task_id="rollout", model_name="churn", image="", replicas=1)
    assert allowed._target(context, "3").image == Platform().image("serve")


def test_a_run_started_without_the_api_fails_its_plan_at_once_with_every_problem() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    train, _, _, _ = factory.model_dags("churn", REPO / "models")
    plan = train.get_task("plan").python_callable
    future = str(runconf.today_utc() + dt.timedelta(days=2))
    conf = {"data_end": future, "epoch": 3, "gpus": 3}
    params = {**train.params.dump(), **conf, "nodes": 2}
    dag_run = SimpleNamespace(conf=conf, run_after=dt.datetime.now(dt.UTC))
    with pytest.raises(AirflowFailException) as failed:
        plan(params=params, dag_run=dag_run, data_interval_start=None, data_interval_end=None,
             triggering_asset_events=None)  # fmt: skip
    message = str(failed.value)
    assert "unknown conf keys ['epoch']" in message
    assert f"data_end: {future} is in the future" in message
    assert "gpus x nodes = 6" in message
    today = dict(conf, data_end=str(runconf.today_utc()), gpus=1)
    del today["epoch"]
    run_now = SimpleNamespace(conf=today, run_after=dt.datetime.now(dt.UTC))
    planned = plan(params={**params, **today, "nodes": 1}, dag_run=run_now,
                   data_interval_start=None, data_interval_end=None,
                   triggering_asset_events=None)  # fmt: skip
    assert planned["end"] == str(runconf.today_utc())


def test_serving_pods_read_mlflow_with_the_serving_secret_the_platform_names() -> None:
    """Not the pipeline's account: a serving pod only reads models, and its credentials must
    not move @champion or change a model."""
    from helmsman.deploy import RolloutOperator
    from helmsman.serving import objects

    platform = Platform(serving_mlflow_secret="team-a-mlflow-reader")  # noqa: S106 - a name
    operator = RolloutOperator(task_id="rollout", model_name="churn", image="", replicas=1,
                               platform=platform)  # fmt: skip
    context = {"dag_run": SimpleNamespace(dag_id="train_churn", run_id="manual__1")}
    deployment = objects.deployment(operator._target(context, "3"), "blue", 1)
    sources = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    secrets = [s["secretRef"]["name"] for s in sources if "secretRef" in s]
    assert secrets == ["team-a-mlflow-reader"]
    assert platform.mlflow_secret not in secrets
    default = objects.deployment(objects.Target("churn-serving", "ml", "churn", "3"), "blue", 1)
    sources = default["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert {"secretRef": {"name": Platform().serving_mlflow_secret}} in sources
