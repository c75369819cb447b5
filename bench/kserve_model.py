"""KServe's ModelServer serving a Helmsman model version: the serving bench's peer.

It runs in its own venv (``.venv-kserve``, requirements-kserve.in; its pins conflict with
Airflow's) and serves the version the bench downloaded, scored exactly as Helmsman's server
scores it: the version's featurizer (from its spec) and its ONNX graph on the same ONNX Runtime
release (``helmsman_steps.runtime.Predictor``). So the bench compares the servers around the
model, not the models. KServe's V1 protocol: ``POST /v1/models/<name>:predict`` with
``{"instances": [row, ...]}``; one worker, gRPC and per-request latency logging off (both on
by default; off they only make KServe faster).

``--smoke`` (what `make test` runs) serves a small random churn network on a free port, sends
it one request and checks the answer is the Predictor's own; run from another venv, it runs
itself again in ``.venv-kserve``.

Usage: python bench/kserve_model.py --name NAME --onnx PATH.onnx [--spec SPEC.json] --port N
       python bench/kserve_model.py --smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "images" / "steps" / "src")]
KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"

from helmsman_steps.modelinfo import ModelInfo  # noqa: E402 - needs the path set above
from helmsman_steps.runtime import Predictor, load_scorer  # noqa: E402


def model(name: str, model_path: str, spec_path: str | None) -> Any:
    """A loaded ``kserve.Model`` that scores with the version's Predictor."""
    import kserve  # type: ignore[import-not-found]  # installed in .venv-kserve only

    class HelmsmanModel(kserve.Model):  # type: ignore[misc]  # kserve ships no type hints
        def __init__(self) -> None:
            super().__init__(name)
            info = ModelInfo.from_file(spec_path, name)
            self.predictor = Predictor(info, load_scorer(model_path))
            self.columns = info.input_columns
            self.ready = True

        async def predict(
            self, payload: dict[str, Any], headers: Any = None, response_headers: Any = None
        ) -> dict[str, Any]:
            rows = payload["instances"]
            columns = {c: [row.get(c) for row in rows] for c in self.columns}
            return {"predictions": self.predictor.predict(columns).tolist()}

    return HelmsmanModel()


def serve(name: str, model_path: str, spec_path: str | None, port: int) -> None:
    import kserve

    server = kserve.ModelServer(
        http_port=port, workers=1, enable_grpc=False, enable_latency_logging=False
    )
    server.start([model(name, model_path, spec_path)])


def smoke() -> int:
    """Serve a small random churn network, ask it once, compare with the Predictor."""
    import numpy as np

    from helmsman_steps import features
    from helmsman_steps.model import NumpyModel
    from tools.procs import Server, free_port

    rng = np.random.default_rng(0)
    width = len(features.input_names())
    network = NumpyModel(
        inputs=features.input_names(), mean=np.zeros(width, np.float32),
        scale=np.ones(width, np.float32),
        weights=[rng.normal(0, 0.5, (8, width)).astype(np.float32),
                 rng.normal(0, 0.5, (1, 8)).astype(np.float32)],
        biases=[np.zeros(8, np.float32), np.zeros(1, np.float32)],
    )  # fmt: skip
    info = ModelInfo.churn("smoke")
    columns = {c: v.tolist() for c, v in info.sample(2).items()}
    rows = [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.npz")
        network.save(path)
        expected = Predictor(info, load_scorer(path)).predict(columns).tolist()
        port = free_port()
        cmd = [sys.executable, __file__, "--name", "smoke", "--onnx", path, "--port", str(port)]
        server = Server("kserve ModelServer", cmd, f"http://127.0.0.1:{port}/v1/models/smoke",
                        Path(tmp) / "kserve.log").start(timeout=120)  # fmt: skip
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/models/smoke:predict",
                data=json.dumps({"instances": rows}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                answered = json.load(response)["predictions"]
        finally:
            server.stop()
    if not np.allclose(answered, expected, rtol=1e-5, atol=1e-6):
        print(f"KServe answered {answered}, the Predictor {expected}")
        return 1
    print(f"KServe's ModelServer answers as Helmsman's Predictor does: {answered}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--name", help="the model's name in KServe's paths")
    parser.add_argument("--onnx", help="the version's model.onnx (a numpy export loads too)")
    parser.add_argument("--spec", help="the version's spec (JSON); none: churn's built-in one")
    parser.add_argument("--port", type=int)
    parser.add_argument("--smoke", action="store_true", help="serve a small model, ask once")
    args = parser.parse_args()
    if importlib.util.find_spec("kserve") is None:  # another venv: KServe's own runs it
        if not KSERVE_PYTHON.exists():
            raise SystemExit("no .venv-kserve: `make test-tools` installs KServe's ModelServer")
        os.execv(KSERVE_PYTHON, [str(KSERVE_PYTHON), __file__, *sys.argv[1:]])  # noqa: S606
    if args.smoke:
        return smoke()
    if not (args.name and args.onnx and args.port):
        parser.error("--name, --onnx and --port are required (or --smoke)")
    serve(args.name, args.onnx, args.spec, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
