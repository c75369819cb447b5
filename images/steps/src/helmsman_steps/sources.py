"""Where raw records come from, selected by URI.

- ``synthetic://churn?rows_per_day=50000&seed=7`` -- a deterministic generator for the demo
  and tests: each day's rows come from a seed derived from that day, so a backfill of any past
  day reproduces it exactly; the relationship between features and label drifts slowly over
  time, and a small share of rows is dirty (out of range, unknown category, missing, duplicate).
  ``shift_from=YYYY-MM-DD`` injects a sudden shift from that day on (``SHIFT``: a price rise
  and a wave of support calls), what the monitoring demo and tests must catch.
- any fsspec URI or local path (``s3://bucket/raw``, ``/data/raw``) -- one file per day named
  ``YYYY-MM-DD.parquet`` (or ``.csv``) under that prefix.

To plug in another source, add a class with ``read(day) -> DataFrame`` and a scheme below.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

from helmsman_steps.exitcodes import BadInputError
from helmsman_steps.schema import CATEGORIES, DATE_COLUMN, ID_COLUMN, LABEL

if TYPE_CHECKING:
    import pandas as pd

EPOCH = dt.date(2024, 1, 1)
# The injected shift (``shift_from``): a price rise and a wave of support calls. Lifetime
# charges, a sum over past months, do not jump with them; the label follows what customers see.
SHIFT = {"monthly_charges": ("scale", 1.6), "support_calls": ("add", 2.0)}
SHIFT_LIMITS = {"monthly_charges": 1000.0, "support_calls": 50.0}


def shifted(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``SHIFT`` applied (rows as the shifted source would have them)."""
    out = frame.copy()
    for column, (how, by) in SHIFT.items():
        values = out[column] * by if how == "scale" else out[column] + by
        out[column] = values.clip(upper=SHIFT_LIMITS[column])
    return out


class RawSource(Protocol):
    def read(self, day: dt.date) -> pd.DataFrame: ...


