"""A serving build with train/serve skew: the real server, but every score comes out 0.2 higher
than the model's, as when a serving image's preprocessing drifts from training's.

The end-to-end test maps the image ``helmsman-serve:*-skewed`` to this module in localcluster's
image map, so a challenger that passed evaluation is served wrong, and the health gate's
golden-set parity check must catch it and roll back. Test-only: no product code knows of it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from helmsman_steps import cli, model

SKEW = 0.2
_predict = model.NumpyModel.predict


def _skewed(self: model.NumpyModel, columns: Any) -> Any:
    return np.clip(_predict(self, columns) + SKEW, 0.0, 1.0)


model.NumpyModel.predict = _skewed  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(cli.main())
