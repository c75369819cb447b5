"""Protobuf request bodies: decoded from the published Kubernetes .proto files to the JSON a
real API server would have received, and accepted from real kubectl.

The unit tests encode objects the way client-go does (``go_encode``: every non-pointer field
written, zero or not) with the message classes of the vendored descriptor set, and check that
decoding gives back exactly the JSON they started from. The cluster tests run kubectl 1.32,
whose typed clients send ``application/vnd.kubernetes.protobuf``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, message_factory

from localcluster import protobuf
from localcluster.apiserver import DELETE_OPTIONS
from localcluster.errors import ApiError
from localcluster.resources import KINDS
from tests.cluster_fixtures import Cluster, pod_manifest, wait_for
from tools import k8s_proto

KUBECTL = shutil.which("kubectl")
META = "k8s.io.apimachinery.pkg.apis.meta.v1"


# -- an encoder as client-go writes bodies ---------------------------------------------------


def message_class(name: str) -> Any:
    return message_factory.GetMessageClass(protobuf.schema().pool.FindMessageTypeByName(name))


def go_encode(obj: dict[str, Any], api_version: str | None = None) -> bytes:
    """``obj`` (Kubernetes JSON) as client-go's protobuf encoder sends it: the magic, the
    ``runtime.Unknown`` envelope, and the object with each non-pointer field written even
    when it is zero (gogo's marshaller does), so decoding must leave those out again."""
    version = api_version or obj["apiVersion"]
    descriptor = protobuf.schema().message(version, obj["kind"])
    assert descriptor is not None, obj["kind"]
    message = message_factory.GetMessageClass(descriptor)()
    fill(message, obj)
    return envelope(version, obj["kind"], message.SerializeToString())


def envelope(api_version: str, kind: str, raw: bytes, **fields: str) -> bytes:
    unknown = message_class("k8s.io.apimachinery.pkg.runtime.Unknown")()
    unknown.typeMeta.apiVersion, unknown.typeMeta.kind = api_version, kind
    unknown.raw = raw
    for name, value in fields.items():
        setattr(unknown, name, value)
    return protobuf.MAGIC + unknown.SerializeToString()


def fill(message: Any, value: Any) -> None:
    """Set ``message`` from its JSON ``value`` (None: the Go zero value)."""
    name = message.DESCRIPTOR.full_name
    message.SetInParent()
    if name in WELL_KNOWN:
        WELL_KNOWN[name](message, value)
        return
    for field in message.DESCRIPTOR.fields:
        tag = protobuf.schema().tag(field)
        if tag.inline:
            fill(getattr(message, field.name), value or {})
        elif value and tag.name in value:
            put(message, field, value[tag.name])
        elif not tag.pointer and not field.is_repeated:
            put(message, field, None)


def put(message: Any, field: Any, value: Any) -> None:
    target = getattr(message, field.name)
    if field.is_repeated and field.message_type and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            if value_field.message_type is not None:
                fill(target[key], item)
            else:
                target[key] = scalar(value_field, item)
    elif field.is_repeated:
        for item in value:
            if field.message_type is not None:
                fill(target.add(), item)
            else:
                target.append(scalar(field, item))
    elif field.message_type is not None:
        fill(target, value)
    else:
        setattr(message, field.name, scalar(field, value))


def scalar(field: Any, value: Any) -> Any:
    if value is None:
        return field.default_value
    if field.type == field.TYPE_BYTES:
        return base64.b64decode(value)
    return value


def fill_time(message: Any, value: str | None) -> None:
    if value is not None:
        moment = dt.datetime.fromisoformat(value)
        message.seconds = int(moment.timestamp())
        message.nanos = moment.microsecond * 1000
    else:
        message.seconds, message.nanos = 0, 0


def fill_int_or_string(message: Any, value: int | str | None) -> None:
    message.type = 1 if isinstance(value, str) else 0
    message.intVal = value if isinstance(value, int) else 0
    message.strVal = value if isinstance(value, str) else ""


def fill_raw(message: Any, value: Any) -> None:
    if value is not None:
        message.raw = json.dumps(value).encode()


WELL_KNOWN: dict[str, Callable[[Any, Any], None]] = {
    f"{META}.Time": fill_time,
    f"{META}.MicroTime": fill_time,
    "k8s.io.apimachinery.pkg.api.resource.Quantity": lambda m, v: setattr(m, "string", v or "0"),
    "k8s.io.apimachinery.pkg.util.intstr.IntOrString": fill_int_or_string,
    "k8s.io.apimachinery.pkg.runtime.RawExtension": fill_raw,
}


def raises_api_error(code: int, *needles: str) -> Callable[[Callable[[], Any]], ApiError]:
    def check(call: Callable[[], Any]) -> ApiError:
        with pytest.raises(ApiError) as caught:
            call()
        assert caught.value.code == code, caught.value.message
        for needle in needles:
            assert needle in caught.value.message
        return caught.value

    return check


# -- objects as a real client writes them in JSON ---------------------------------------------


def configmap() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "default", "labels": {"app": "web"}},
        "data": {"a": "b", "empty": ""},
        "binaryData": {"blob": base64.b64encode(b"\x00\x01\xfe\xff").decode()},
    }


