"""A model's own code: the functions a ``model.yaml`` names (``features``, a custom trainer's
``trainer.entrypoint``), as ``module:function`` (importable in the images) or
``file.py:function`` (a file in the model's folder).

Model folders reach the pods the way the DAGs reach Airflow: the images copy ``models/`` to
``/opt/helmsman/models`` and say so in ``HELMSMAN_MODELS_DIR`` (the local stack points it at
the repository's ``models/``). A file is loaded under a module name of its own per model, so two
models' ``features.py`` never collide.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helmsman_steps.exitcodes import BadInputError

MODELS_DIR_ENV = "HELMSMAN_MODELS_DIR"


def models_dir() -> Path:
    root = os.environ.get(MODELS_DIR_ENV)
    if not root:
        raise BadInputError(
            f"{MODELS_DIR_ENV} is not set: it names the folder that holds the model folders "
            "(the images set /opt/helmsman/models), where file.py entry points are found"
        )
    return Path(root)


def load(model: str, entrypoint: str, field: str) -> Callable[..., Any]:
    """The function ``entrypoint`` names, for model ``model``; ``field`` (e.g. ``features``)
    names the spec field in errors."""
    module_name, _, attr = entrypoint.partition(":")
    if module_name.endswith(".py"):
        path = models_dir() / model / module_name
        if not path.is_file():
            raise BadInputError(f"{field}: {entrypoint!r}: no file {path}")
        qualified = f"helmsman_models.{model.replace('-', '_')}.{path.stem}"
        module = sys.modules.get(qualified)
        if module is None:
            spec = importlib.util.spec_from_file_location(qualified, path)
            if spec is None or spec.loader is None:
                raise BadInputError(f"{field}: {entrypoint!r}: {path} is not a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[qualified] = module
            spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise BadInputError(
                f"{field}: {entrypoint!r}: cannot import {module_name}: {exc}"
            ) from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise BadInputError(f"{field}: {entrypoint!r}: {module_name} has no function {attr!r}")
    return function  # type: ignore[no-any-return]
