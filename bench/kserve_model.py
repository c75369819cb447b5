"""KServe's ModelServer serving a Helmsman model version: the serving bench's peer.

It runs in its own venv (``.venv-kserve``, requirements-kserve.in) with the step package on
PYTHONPATH, and serves the version the bench downloaded, scored exactly as Helmsman's server
scores it: the version's featurizer (from its spec) and its ONNX graph on the same ONNX Runtime
release (``helmsman_steps.runtime.Predictor``). So the bench compares the servers around the
model, not the models. KServe's V1 protocol: ``POST /v1/models/<name>:predict`` with
``{"instances": [row, ...]}``; one worker, gRPC and per-request latency logging off (both on
by default; off they only make KServe faster).

Usage: python bench/kserve_model.py --name NAME --onnx PATH.onnx [--spec SPEC.json] --port N
"""

from __future__ import annotations

import argparse
from typing import Any

import kserve  # type: ignore[import-not-found]  # installed in .venv-kserve only

from helmsman_steps.modelinfo import ModelInfo
from helmsman_steps.runtime import Predictor, load_scorer


class HelmsmanModel(kserve.Model):  # type: ignore[misc]  # kserve ships no type hints
    def __init__(self, name: str, model_path: str, spec_path: str | None) -> None:
        super().__init__(name)
        self.model_path, self.spec_path = model_path, spec_path
        self.predictor: Predictor | None = None
        self.columns: list[str] = []
        self.load()

    def load(self) -> bool:
        info = ModelInfo.from_file(self.spec_path, self.name)
        self.predictor = Predictor(info, load_scorer(self.model_path))
        self.columns = info.input_columns
        self.ready = True
        return True

    async def predict(
        self, payload: dict[str, Any], headers: Any = None, response_headers: Any = None
    ) -> dict[str, Any]:
        assert self.predictor is not None
        rows = payload["instances"]
        columns = {name: [row.get(name) for row in rows] for name in self.columns}
        return {"predictions": self.predictor.predict(columns).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--name", required=True)
    parser.add_argument("--onnx", required=True, help="the version's model.onnx")
    parser.add_argument("--spec", help="the version's spec (JSON); none: churn's built-in one")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    model = HelmsmanModel(args.name, args.onnx, args.spec)
    server = kserve.ModelServer(
        http_port=args.port, workers=1, enable_grpc=False, enable_latency_logging=False
    )
    server.start([model])


if __name__ == "__main__":
    main()