def deployment(max_surge: int | str) -> dict[str, Any]:
    labels = {"app": "web"}
    container = {
        "name": "web",
        "image": "python:3.11-slim",
        "command": ["python", "-c", "import time; time.sleep(600)"],
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": [
            {"name": "MODE", "value": "serve"},
            {
                "name": "LEVEL",
                "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}},
            },
        ],
        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m"}},
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "default",
            "labels": labels,
            "creationTimestamp": "2026-01-02T03:04:05Z",
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container],
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                    "terminationGracePeriodSeconds": 0,
                },
            },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": max_surge, "maxUnavailable": 0},
            },
        },
        "status": {},
    }


def job() -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once", "namespace": "default"},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 0,
            "completions": 1,
            "template": {
                "metadata": {},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "once",
                            "image": "python:3.11-slim",
                            "command": ["python", "-c", "print(1)"],
                            "resources": {},
                        }
                    ],
                },
            },
        },
        "status": {},
    }


# -- unit tests ------------------------------------------------------------------------------


def test_a_configmap_decodes_to_its_json() -> None:
    obj = configmap()
    assert protobuf.decode(go_encode(obj), ("v1", "ConfigMap")) == obj


def test_secret_bytes_come_back_as_base64() -> None:
    secret = message_class("k8s.io.api.core.v1.Secret")()
    secret.metadata.name = "creds"
    secret.data["key"] = b"\x00\xffbinary\n"
    secret.data["v"] = b"v"
    secret.type = "Opaque"
    body = envelope("v1", "Secret", secret.SerializeToString())
    assert protobuf.decode(body, ("v1", "Secret")) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "data": {"key": "AP9iaW5hcnkK", "v": "dg=="},
        "type": "Opaque",
    }


@pytest.mark.parametrize("max_surge", ["25%", 1])
def test_a_deployment_decodes_to_its_json(max_surge: int | str) -> None:
    """IntOrString either way, Quantity strings, a Time, inlined fields (a Volume's emptyDir,
    an env var's configMapKeyRef name, a probe's httpGet) and pointer zeros (replicas: 0,
    maxUnavailable: 0) that must survive while non-pointer zeros are dropped."""
    obj = deployment(max_surge)
    assert protobuf.decode(go_encode(obj), ("apps/v1", "Deployment")) == obj


def test_zero_fields_client_go_writes_are_left_out() -> None:
    """What go_encode puts on the wire: the empty strings and zeros of every non-pointer field
    (as kubectl's own bodies carry them), none of which is in the JSON."""
    body = go_encode(configmap())
    unknown = message_class("k8s.io.apimachinery.pkg.runtime.Unknown").FromString(body[4:])
    sent = message_class("k8s.io.api.core.v1.ConfigMap").FromString(unknown.raw)
    written = {f.name: v for f, v in sent.metadata.ListFields()}
    assert written["uid"] == ""
    assert written["generation"] == 0
    assert "creationTimestamp" in written
    decoded = protobuf.decode(body, ("v1", "ConfigMap"))
    assert set(decoded["metadata"]) == {"name", "namespace", "labels"}


def test_a_job_decodes_to_its_json() -> None:
    obj = job()
    assert protobuf.decode(go_encode(obj), ("batch/v1", "Job")) == obj


def test_micro_time_keeps_six_fractional_digits() -> None:
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "leader", "namespace": "kube-system"},
        "spec": {
            "holderIdentity": "a",
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-01-02T03:04:05.000000Z",
            "renewTime": "2026-01-02T03:04:06.123456Z",
        },
    }
    assert protobuf.decode(go_encode(lease), ("coordination.k8s.io/v1", "Lease")) == lease


