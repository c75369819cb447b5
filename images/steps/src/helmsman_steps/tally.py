"""Counts that add up across the worker processes of one server.

Prometheus' own counters and histograms do this in multiprocess mode (a file per process in
``PROMETHEUS_MULTIPROC_DIR``, summed when scraped), at a cost per update that the request
path cannot afford. The server's own counts (requests, latency, rows and calls, the
prediction histogram, the inference log's outcomes) are kept as plain increments of a numpy
array instead: a ``Tally``, which in multiprocess mode is a file of its own in that same
directory, mapped into memory, so any worker's ``/metrics`` sums every worker's counts.
Dead workers' files stay, as Prometheus' do: a counter never goes down.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Tally:
    """``size`` float64 counts, named ``name`` in the multiprocess directory (if any)."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size
        folder = os.environ.get(MULTIPROC_ENV)
        self.folder = Path(folder) if folder else None
        self.values: np.ndarray
        if self.folder is None:
            self.values = np.zeros(size)
        else:
            # Made whole under another name, then renamed: a scrape never meets half a file. A
            # file of this pid already there (a dead worker's pid, reused) goes on counting.
            path = self.folder / f"tally_{name}_{size}_{os.getpid()}.npy"
            if not path.exists():
                part = path.with_suffix(".part")
                with part.open("wb") as out:
                    np.save(out, np.zeros(size))
                os.replace(part, path)
            self.values = np.load(path, mmap_mode="r+")

    def totals(self) -> np.ndarray:
        """The counts of every process (this one's alone outside multiprocess mode)."""
        if self.folder is None:
            return self.values.copy()
        total = np.zeros(self.size)
        for path in self.folder.glob(f"tally_{self.name}_{self.size}_*.npy"):
            try:
                total += np.load(path, mmap_mode="r")
            except (ValueError, OSError, EOFError):  # unreadable: counted as nothing, not a 500
                continue
        return total
