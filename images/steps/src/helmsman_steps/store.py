"""The dataset store: one Parquet file per day, written atomically, under an fsspec root.

Layout under the root (a local path or ``s3://...``):
  features/date=YYYY-MM-DD.parquet    validated rows with derived features (what training reads)
  quarantine/date=YYYY-MM-DD.parquet  rows that failed validation, with the reasons
  reports/date=YYYY-MM-DD.json        counts, bad-row share, content hash
  inference/hour=YYYY-MM-DDTHH/part-*.parquet
                                      the serving servers' inference log: sampled requests, the
                                      features as received and the prediction (inference_log.py)
  labels/hour=YYYY-MM-DDTHH/part-*.parquet
                                      labels of served requests as they become known (columns
                                      request_id, row, label), by the hour they arrived: written
                                      by whoever learns the outcomes, read by the monitor

A file is written under a temporary name in the same folder and then moved over the final
name, so a reader sees either the old complete file or the new complete file, never a mix;
a crash leaves at most a stray ``.tmp-*`` file, which a later write of that day removes once it
is older than an hour. A younger one may be another writer's at work: backfill runs write
overlapping windows side by side, and the last complete file wins (both are the same day's
rows).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from helmsman_steps.exitcodes import BadInputError

if TYPE_CHECKING:
    import fsspec
    import pandas as pd


def content_hash(frame: pd.DataFrame) -> str:
    """A hash of the rows' values (not of the file's bytes), stable across Parquet writers."""
    import pandas as pd

    hashed = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=True).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(frame.columns).encode())
    return digest.hexdigest()


STALE_TEMPORARY = dt.timedelta(hours=1)  # no write of a day's file takes this long


def _age(fs: Any, path: str) -> dt.timedelta:
    """How long ago ``path`` was written; a file whose time the store cannot tell is old."""
    try:
        modified: dt.datetime = fs.modified(path)
    except FileNotFoundError:
        raise
    except (NotImplementedError, OSError, KeyError):
        return dt.timedelta.max
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=dt.UTC)
    return dt.datetime.now(dt.UTC) - modified


@dataclass(frozen=True)
class DatasetStore:
    root: str

    @functools.cached_property
    def _location(self) -> tuple[fsspec.AbstractFileSystem, str]:
        import fsspec

        fs, base = fsspec.core.url_to_fs(self.root)
        return fs, base.rstrip("/")

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._location[0]

    def _path(self, kind: str, day: dt.date, suffix: str) -> str:
        return f"{self._location[1]}/{kind}/date={day.isoformat()}.{suffix}"

    def features_path(self, day: dt.date) -> str:
        return self._path("features", day, "parquet")

    def _write_atomically(self, path: str, write: Callable[[IO[bytes]], Any]) -> None:
        fs = self.fs
        folder = path.rsplit("/", 1)[0]
        fs.makedirs(folder, exist_ok=True)
        stem = path.rsplit("/", 1)[1]
        for stale in fs.glob(f"{folder}/.{stem}.tmp-*"):
            # Another writer may move or remove its own file between the glob and here.
            with contextlib.suppress(FileNotFoundError):
                if _age(fs, stale) > STALE_TEMPORARY:
                    fs.rm(stale)
        temporary = f"{folder}/.{stem}.tmp-{uuid.uuid4().hex}"
        try:
            with fs.open(temporary, "wb") as handle:
                write(handle)
            fs.mv(temporary, path)
        finally:
            if fs.exists(temporary):
                fs.rm(temporary)

    def write_day(
        self, day: dt.date, features: pd.DataFrame, quarantine: pd.DataFrame, report: dict[str, Any]
    ) -> None:
        """Write one day's three files; the features file, which readers use, goes last."""
        self._write_atomically(
            self._path("quarantine", day, "parquet"), lambda f: quarantine.to_parquet(f)
        )
        body = json.dumps(report, indent=2, sort_keys=True).encode()
        self._write_atomically(self._path("reports", day, "json"), lambda f: f.write(body))
        self._write_atomically(
            self.features_path(day), lambda f: features.to_parquet(f, index=False)
        )

    def read_report(self, day: dt.date) -> dict[str, Any]:
        with self.fs.open(self._path("reports", day, "json"), "rb") as handle:
            report: dict[str, Any] = json.load(handle)
        return report

    def write_inference(self, hour: str, table: Any) -> str:
        """Write one batch of the inference log (a pyarrow Table) as a new file of ``hour``
        (``YYYY-MM-DDTHH``, UTC); files are never rewritten, so servers write side by side."""
        return self._write_hourly("inference", hour, table)

    def write_labels(self, hour: str, table: Any) -> str:
        """Write labels of served requests (a pyarrow Table: request_id, row, label) that
        arrived in ``hour`` as a new file of it."""
        return self._write_hourly("labels", hour, table)

    def _write_hourly(self, kind: str, hour: str, table: Any) -> str:
        import pyarrow.parquet as pq

        stamp = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        name = f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        path = f"{self._location[1]}/{kind}/hour={hour}/{name}"
        self._write_atomically(path, lambda f: pq.write_table(table, f))
        return path

    def inference_files(self, start: dt.datetime, end: dt.datetime) -> list[str]:
        """The inference log's files of the hours that overlap [start, end), oldest first (a
        window that starts mid-hour reads that hour's files; the reader filters by time)."""
        return self._hourly_files("inference", start, end)

    def label_files(self, start: dt.datetime, end: dt.datetime) -> list[str]:
        """The files of labels that arrived in the hours that overlap [start, end)."""
        return self._hourly_files("labels", start, end)

    def _hourly_files(self, kind: str, start: dt.datetime, end: dt.datetime) -> list[str]:
        fs, base = self.fs, self._location[1]
        first = start.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
        last = end.astimezone(dt.UTC)
        # The hours that hold files, listed once: a long window costs one listing, not one
        # glob per hour (a century of hours took minutes).
        hours = []
        for folder in fs.glob(f"{base}/{kind}/hour=*"):
            try:
                hour = dt.datetime.strptime(folder.rsplit("hour=", 1)[1], "%Y-%m-%dT%H")
            except ValueError:
                continue  # not one of ours
            if first <= hour.replace(tzinfo=dt.UTC) < last:
                hours.append((hour, folder))
        files: list[str] = []
        for _, folder in sorted(hours):
            files += sorted(fs.glob(f"{folder}/part-*.parquet"))
        return files

    def _read_partition(self, path: str, day: dt.date) -> pd.DataFrame:
        """One day's features; BadInputError naming the file when it is not valid Parquet (a
        truncated or overwritten partition): the file must be rebuilt, retrying cannot help."""
        import pandas as pd
        import pyarrow as pa

        try:
            with self.fs.open(path, "rb") as handle:
                return pd.read_parquet(handle)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, EOFError) as exc:
            raise _unreadable(path, day, exc) from None
        except OSError as exc:
            # pyarrow reports a corrupt footer or page as OSError too ("Couldn't deserialize
            # thrift", "Corrupt snappy compressed data"), like a failing disk or network. If
            # the bytes read back whole, it is the content: bad input. If not, let it retry.
            try:
                with self.fs.open(path, "rb") as handle:
                    handle.read()
            except OSError:
                raise exc from None
            raise _unreadable(path, day, exc) from None

    def read_features(self, days: Iterable[dt.date]) -> pd.DataFrame:
        """The features of the given days, in day order; every day must have been built."""
        import pandas as pd

        fs, frames, missing = self.fs, [], []
        for day in days:
            path = self.features_path(day)
            if not fs.exists(path):
                missing.append(day.isoformat())
                continue
            frames.append(self._read_partition(path, day))
        if missing:
            raise BadInputError(
                f"no dataset partition for {', '.join(missing)} under {self.root}: "
                "run `helmsman-step etl` for those days first"
            )
        if not frames:
            raise BadInputError("the requested window holds no days")
        return pd.concat(frames, ignore_index=True)


def _unreadable(path: str, day: dt.date, error: Exception) -> BadInputError:
    return BadInputError(
        f"dataset partition {path} ({day}) is unreadable ({type(error).__name__}: {error}): "
        f"rebuild it with `helmsman-step etl --start {day} --end {day + dt.timedelta(days=1)}` "
        "(or clear the run's etl task), which rewrites the day whole"
    )


def days_in(start: dt.date, end: dt.date) -> list[dt.date]:
    """The days of the half-open interval [start, end), as Airflow's data intervals are."""
    if end <= start:
        raise BadInputError(f"empty data interval: end {end} must be after start {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]