def test_raw_extension_is_the_embedded_json() -> None:
    revision = {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {"name": "web-1"},
        "data": {"spec": {"template": {"metadata": {"labels": {"app": "web"}}}}},
        "revision": 1,
    }
    decoded = protobuf.decode(go_encode(revision), ("apps/v1", "ControllerRevision"))
    assert decoded == revision


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [(0, "0s"), (1_500_000, "1.5ms"), (90 * 10**9, "1m30s"), (3600 * 10**9, "1h0m0s")],
)
def test_durations_read_as_go_writes_them(nanoseconds: int, text: str) -> None:
    duration = message_class(f"{META}.Duration")(duration=nanoseconds)
    assert protobuf.CUSTOM_JSON[f"{META}.Duration"](duration) == text


@pytest.mark.parametrize("api_version", ["meta.k8s.io/v1", "v1", "apps/v1"])
def test_delete_options_come_from_any_group_version(api_version: str) -> None:
    options = {
        "apiVersion": api_version,
        "kind": "DeleteOptions",
        "gracePeriodSeconds": 0,
        "propagationPolicy": "Foreground",
        "dryRun": ["All"],
    }
    assert protobuf.decode(go_encode(options), DELETE_OPTIONS) == options


def test_bad_bodies_are_400_saying_what_failed() -> None:
    good = go_encode(configmap())
    expected = ("v1", "ConfigMap")
    raises_api_error(400, "does not appear to be a protobuf message", "[107 56 115 0]")(
        lambda: protobuf.decode(b'{"kind": "ConfigMap"}', expected)
    )
    raises_api_error(400, "empty body")(lambda: protobuf.decode(protobuf.MAGIC, expected))
    raises_api_error(400, "unrecognized (must be of type ConfigMap)", "runtime.Unknown")(
        lambda: protobuf.decode(good[:8], expected)
    )
    raw = message_class("k8s.io.api.core.v1.ConfigMap")(data={"a": "b"}).SerializeToString()
    raises_api_error(400, 'ConfigMap in version "v1" cannot be handled as a ConfigMap')(
        lambda: protobuf.decode(envelope("v1", "ConfigMap", raw[:-2]), expected)
    )


def test_kinds_other_than_the_endpoints_are_400() -> None:
    expected = ("v1", "ConfigMap")
    raises_api_error(400, 'no kind "Gadget" is registered for version "v1"')(
        lambda: protobuf.decode(envelope("v1", "Gadget", b""), expected)
    )
    raises_api_error(400, "the body is a Secret of v1, this endpoint takes ConfigMap")(
        lambda: protobuf.decode(envelope("v1", "Secret", b""), expected)
    )
    raises_api_error(400, 'content encoding "gzip" is not supported')(
        lambda: protobuf.decode(envelope("v1", "ConfigMap", b"", contentEncoding="gzip"), expected)
    )


