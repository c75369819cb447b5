"""Simulated users: a steady client that sends real rows to a served model and records what it
saw. The demo runs it during a rollout, the tests assert on it, the rollout bench loads with it.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any


class Users(threading.Thread):
    """One prediction every ``every`` seconds to ``url``, the ``rows`` in turn; every answer
    (version, row index, score) and every failure recorded. A context manager: it starts on
    enter and stops on exit."""

    def __init__(self, url: str, rows: list[dict[str, Any]], every: float = 0.02) -> None:
        super().__init__(daemon=True)
        if not rows:
            raise ValueError("simulated users need at least one row to send")
        self.url, self.rows, self.every = url.rstrip("/"), rows, every
        self.answers: list[tuple[str, int, float]] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        turn = 0
        while not self.stopping.wait(self.every):
            index, turn = turn % len(self.rows), turn + 1
            body = json.dumps({"instances": [self.rows[index]]}).encode()
            request = urllib.request.Request(  # noqa: S310 - a local Gateway or Service
                self.url + "/predict", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                    answer = json.load(response)
                self.answers.append(
                    (str(answer["model_version"]), index, float(answer["predictions"][0]))
                )
            except Exception as exc:
                self.failures.append(repr(exc))

    def __enter__(self) -> Users:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join()

    def versions(self) -> dict[str, int]:
        """How many answers each version gave."""
        counts: dict[str, int] = {}
        for version, _, _ in self.answers:
            counts[version] = counts.get(version, 0) + 1
        return dict(sorted(counts.items()))

    def summary(self) -> dict[str, Any]:
        return {"requests": len(self.answers) + len(self.failures),
                "failed": len(self.failures), "versions": self.versions()}  # fmt: skip