@dataclass(frozen=True)
class SyntheticChurn:
    """Deterministic churn records; see the module docstring."""

    rows_per_day: int = 50_000
    seed: int = 7
    dirty_share: float = 0.01
    shift_from: dt.date | None = None

    def _rng_for(self, day: dt.date) -> object:
        import numpy as np

        digest = hashlib.sha256(f"{self.seed}:{day.isoformat()}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def read(self, day: dt.date) -> pd.DataFrame:
        import numpy as np
        import pandas as pd

        rng: np.random.Generator = self._rng_for(day)  # type: ignore[assignment]
        n = self.rows_per_day
        drift = (day - EPOCH).days / 365.0  # years since the epoch: slow drift
        tenure = rng.gamma(2.0, 14.0, n).clip(0, 240).round()
        monthly = rng.lognormal(np.log(60 + 5 * drift), 0.35, n).clip(5, 900).round(2)
        total = (monthly * np.maximum(tenure, 1) * rng.uniform(0.9, 1.05, n)).round(2)
        calls = rng.poisson(1.2 + 0.3 * drift, n).clip(0, 50)
        age = rng.normal(42, 13, n).clip(18, 95).round()
        plan = rng.choice(CATEGORIES["plan"], n, p=[0.5, 0.35, 0.15])
        region = rng.choice(CATEGORIES["region"], n)
        if self.shift_from is not None and day >= self.shift_from:
            moved = shifted(pd.DataFrame({"monthly_charges": monthly, "support_calls": calls}))
            monthly = moved["monthly_charges"].to_numpy()
            calls = moved["support_calls"].to_numpy()
        logit = (
            -1.2
            + (0.55 + 0.1 * drift) * (calls - 1.5)
            - 0.035 * tenure
            + 0.012 * (monthly - 60)
            + np.where(plan == "premium", -0.6, np.where(plan == "basic", 0.35, 0.0))
            + np.where(region == "south", 0.25, 0.0)
            + 1.1 * ((tenure < 6) & (monthly > 80))  # a non-linear effect worth learning
            - 0.01 * (age - 42)
        )
        churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
        frame = pd.DataFrame(
            {
                ID_COLUMN: [f"c{day:%Y%m%d}-{i:07d}" for i in range(n)],
                DATE_COLUMN: pd.Timestamp(day),
                "age": age,
                "tenure_months": tenure,
                "monthly_charges": monthly,
                "total_charges": total,
                "support_calls": calls.astype(float),
                "plan": plan,
                "region": region,
                LABEL: churned,
            }
        )
        return self._dirty(frame, rng)

    def _dirty(self, frame: pd.DataFrame, rng: object) -> pd.DataFrame:
        """Spoil a small share of rows the way real feeds do."""
        import numpy as np
        import pandas as pd

        gen: np.random.Generator = rng  # type: ignore[assignment]
        bad = gen.choice(len(frame), int(len(frame) * self.dirty_share), replace=False)
        kinds = gen.integers(0, 5, len(bad))
        frame = frame.astype({"age": "float64", "plan": "object"})
        for kind, rows in ((k, bad[kinds == k]) for k in range(5)):
            if kind == 0:
                frame.loc[rows, "age"] = np.nan
            elif kind == 1:
                frame.loc[rows, "monthly_charges"] = -frame.loc[rows, "monthly_charges"]
            elif kind == 2:
                frame.loc[rows, "plan"] = "platinum"
            elif kind == 3:
                frame.loc[rows, "tenure_months"] = 999
        duplicates = frame.iloc[bad[kinds == 4]]
        return pd.concat([frame, duplicates], ignore_index=True)


@dataclass(frozen=True)
class DailyFiles:
    """One file per day under an fsspec prefix: ``{prefix}/YYYY-MM-DD.{parquet,csv}``."""

    prefix: str

    def read(self, day: dt.date) -> pd.DataFrame:
        import fsspec
        import pandas as pd

        for suffix, reader in (("parquet", pd.read_parquet), ("csv", pd.read_csv)):
            path = f"{self.prefix.rstrip('/')}/{day.isoformat()}.{suffix}"
            fs, fs_path = fsspec.core.url_to_fs(path)
            if fs.exists(fs_path):
                with fs.open(fs_path, "rb") as handle:
                    frame: pd.DataFrame = reader(handle)
                return frame
        raise BadInputError(f"no raw file for {day} under {redact(self.prefix)} (.parquet or .csv)")


# scikit-learn's copy of the diabetes study (Efron et al., 2004, "Least Angle Regression"):
# 442 patients, ten baseline measurements, and a quantitative measure of disease progression
# one year later. It ships inside scikit-learn, so nothing is downloaded. Its columns, renamed
# after the dataset's description (s1..s6 are six blood serum measurements).
DIABETES_COLUMNS = {"age": "age", "sex": "sex", "bmi": "bmi", "bp": "bp", "s1": "tc",
                    "s2": "ldl", "s3": "hdl", "s4": "tch", "s5": "ltg", "s6": "glu"}  # fmt: skip
# scikit-learn's copy of the UCI wine recognition data (Forina et al.; Aeberhard, Coomans & de
# Vel, 1992): 178 wines from three cultivars grown in one region of Italy, thirteen results of
# their chemical analysis. The label is the cultivar.
WINE_CLASSES = ("cultivar_1", "cultivar_2", "cultivar_3")
SAMPLES = ("diabetes", "wine")


def _sample_frame(name: str, first_day: dt.date, days: int) -> Any:
    """A packaged dataset with an id and a day per record (record ``i`` on day ``i mod days``)."""
    from sklearn import datasets

    if name == "diabetes":
        bunch = datasets.load_diabetes(as_frame=True, scaled=False)
        frame = bunch.frame.rename(columns={**DIABETES_COLUMNS, "target": "progression"})
        key, when = "patient_id", "visit_date"
        ids = [f"p{i:03d}" for i in range(len(frame))]
    else:
        bunch = datasets.load_wine(as_frame=True)
        frame = bunch.frame.rename(columns={"od280/od315_of_diluted_wines": "od280_od315"})
        frame["cultivar"] = [WINE_CLASSES[int(t)] for t in frame.pop("target")]
        key, when = "wine_id", "analysis_date"
        ids = [f"w{i:03d}" for i in range(len(frame))]
    frame.insert(0, key, ids)
    frame.insert(1, when, [first_day + dt.timedelta(days=i % days) for i in range(len(frame))])
    return frame, when


def write_sample(name: str, dest: str, first_day: dt.date, days: int) -> list[str]:
    """Write a packaged real dataset as daily raw files (``YYYY-MM-DD.csv`` under ``dest``), the
    way a feed delivers it: record ``i`` arrives on day ``i mod days``. Return the paths."""
    import pandas as pd

    if name not in SAMPLES:
        raise BadInputError(f"unknown sample dataset {name!r}; one of {', '.join(SAMPLES)}")
    if days < 1:
        raise BadInputError(f"--days must be 1 or more, got {days}")
    frame, when = _sample_frame(name, first_day, days)
    fs, root = fsspec_for(dest)
    fs.makedirs(root, exist_ok=True)
    written = []
    for day, rows in frame.groupby(when):
        path = f"{root.rstrip('/')}/{day.isoformat()}.csv"
        with fs.open(path, "w") as handle:
            pd.DataFrame(rows).to_csv(handle, index=False)
        written.append(path)
    return written


def fsspec_for(uri: str) -> tuple[Any, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    return fs, str(path)


def redact(uri: str) -> str:
    """A source URI fit for logs and tags: no credentials, and no query string (a presigned
    URL's signature lives there) except on the synthetic source, whose options are settings."""
    parts = urlsplit(uri)
    if parts.scheme == "synthetic" or not parts.scheme:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="").geturl()


def from_uri(uri: str) -> RawSource:
    """Build the source a URI names; raise BadInputError with the accepted forms otherwise."""
    parts = urlsplit(uri)
    if parts.scheme == "synthetic":
        if parts.netloc != "churn":
            raise BadInputError(f"unknown synthetic source {parts.netloc!r}; use synthetic://churn")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"rows_per_day", "seed", "dirty_share", "shift_from"}
        if unknown:
            raise BadInputError(f"unknown synthetic source options: {', '.join(sorted(unknown))}")
        try:
            return SyntheticChurn(
                rows_per_day=int(query.get("rows_per_day", 50_000)),
                seed=int(query.get("seed", 7)),
                dirty_share=float(query.get("dirty_share", 0.01)),
                shift_from=(dt.date.fromisoformat(query["shift_from"])
                            if "shift_from" in query else None),
            )  # fmt: skip
        except ValueError as exc:
            raise BadInputError(f"bad synthetic source option in {uri!r}: {exc}") from exc
    if not uri:
        raise BadInputError("empty source URI: give synthetic://churn or a path/URL prefix")
    return DailyFiles(uri)
