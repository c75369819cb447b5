"""Serving builds that are wrong in one way each: the real server with one fault patched in.

localcluster's image map sends ``helmsman-serve:*-<fault>`` to this module with
``HELMSMAN_TEST_FAULT=<fault>`` (tests/cluster_fixtures.py, tests/e2e/conftest.py), so a model
version that passed evaluation is served wrong, the way real serving builds go wrong:

- ``skewed``: every score 0.2 higher (train/serve skew in preprocessing);
- ``slow``: every prediction takes 2 s longer;
- ``errors``: one prediction request in ten answers 500;
- ``crash``: exits at start, before binding its port;
- ``liar``: reports Ready at once but never answers ``/metadata`` or ``/predict``;
- ``errors-live``: one in four requests that came through the Gateway (they carry an
  ``x-request-id``) answers 500; the preview's checks, sent to the pods directly, all pass
  (what only live traffic shows, as failures on real-world inputs do);
- ``skew-live``: correct for batch requests (the golden set), 0.3 higher for single rows (what
  parity cannot see; live traffic and the shadow comparison do).

Test-only: no product code knows of it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import numpy as np

from helmsman_steps import cli, runtime, serve

FAULT = os.environ.get("HELMSMAN_TEST_FAULT", "")
FAULTS = ("skewed", "slow", "errors", "crash", "liar", "errors-live", "skew-live")
_predict_rows = runtime.Predictor.predict
_batched_rows = serve.MicroBatcher.predict
_predict = serve.App._predict
_route = serve.App._route
_calls = 0


def _rows(self: runtime.Predictor, columns: Any) -> Any:
    scores = _predict_rows(self, columns)
    return np.clip(scores + 0.2, 0.0, 1.0) if FAULT == "skewed" else scores


async def _batched(self: serve.MicroBatcher, rows: list[Any]) -> Any:
    """Per request, not per model call: micro-batching scores concurrent single rows together."""
    scores = await _batched_rows(self, rows)
    return np.clip(scores + 0.3, 0.0, 1.0) if FAULT == "skew-live" and len(rows) == 1 else scores


async def _faulty_predict(self: serve.App, body: Any, headers: Any = ()) -> Any:
    global _calls
    _calls += 1
    if FAULT == "slow":  # slow to answer, not stuck: probes still get through
        await asyncio.sleep(2.0)
    live = any(name == b"x-request-id" for name, _ in headers)
    if (FAULT == "errors" and _calls % 10 == 0) or (
        FAULT == "errors-live" and live and _calls % 4 == 0
    ):
        return self._json(500, {"error": "injected fault"})
    return await _predict(self, body, headers)


async def _liar_route(self: serve.App, path: str, method: str, receive: Any, headers: Any) -> Any:
    if path == "/readyz":
        return self._json(200, {"status": "ready"})
    if path in ("/metadata", "/predict"):
        return self._json(503, {"error": "model not loaded yet"})
    return await _route(self, path, method, receive, headers)


runtime.Predictor.predict = _rows  # type: ignore[method-assign]
serve.MicroBatcher.predict = _batched  # type: ignore[method-assign]
serve.App._predict = _faulty_predict  # type: ignore[method-assign]
if FAULT == "liar":
    serve.App._route = _liar_route  # type: ignore[method-assign]

if __name__ == "__main__":
    if FAULT not in FAULTS:
        sys.exit(f"HELMSMAN_TEST_FAULT must be one of {', '.join(FAULTS)}, not {FAULT!r}")
    if FAULT == "crash":
        sys.exit(3)
    sys.exit(cli.main())