def test_an_envelope_without_type_meta_takes_the_endpoints_kind() -> None:
    raw = message_class("k8s.io.api.core.v1.ConfigMap")(data={"a": "b"}).SerializeToString()
    decoded = protobuf.decode(envelope("", "", raw), ("v1", "ConfigMap"))
    assert decoded == {"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}}


def test_gateway_api_kinds_have_no_protobuf_and_answer_415() -> None:
    raises_api_error(415, "application/json", "has no protobuf encoding")(
        lambda: protobuf.decode(go_encode(configmap()), ("gateway.networking.k8s.io/v1", "Gateway"))
    )


def test_every_served_kind_but_the_gateway_api_has_a_message() -> None:
    """A kind added to resources.py needs its package in tools/k8s_proto.py (and a rebuild);
    read-only kinds (metrics.k8s.io) take no bodies."""
    missing = {
        k.kind
        for k in KINDS
        if protobuf.schema().message(k.api_version, k.kind) is None
        and k.group != "gateway.networking.k8s.io"
        and "create" in k.verbs
    }
    assert missing == set()


def test_the_go_tags_cover_every_vendored_message() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(
        (protobuf.PROTO_DIR / "kubernetes.binpb").read_bytes()
    )
    k8s_proto.check_tags(files)
    for name in protobuf.CUSTOM_JSON:
        protobuf.schema().pool.FindMessageTypeByName(name)


@pytest.mark.parametrize(
    ("accept", "refused"),
    [
        ("application/vnd.kubernetes.protobuf", True),
        ("application/vnd.kubernetes.protobuf;stream=watch", True),
        ("application/vnd.kubernetes.protobuf,application/json", False),
        ("application/json", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_protobuf_only_clients_get_406(accept: str, refused: bool) -> None:
    if refused:
        raises_api_error(406, "application/json")(lambda: protobuf.check_accept(accept))
    else:
        protobuf.check_accept(accept)


# -- real kubectl against localcluster --------------------------------------------------------


@pytest.fixture
def kubectl(cluster: Cluster) -> Callable[..., str]:
    assert KUBECTL, "kubectl is not on PATH"

    def run(*args: str) -> str:
        proc = subprocess.run(
            [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, f"kubectl {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    return run


def stored(cluster: Cluster, path: str) -> dict[str, Any]:
    """The object at an API path, as the server stores it."""
    with cluster.access.open(path) as response:
        found: dict[str, Any] = json.load(response)
        return found


def contained(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where ``actual`` lacks or differs from what ``expected`` says (extra fields, such as the
    server's defaults, are fine); a null creationTimestamp is what JSON writes for unset."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return [
            problem
            for key, value in expected.items()
            if not (key == "creationTimestamp" and value is None)
            for problem in contained(value, actual.get(key), f"{path}.{key}")
        ]
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        pairs = enumerate(zip(expected, actual, strict=True))
        return [p for i, (e, a) in pairs for p in contained(e, a, f"{path}[{i}]")]
    return [] if expected == actual else [f"{path}: {expected!r} != {actual!r}"]


def as_sent(kubectl: Callable[..., str], create: tuple[str, ...], *command: str) -> Any:
    """What a ``kubectl create`` command sends, as kubectl itself writes it in JSON (its
    flags go before the container command that follows ``--``)."""
    return json.loads(kubectl(*create, "--dry-run=client", "-o", "json", *command))


def test_kubectl_sends_protobuf_here(kubectl: Callable[..., str]) -> None:
    """The premise: kubectl 1.32's typed clients write protobuf and accept JSON back."""
    log = kubectl("create", "configmap", "premise", "--from-literal=a=b", "-v=8")
    assert "Content-Type: application/vnd.kubernetes.protobuf" in log
    assert "Accept: application/vnd.kubernetes.protobuf,application/json" in log


def test_kubectl_create_configmap(cluster: Cluster, kubectl: Callable[..., str]) -> None:
    assert "configmap/x created" in kubectl("create", "configmap", "x", "--from-literal=a=b")
    assert cluster.core.read_namespaced_config_map("x", "default").data == {"a": "b"}


def test_kubectl_create_secret(cluster: Cluster, kubectl: Callable[..., str]) -> None:
    create = ("create", "secret", "generic", "s", "--from-literal=k=v")
    sent = as_sent(kubectl, create)
    kubectl(*create)
    assert contained(sent, stored(cluster, "/api/v1/namespaces/default/secrets/s")) == []
    secret = cluster.core.read_namespaced_secret("s", "default")
    assert base64.b64decode(secret.data["k"]) == b"v"


def test_kubectl_create_namespace(cluster: Cluster, kubectl: Callable[..., str]) -> None:
    kubectl("create", "namespace", "made-by-protobuf")
    namespace = cluster.core.read_namespace("made-by-protobuf")
    assert namespace.status.phase == "Active"


def test_kubectl_create_deployment(cluster: Cluster, kubectl: Callable[..., str]) -> None:
    create = ("create", "deployment", "web", "--image=python:3.11-slim", "--replicas=2")
    command = ("--", "python", "-c", "import time; time.sleep(600)")
    sent = as_sent(kubectl, create, *command)
    kubectl(*create, *command)
    obj = stored(cluster, "/apis/apps/v1/namespaces/default/deployments/web")
    assert contained(sent, obj) == []
    container = obj["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "python:3.11-slim"
    assert container["command"] == list(command[1:])
    assert obj["spec"]["replicas"] == 2
    wait_for(
        "two ready replicas",
        lambda: (
            (cluster.apps.read_namespaced_deployment("web", "default").status.ready_replicas) == 2
        ),
        timeout=60,
    )
    kubectl("delete", "deployment", "web", "--wait=false")


def test_kubectl_create_job(cluster: Cluster, kubectl: Callable[..., str]) -> None:
    create = ("create", "job", "once", "--image=python:3.11-slim")
    command = ("--", "python", "-c", "print(1)")
    sent = as_sent(kubectl, create, *command)
    kubectl(*create, *command)
    obj = stored(cluster, "/apis/batch/v1/namespaces/default/jobs/once")
    assert contained(sent, obj) == []
    spec = obj["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["containers"][0]["command"] == list(command[1:])


def test_kubectl_create_job_from_a_cronjob(cluster: Cluster, kubectl: Callable[..., str]) -> None:
    command = ("--", "python", "-c", "print(2)")
    kubectl(
        "create", "cronjob", "nightly", "--image=python:3.11-slim", "--schedule=0 3 * * *", *command
    )
    kubectl("create", "job", "nightly-now", "--from=cronjob/nightly")
    cronjob = stored(cluster, "/apis/batch/v1/namespaces/default/cronjobs/nightly")
    obj = stored(cluster, "/apis/batch/v1/namespaces/default/jobs/nightly-now")
    template = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert obj["spec"]["template"]["spec"]["containers"] == template["containers"]
    assert obj["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    owner = obj["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("CronJob", "nightly")


# -- the API server's handling of protobuf, over raw HTTPS -----------------------------------


def call(
    cluster: Cluster, method: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> Any:
    """(status, JSON answer) of one request to the cluster."""
    access = cluster.access
    request = access.request(path, data=body, method=method, **(headers or {}))
    try:
        with access.open(request) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


PROTO = {"Content-Type": protobuf.MEDIA_TYPE}


def test_put_and_delete_options_in_protobuf(cluster: Cluster) -> None:
    path = "/api/v1/namespaces/default/configmaps/replaced"
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "replaced"}}
    status, _ = call(cluster, "POST", path.rsplit("/", 1)[0], go_encode(obj), PROTO)
    assert status == 201
    current = stored(cluster, path)
    updated = {**obj, "metadata": current["metadata"], "data": {"new": "value"}}
    status, answer = call(cluster, "PUT", path, go_encode(updated), PROTO)
    assert (status, answer["data"]) == (200, {"new": "value"})

    dry = {"apiVersion": "v1", "kind": "DeleteOptions", "dryRun": ["All"]}
    status, _ = call(cluster, "DELETE", path, go_encode(dry), PROTO)
    assert status == 200
    assert stored(cluster, path)["data"] == {"new": "value"}
    now = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
    status, _ = call(cluster, "DELETE", path, go_encode(now), PROTO)
    assert status == 200
    assert call(cluster, "GET", path, b"")[0] == 404


def encoded(obj: dict[str, Any], encoding: str) -> tuple[bytes, dict[str, str]]:
    """A body and its Content-Type header, in JSON or in protobuf."""
    if encoding == "json":
        return json.dumps(obj).encode(), {"Content-Type": "application/json"}
    return go_encode(obj), PROTO


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_dry_runs_in_delete_options_and_evictions(cluster: Cluster, encoding: str) -> None:
    """A DELETE's options and an Eviction read alike from either encoding: a dry run in the
    body leaves the object where it is."""
    name = f"dry-{encoding}"
    cluster.core.create_namespaced_pod("default", pod_manifest(name, "import time; time.sleep(60)"))
    path = f"/api/v1/namespaces/default/pods/{name}"
    options = {"apiVersion": "v1", "kind": "DeleteOptions", "dryRun": ["All"]}
    status, _ = call(cluster, "DELETE", path, *encoded(options, encoding))
    assert status == 200
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": "default"},
        "deleteOptions": {"dryRun": ["All"]},
    }
    status, _ = call(cluster, "POST", f"{path}/eviction", *encoded(eviction, encoding))
    assert status == 201
    assert "deletionTimestamp" not in stored(cluster, path)["metadata"]
    status, _ = call(
        cluster, "POST", f"{path}/eviction", *encoded({**eviction, "deleteOptions": {}}, encoding)
    )
    assert status == 201
    wait_for("the evicted pod to go", lambda: call(cluster, "GET", path, b"")[0] == 404)


def test_refusals_over_http(cluster: Cluster) -> None:
    """A protobuf patch is 415, a Gateway API body in protobuf 415, a bad body 400 and a
    client that takes protobuf only 406, each a Status with the reason the real server gives."""
    path = "/api/v1/namespaces/default/configmaps"
    status, answer = call(cluster, "PATCH", f"{path}/x", go_encode(configmap()), PROTO)
    assert (status, answer["reason"]) == (415, "UnsupportedMediaType")
    gateways = "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways"
    status, answer = call(cluster, "POST", gateways, go_encode(configmap()), PROTO)
    assert (status, answer["reason"]) == (415, "UnsupportedMediaType")
    status, answer = call(cluster, "POST", path, b"k8s\x00\x0a\xff", PROTO)
    assert (status, answer["reason"]) == (400, "BadRequest")
    assert "runtime.Unknown" in answer["message"]
    status, answer = call(cluster, "GET", path, b"", {"Accept": protobuf.MEDIA_TYPE})
    assert (status, answer["reason"]) == (406, "NotAcceptable")
