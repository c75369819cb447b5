"""Vendor the Kubernetes ``.proto`` files localcluster decodes, and build their descriptor set.

client-go's typed clients send request bodies as protobuf; localcluster decodes them with the
published ``generated.proto`` files (see ``localcluster/protobuf.py``). Two steps:

``vendor --api DIR --apimachinery DIR``
    From checkouts of the Kubernetes api and apimachinery repositories (at one release tag),
    copy ``generated.proto`` of each package in ``API_PACKAGES`` / ``APIMACHINERY_PACKAGES``
    verbatim to ``localcluster/proto/k8s.io/...``, and write ``json_tags.json``: the Go struct
    tags of the same packages. A proto field says how a value is encoded; the Go ``json`` tag
    of the same field says how the same value looks in JSON (its name, whether it is inlined
    into its parent, omitted when empty, or a pointer whose zero value still counts). Then
    ``build``.
``build``
    Compile the vendored files with protoc into ``kubernetes.binpb`` (a FileDescriptorSet) and
    check that every field of every message has its Go tag, so a new upstream release that
    changes either side fails here instead of decoding wrongly.

protoc comes from the grpcio-tools wheel: the one in this interpreter if it has it, else a
throwaway virtual environment made for the run (it pins its own protobuf, which need not match
the project's).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import venv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import descriptor_pb2

from localcluster.protobuf import CUSTOM_JSON

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "localcluster" / "proto"
DESCRIPTOR_SET = PROTO_DIR / "kubernetes.binpb"
JSON_TAGS = PROTO_DIR / "json_tags.json"
GRPCIO_TOOLS = "grpcio-tools==1.85.1"

# Packages of the api repository with a kind localcluster serves (resources.py) or a body one
# of its subresources takes (Scale, Eviction, Binding).
API_PACKAGES = (
    "core/v1",
    "apps/v1",
    "batch/v1",
    "rbac/v1",
    "networking/v1",
    "policy/v1",
    "autoscaling/v1",
    "autoscaling/v2",
    "coordination/v1",
    "discovery/v1",
    "scheduling/v1",
    "authorization/v1",
    "authentication/v1",
)
# What they import: ObjectMeta and DeleteOptions, the runtime.Unknown envelope, RawExtension,
# Quantity and IntOrString.
APIMACHINERY_PACKAGES = (
    "pkg/apis/meta/v1",
    "pkg/runtime",
    "pkg/runtime/schema",
    "pkg/api/resource",
    "pkg/util/intstr",
)

_STRUCT = re.compile(r"^type (\w+) struct \{")
_SLICE = re.compile(r"^type (\w+) \[\]\S+$")
_DEFINED = re.compile(r"^type (\w+) (\w+)\.(\w+)$")
_IMPORT = re.compile(r'^\s*(\w+) "k8s\.io/(\S+)"$')
_FIELD = re.compile(r"^\s+(?:(\w+)\s+)?(\S+)\s+`([^`]*)`")
_TAG = re.compile(r'(\w+):"([^"]*)"')


def _packages(api: Path, apimachinery: Path) -> Iterator[tuple[Path, str]]:
    """(source folder, path under k8s.io/) of each vendored package."""
    for package in API_PACKAGES:
        yield api / package, f"api/{package}"
    for package in APIMACHINERY_PACKAGES:
        yield apimachinery / package, f"apimachinery/{package}"


def _proto_package(proto_text: str) -> str:
    found = re.search(r"^package ([\w.]+);", proto_text, re.M)
    if found is None:
        raise SystemExit("a generated.proto without a package line")
    return found.group(1)


def _group_name(source: Path, package_path: str) -> str | None:
    """The API group of an api package: ``+groupName`` in its doc.go, else its folder name
    (apps, batch, policy, autoscaling declare none); None for apimachinery's own packages
    other than meta/v1."""
    doc = source / "doc.go"
    text = doc.read_text() if doc.exists() else ""
    declared = re.search(r"^// \+groupName=(\S*)$", text, re.M)
    if declared is not None:
        return declared.group(1)
    if package_path.startswith("api/"):
        return package_path.split("/")[1]
    return None


@dataclass
class GoPackage:
    """What one Go package declares that its proto messages need: struct tags by proto field
    number, slice types (a message of ``items``), and types defined as another package's
    struct (``type List metav1.List``), by the imported path and name."""

    structs: dict[str, dict[str, str]] = field(default_factory=dict)
    slices: list[str] = field(default_factory=list)
    defined: dict[str, tuple[str, str]] = field(default_factory=dict)


def _go_package(source: Path) -> GoPackage:
    """Read the Go types of one package.

    A JSON tag is the Go ``json`` tag as written (``replicas,omitempty``, ``,inline``), with
    ``*`` in front for a pointer field, or the Go field name where there is no json tag.
    """
    package = GoPackage()
    for path in sorted(source.glob("*.go")):
        if path.name.endswith(("_test.go", ".pb.go")) or path.name.startswith("zz_generated"):
            continue
        imports: dict[str, str] = {}
        current: str | None = None
        for line in path.read_text().splitlines():
            if (imported := _IMPORT.match(line)) is not None:
                imports[imported.group(1)] = imported.group(2)
            elif (started := _STRUCT.match(line)) is not None:
                current = started.group(1)
            elif (sliced := _SLICE.match(line)) is not None:
                package.slices.append(sliced.group(1))
            elif (defined := _DEFINED.match(line)) is not None and defined.group(2) in imports:
                package.defined[defined.group(1)] = (imports[defined.group(2)], defined.group(3))
            elif line.startswith("}"):
                current = None
            elif current is not None and (found := _FIELD.match(line)) is not None:
                tags = dict(_TAG.findall(found.group(3)))
                proto = tags.get("protobuf", "-").split(",")
                if len(proto) < 2:
                    continue
                json_tag = str(tags.get("json", found.group(1) or ""))
                pointer = "*" if found.group(2).startswith("*") else ""
                package.structs.setdefault(current, {})[proto[1]] = pointer + json_tag
    return package


def vendor(api: Path, apimachinery: Path) -> None:
    """Copy the upstream generated.proto files and extract the Go JSON tags beside them."""
    if PROTO_DIR.joinpath("k8s.io").exists():
        shutil.rmtree(PROTO_DIR / "k8s.io")
    groups: dict[str, str] = {}
    messages: dict[str, dict[str, str]] = {}
    lists: list[str] = []
    go: dict[str, tuple[GoPackage, str, set[str]]] = {}
    for source, package_path in _packages(api, apimachinery):
        text = (source / "generated.proto").read_text()
        target = PROTO_DIR / "k8s.io" / package_path / "generated.proto"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        package = _proto_package(text)
        declared = set(re.findall(r"^message (\w+) \{", text, re.M))
        group = _group_name(source, package_path)
        if group is not None:
            version = package_path.rsplit("/", 1)[1]
            groups[f"{group}/{version}" if group else version] = package
        go[package_path] = (_go_package(source), package, declared)
    for types, package, declared in go.values():
        for name, fields in types.structs.items():
            if name in declared:
                messages[f"{package}.{name}"] = fields
        lists += [f"{package}.{name}" for name in types.slices if name in declared]
        for name, (imported, original) in types.defined.items():
            if name in declared and imported in go:
                messages[f"{package}.{name}"] = go[imported][0].structs[original]
    tags = {"groups": groups, "lists": sorted(lists), "messages": messages}
    JSON_TAGS.write_text(json.dumps(tags, indent=1, sort_keys=True) + "\n")


def _protoc() -> tuple[list[str], tempfile.TemporaryDirectory[str] | None]:
    """The protoc command line, and the throwaway environment it lives in (if one was made)."""
    try:
        import grpc_tools  # type: ignore[import-not-found]  # noqa: F401

        return [sys.executable, "-m", "grpc_tools.protoc"], None
    except ImportError:
        pass
    scratch = tempfile.TemporaryDirectory(prefix="k8s-proto-")
    venv.create(scratch.name, with_pip=True)
    python = str(Path(scratch.name) / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", GRPCIO_TOOLS], check=True)
    return [python, "-m", "grpc_tools.protoc"], scratch


def check_tags(files: descriptor_pb2.FileDescriptorSet) -> None:
    """Fail unless every message field has a Go JSON tag and every tag a message field."""
    tags = json.loads(JSON_TAGS.read_text())
    problems: list[str] = []
    seen: set[str] = set()
    for file in files.file:
        for message in file.message_type:
            name = f"{file.package}.{message.name}"
            seen.add(name)
            if name in CUSTOM_JSON or name in tags["lists"]:
                continue
            numbers = {str(f.number) for f in message.field}
            tagged = set(tags["messages"].get(name, {}))
            problems += [f"{name} field {n} has no Go JSON tag" for n in numbers - tagged]
            problems += [f"{name} has no field {n} for its Go tag" for n in tagged - numbers]
    problems += [f"no message {n} for a Go struct" for n in set(tags["messages"]) - seen]
    if problems:
        raise SystemExit("\n".join(sorted(problems)))


def build() -> None:
    """Compile the vendored .proto files into the descriptor set localcluster loads."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    command, scratch = _protoc()
    try:
        subprocess.run(
            [
                *command,
                f"--proto_path={PROTO_DIR}",
                "--include_imports",
                f"--descriptor_set_out={DESCRIPTOR_SET}",
                *protos,
            ],
            check=True,
        )
    finally:
        if scratch is not None:
            scratch.cleanup()
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    check_tags(files)
    print(f"{DESCRIPTOR_SET.relative_to(ROOT)}: {len(files.file)} files")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.k8s_proto", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    take = sub.add_parser("vendor", help="copy upstream .proto files and Go tags, then build")
    take.add_argument("--api", type=Path, required=True, help="checkout of the api repository")
    take.add_argument(
        "--apimachinery", type=Path, required=True, help="checkout of the apimachinery repository"
    )
    sub.add_parser("build", help="compile the vendored .proto files into kubernetes.binpb")
    args = parser.parse_args(argv)
    if args.command == "vendor":
        vendor(args.api, args.apimachinery)
    build()
    return 0


if __name__ == "__main__":
    sys.exit(main())
