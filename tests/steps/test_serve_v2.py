"""The Open Inference Protocol v2 (the REST API of KServe, Triton and MLServer) on the model
server, as a real process: every request and response is checked against the protocol's own
OpenAPI schemas (tests/schemas/open_inference_rest.yaml, vendored unmodified), so a standard
v2 client's JSON requests work and what it reads back is what the protocol promises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import mlflow
import numpy as np
import pytest
import yaml

from helmsman_steps import contract, registry
from tests.mlflow_fixtures import Trained
from tests.steps.test_serve import ROW
from tools.procs import Server

SPEC = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "schemas" / "open_inference_rest.yaml").read_text()
)


def check(schema: str, document: Any) -> None:
    """``document`` is a valid ``components/schemas/<schema>`` of the protocol."""
    resolver = {"components": SPEC["components"], "$ref": f"#/components/schemas/{schema}"}
    jsonschema.validate(document, resolver)


def tensors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as v2 input tensors, one per column, as a client builds them from a frame."""
    out = []
    for name in rows[0]:
        values = [r[name] for r in rows]
        kind = "BYTES" if isinstance(values[0], str) else "FP32"
        out.append({"name": name, "shape": [len(values)], "datatype": kind, "data": values})
    return out


@pytest.fixture
def url(champion_server: Server) -> str:
    return str(champion_server.url)  # type: ignore[attr-defined]


def infer(url: str, name: str, request: dict[str, Any], version: str | None = None) -> Any:
    check("inference_request", request)
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    return httpx.post(url + path, json=request, timeout=10)


def test_health_and_metadata_follow_the_protocol(url: str, champion: Trained) -> None:
    server = httpx.get(f"{url}/v2").json()
    check("metadata_server_response", server)
    assert server["name"] == "helmsman"
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    name, version = champion.model_name, champion.version
    assert httpx.get(f"{url}/v2/models/{name}/ready").status_code == 200
    assert httpx.get(f"{url}/v2/models/{name}/versions/{version}/ready").status_code == 200
    meta = httpx.get(f"{url}/v2/models/{name}").json()
    check("metadata_model_response", meta)
    assert meta["versions"] == [version]
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        (k, "BYTES" if isinstance(v, str) else "FP32") for k, v in ROW.items()
    ]
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1]}]


def test_an_inference_answers_what_predict_answers_for_the_golden_set(
    url: str, champion: Trained
) -> None:
    run_id = registry.resolve(f"models:/{champion.model_name}/{champion.version}").run_id
    golden = mlflow.artifacts.load_dict(f"runs:/{run_id}/{contract.GOLDEN_ARTIFACT}")
    rows = golden["inputs"][:50]
    response = infer(url, champion.model_name, {"id": "r-1", "inputs": tensors(rows)})
    assert response.status_code == 200, response.text
    body = response.json()
    check("inference_response", body)
    assert (body["id"], body["model_version"]) == ("r-1", champion.version)
    (score,) = body["outputs"]
    assert (score["name"], score["datatype"], score["shape"]) == ("score", "FP32", [50])
    np.testing.assert_allclose(score["data"], golden["predictions"][:50], rtol=1e-5, atol=1e-6)
    # A [rows, 1] tensor (nested data), a named output and the version in the path: the same.
    nested = [{**t, "shape": [50, 1], "data": [[v] for v in t["data"]]} for t in tensors(rows)]
    again = infer(url, champion.model_name, {"inputs": nested, "outputs": [{"name": "score"}]},
                  version=champion.version).json()  # fmt: skip
    assert again["outputs"][0]["data"] == score["data"]
    # Counted as inferences, beside /predict, for the rollout's analysis.
    assert 'endpoint="/v2/infer"' in httpx.get(f"{url}/metrics").text


def bad(tensors_: list[dict[str, Any]]) -> dict[str, Any]:
    return {"inputs": tensors_}


GOOD = tensors([ROW])


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (bad(GOOD[:-1]), "missing ['region']"),
        (bad([*GOOD, {**GOOD[0], "name": "colour"}]), "unknown ['colour']"),
        (
            bad([{**GOOD[0], "datatype": "BYTES", "data": ["30"]}, *GOOD[1:]]),
            "input 'age': datatype BYTES does not fit the float column; send FP32",
        ),
        (bad([{**GOOD[0], "shape": [2]}, *GOOD[1:]]), "input 'age': 1 values for shape [2]"),
        (bad([{**GOOD[0], "shape": [1, 3]}, *GOOD[1:]]), "shape [1, 3]; send [rows] or [rows, 1]"),
        (
            bad([{**GOOD[0], "data": [250]}, *GOOD[1:]]),
            "Expected `float` <= 100.0 - at input `age` element 0",
        ),
        (
            bad([*GOOD[:-1], {**GOOD[-1], "data": ["north pole"]}]),
            "Invalid enum value 'north pole' - at input `region` element 0",
        ),
        (bad([{**t, "shape": [0], "data": []} for t in GOOD]), "0 rows; send 1 to 10000"),
        ({"inputs": GOOD, "outputs": [{"name": "label"}]}, "unknown outputs ['label']"),
    ],
)
def test_a_bad_inference_request_gets_a_400_naming_what_to_fix(
    url: str, champion: Trained, request_: dict[str, Any], message: str
) -> None:
    response = infer(url, champion.model_name, request_)
    assert response.status_code == 400, response.text
    error = response.json()
    check("inference_error_response", error)
    assert message in error["error"]
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200


def test_what_the_server_does_not_serve_is_a_404_or_405(url: str, champion: Trained) -> None:
    wrong = httpx.post(f"{url}/v2/models/other/infer", json=bad(GOOD))
    assert wrong.status_code == 404
    assert (
        f"this server serves version {champion.version} of '{champion.model_name}'"
        in (wrong.json()["error"])
    )
    path = f"{url}/v2/models/{champion.model_name}/versions/999/infer"
    assert httpx.post(path, json=bad(GOOD)).status_code == 404
    assert httpx.get(f"{url}/v2/models/{champion.model_name}/infer").status_code == 405
    not_json = httpx.post(f"{url}/v2/models/{champion.model_name}/infer", content=b"{nope")
    assert not_json.status_code == 400
    assert json.loads(not_json.text)["error"].startswith("request body is not valid JSON")
