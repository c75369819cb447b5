"""Parse one DAG file the way Airflow's DAG processor does, in this (fresh) interpreter.

Run as ``python tests/dagcheck.py DAG_FILE REPORT_JSON``; writes one JSON report (Airflow
logs to stdout, so the report goes to a file). The report says
what the file did while it was parsed -- import errors, heavy modules it pulled in, network
and metadata-DB access, Variable and Connection reads -- and what DAGs it defined, so the
integrity tests can hold every DAG file to the rules in docs/adr/0001-layout.md. A fresh
interpreter per file keeps one file's imports from hiding another's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

# Modules too heavy for parse time: each DAG file is parsed every few seconds by the DAG
# processor, so these belong in pods or inside task callables.
HEAVY_MODULES = ("pandas", "numpy", "mlflow", "torch", "sklearn", "scipy", "pyarrow")
# Audit events that mean the parse reached out: the network, or a database file.
IO_EVENTS = ("socket.connect", "socket.getaddrinfo", "sqlite3.connect", "http.client.connect")


def _attempt(events: list[dict[str, str]], kind: str, what: str) -> None:
    events.append({"event": kind, "detail": what})


def check(dag_file: Path) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import BaseHook, Variable

    preloaded = {m for m in HEAVY_MODULES if m in sys.modules}
    events: list[dict[str, str]] = []
    recording = True

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if recording and event in IO_EVENTS:
            _attempt(events, event, repr(args)[:200])

    sys.addaudithook(audit)

    def no_variable(*args: Any, **kwargs: Any) -> Any:
        _attempt(events, "Variable.get", repr(args[:1]))
        raise RuntimeError("Variable read at DAG parse time: read it inside a task")

    def no_connection(*args: Any, **kwargs: Any) -> Any:
        _attempt(events, "get_connection", repr(args[:1]))
        raise RuntimeError("Connection read at DAG parse time: read it inside a task")

    Variable.get = no_variable  # type: ignore[method-assign,assignment]
    BaseHook.get_connection = no_connection  # type: ignore[method-assign,assignment]

    started = time.perf_counter()
    bag = DagBag(dag_folder=dag_file, bundle_path=dag_file.parent)
    parse_seconds = time.perf_counter() - started
    recording = False

    dags = []
    for dag_id, dag in sorted(bag.dags.items()):
        dags.append(
            {
                "dag_id": dag_id,
                "tags": sorted(dag.tags),
                "owners": sorted({t.owner for t in dag.tasks}),
                "retries": {t.task_id: t.retries for t in dag.tasks},
                "has_doc_md": bool(dag.doc_md),
                "params": dag.params.dump(),
                "schedule": None if dag.schedule is None else str(dag.schedule),
                "tasks": sorted(t.task_id for t in dag.tasks),
                # what the rollout task gives a serving pod (the model's serving.resources)
                "serving_resources": next(
                    (t.serving_resources for t in dag.tasks if t.task_id == "rollout"), None
                ),
            }
        )
    return {
        "file": str(dag_file),
        "import_errors": {str(k): v for k, v in bag.import_errors.items()},
        "heavy_modules": sorted(set(HEAVY_MODULES) & set(sys.modules) - preloaded),
        "io_events": events,
        "parse_seconds": round(parse_seconds, 3),
        "dags": dags,
    }


if __name__ == "__main__":
    report = check(Path(sys.argv[1]).resolve())
    Path(sys.argv[2]).write_text(json.dumps(report, indent=2))
