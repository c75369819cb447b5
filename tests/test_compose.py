"""docker-compose.yml is a valid Compose file whose services are wired consistently.

No Docker engine runs here, so the file is checked as data against the Compose Specification's
own JSON Schema (vendored in tests/schemas/).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.dev_env import REPO

# The spec says draft-07 but spells its $schema URI without the trailing "#", which jsonschema
# does not recognise; name the draft explicitly.
VALIDATOR = jsonschema.Draft7Validator(
    json.loads((Path(__file__).parent / "schemas" / "compose-spec.json").read_text())
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def test_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    VALIDATOR.validate(compose)


def test_the_schema_rejects_a_misspelled_key(compose: dict[str, Any]) -> None:
    broken = {**compose, "services": {"mlflow": {**compose["services"]["mlflow"], "imgae": "x"}}}
    with pytest.raises(jsonschema.ValidationError, match="imgae"):
        VALIDATOR.validate(broken)


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "image" in service:
            _, _, tag = service["image"].split("/")[-1].partition(":")
            assert tag not in ("", "latest"), f"service {name}: pin {service['image']!r}"


def test_published_ports_are_loopback_only_and_unique(compose: dict[str, Any]) -> None:
    published = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert all(str(p).startswith("127.0.0.1:") for p in published), published
    host_ports = [str(p).split(":")[1] for p in published]
    assert len(host_ports) == len(set(host_ports)), host_ports


def test_depends_on_names_existing_services(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    for name, service in compose["services"].items():
        assert set(service.get("depends_on", {})) <= services, name


def test_every_built_image_has_its_dockerfile_and_every_mounted_file_exists(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"service {name} mounts missing {source}"


def test_the_stack_has_what_the_pipeline_needs_and_no_secret_inline(
    compose: dict[str, Any],
) -> None:
    services = set(compose["services"])
    airflow = {f"airflow-{c}" for c in ("api-server", "scheduler", "dag-processor", "triggerer")}
    assert {"postgres", "minio", "mlflow", "localcluster"} | airflow <= services
    text = (REPO / "docker-compose.yml").read_text()
    assert "change-me" not in text  # values live in .env (from .env.example)
    example = (REPO / ".env.example").read_text()
    for variable in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "AIRFLOW_SECRET_KEY"):
        assert f"${{{variable}" in text
        assert f"{variable}=" in example
    # Airflow waits for a healthy database, cluster and MLflow, and a finished migration.
    waits = compose["services"]["airflow-scheduler"]["depends_on"]
    assert waits["airflow-init"]["condition"] == "service_completed_successfully"
    assert waits["postgres"]["condition"] == "service_healthy"
    checked = ("postgres", "minio", "mlflow", "localcluster", "airflow-api-server")
    assert all("healthcheck" in compose["services"][s] for s in checked)
