"""Model monitoring: the reference profile training records, and a window of the inference log
judged against it.

**Reference profile** (``reference_profile``), stored with the model version's training run
(``contract.REFERENCE_PROFILE_ARTIFACT``): for each raw column the training data's missing
share and either its category shares or its deciles (the bin edges) with each bin's share and
a sample of values; the same for the model's predictions on those rows (a multiclass model's
predicted class shares).

**Judgement** (``judge``): the live rows of one window, served by that version, against its
profile, with scipy's statistics rather than hand-written ones:

- per column, the population stability index over the profile's bins (``scipy.special.
  rel_entr`` both ways), the Jensen-Shannon distance of the same shares, and for a number the
  two-sample Kolmogorov-Smirnov test against the profile's sample (``scipy.stats.ks_2samp``);
  a column *drifts* when its PSI reaches ``psi`` and, for a number, the KS test also rejects
  "same distribution" at ``ks_pvalue`` (PSI alone over-reacts to small windows, KS alone to
  large ones);
- the predictions the same way (``prediction_psi``);
- data quality: the missing share of each column against training's, and the share of values
  training never saw (a category absent from the training data, a number outside the declared
  range; the server's validation keeps both rare).

A window with fewer than ``min_rows`` rows is not judged (``Skipped``): a thin window would
raise false alarms.

**Live performance** (``live_performance``): where labels of served requests arrive (the
dataset store's ``labels/`` feed: request id, row and the label, by the hour they arrived), the
champion's logged predictions of the last ``performance_hours`` are joined with the labels that
arrived in that time and scored with evaluation's own metric; a relative drop of more than
``performance_drop`` against the version's evaluation figure is a breach. This is what catches
a change of the relation between features and outcome, which no input drift shows. Fewer than
``min_rows`` labelled rows, no labels, or an unreadable labels file: no performance verdict
(said in the report), and the drift verdict stands.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from helmsman_steps import inference_log, logs

# Nothing to judge (no traffic, no profile, a file that cannot be read): the monitor run is
# skipped, not failed, and raises no alarm.
from helmsman_steps.exitcodes import BadInputError, Skipped

if TYPE_CHECKING:
    import pandas as pd

    from helmsman_steps.modelinfo import ModelInfo
    from helmsman_steps.store import DatasetStore

log = logs.get(__name__)

PROFILE_FORMAT = 1
PROFILE_ROWS = 20_000  # training rows profiled (a seeded sample of the window)
SAMPLE_VALUES = 2_000  # values kept per number for the KS test
BINS = 10  # deciles
EPSILON = 1e-4  # an empty bin's share, so that PSI stays finite


@dataclass(frozen=True)
class Thresholds:
    """When a window breaches (``model.yaml``'s ``monitoring``; documented there)."""

    psi: float = 0.2
    ks_pvalue: float = 0.001
    prediction_psi: float = 0.2
    missing_increase: float = 0.05
    unseen_share: float = 0.05
    min_rows: int = 200
    performance_drop: float = 0.05
    performance_hours: int = 24


# -- the reference profile ----------------------------------------------------------------
def _numbers_profile(values: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1))[1:-1])
    shares = _shares(values, edges)
    sample = rng.choice(values, min(SAMPLE_VALUES, len(values)), replace=False)
    return {"edges": edges.tolist(), "shares": shares.tolist(), "sample": sample.tolist(),
            "low": float(values.min()), "high": float(values.max())}  # fmt: skip


def _shares(values: np.ndarray, edges: np.ndarray | list[float]) -> np.ndarray:
    """The share of ``values`` in each bin: (-inf, e0), [e0, e1), ..., [e_last, inf)."""
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="right"),
                         minlength=len(edges) + 1)  # fmt: skip
    return counts / max(len(values), 1)


def _categories_profile(values: pd.Series) -> dict[str, Any]:
    shares = values.astype(str).value_counts(normalize=True).sort_index()
    return {"shares": {str(k): float(v) for k, v in shares.items()}}


def reference_profile(
    frame: pd.DataFrame, scores: np.ndarray, info: ModelInfo, seed: int = 0
) -> dict[str, Any]:
    """The profile of training rows ``frame`` (raw columns) and the model's ``scores`` on them."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    for name, column in info.raw_columns.items():
        values = frame[name]
        present = values.dropna()
        missing = float(1 - len(present) / max(len(values), 1))
        entry: dict[str, Any] = {"type": column["type"], "missing": missing}
        if len(present) == 0:
            entry["empty"] = True
        elif column["type"] == "category":
            entry |= _categories_profile(present)
        else:
            entry |= _numbers_profile(present.to_numpy(dtype=np.float64), rng)
        columns[name] = entry
    observed = np.asarray(info.observed(np.asarray(scores)), dtype=np.float64)
    if info.task == "multiclass":
        import pandas as pd

        prediction = {"type": "category", **_categories_profile(pd.Series(observed.astype(int)))}
    else:
        prediction = {"type": "float", **_numbers_profile(observed, rng)}
    return {"format": PROFILE_FORMAT, "model": info.name, "task": info.task,
            "rows": len(frame), "columns": columns, "prediction": prediction}  # fmt: skip


# -- judging a window ---------------------------------------------------------------------
@dataclass
class ColumnDrift:
    psi: float
    js: float
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    missing: float = 0.0
    missing_reference: float = 0.0
    unseen: float = 0.0
    drifted: bool = False


@dataclass
class Judgement:
    model: str
    version: str
    window_start: str
    window_end: str
    rows: int
    requests: int
    columns: dict[str, ColumnDrift]
    prediction: ColumnDrift
    breaches: list[dict[str, Any]] = field(default_factory=list)
    # live_performance's answer: the metric, its live and evaluated figures, the labelled rows
    performance: dict[str, Any] | None = None

    @property
    def drifted(self) -> list[str]:
        return [name for name, c in self.columns.items() if c.drifted]

    def summary(self) -> str:
        """One line: what changed, with its figures (the DAG's task log shows it)."""
        window = f"{self.window_start}..{self.window_end}"
        head = f"{self.model} v{self.version}, {self.rows} rows in {window}"
        if not self.breaches:
            worst = max(self.columns.items(), key=lambda kv: kv[1].psi)
            scored = self.performance or {}
            live = (f"; live {scored['metric']} {scored['live']:.3f} on {scored['labelled_rows']} "
                    f"labelled rows" if scored.get("live") is not None else "")  # fmt: skip
            return f"{head}: no breach (highest PSI {worst[0]} {worst[1].psi:.3f}{live})"
        said = "; ".join(f"{b['kind']} {b['what']} {b['measure']} {b['value']:.3g} "
                         f"(threshold {b['threshold']:.3g})" for b in self.breaches)  # fmt: skip
        return f"{head}: BREACH {said}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted, "summary": self.summary()}


def _psi_js(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    from scipy.spatial.distance import jensenshannon
    from scipy.special import rel_entr

    e = np.clip(expected, EPSILON, None)
    a = np.clip(actual, EPSILON, None)
    e, a = e / e.sum(), a / a.sum()
    psi = float(np.sum(rel_entr(a, e) + rel_entr(e, a)))
    return psi, float(jensenshannon(e, a, base=2))


def _compare(reference: Mapping[str, Any], values: pd.Series, kind: str,
             declared: Mapping[str, Any] | None, t: Thresholds) -> ColumnDrift:  # fmt: skip
    from scipy.stats import ks_2samp

    present = values.dropna()
    missing = float(1 - len(present) / max(len(values), 1))
    base = float(reference.get("missing", 0.0))
    if reference.get("empty") or len(present) == 0:
        return ColumnDrift(psi=0.0, js=0.0, missing=missing, missing_reference=base)
    if kind == "category":
        shares = reference["shares"]
        live = present.astype(str).value_counts(normalize=True)
        names = sorted(set(shares) | set(live.index))
        expected = np.array([shares.get(n, 0.0) for n in names])
        actual = np.array([float(live.get(n, 0.0)) for n in names])
        psi, js = _psi_js(expected, actual)
        unseen = float(sum(live.get(n, 0.0) for n in names if n not in shares))
        return ColumnDrift(psi, js, missing=missing, missing_reference=base, unseen=unseen,
                           drifted=psi >= t.psi)  # fmt: skip
    numbers = present.to_numpy(dtype=np.float64)
    psi, js = _psi_js(np.asarray(reference["shares"]), _shares(numbers, reference["edges"]))
    test = ks_2samp(np.asarray(reference["sample"]), numbers)
    bounds = (declared or {}).get("range")
    unseen = float(np.mean((numbers < bounds[0]) | (numbers > bounds[1]))) if bounds else 0.0
    statistic, pvalue = float(test.statistic), float(test.pvalue)
    return ColumnDrift(psi, js, statistic, pvalue, missing, base, unseen,
                       drifted=psi >= t.psi and pvalue < t.ks_pvalue)  # fmt: skip


def judge(
    profile: Mapping[str, Any],
    live: pd.DataFrame,
    info: ModelInfo,
    version: str,
    window: tuple[dt.datetime, dt.datetime],
    thresholds: Thresholds,
) -> Judgement:
    """The window's live rows (``read_window``) against the version's profile."""
    if profile.get("format") != PROFILE_FORMAT:
        raise Skipped(
            f"the reference profile has format {profile.get('format')!r}; this monitor reads "
            f"format {PROFILE_FORMAT}: retrain the model to record a new one"
        )
    rows = len(live)
    if rows < thresholds.min_rows:
        raise Skipped(
            f"{rows} rows served by version {version} in {window[0]:%Y-%m-%d %H:%M}.."
            f"{window[1]:%H:%M} UTC, fewer than min_rows {thresholds.min_rows}: too few to judge"
        )
    columns: dict[str, ColumnDrift] = {}
    for name, column in info.raw_columns.items():
        reference = profile["columns"].get(name)
        if reference is None:
            raise Skipped(f"the reference profile has no column {name!r}; retrain to record one")
        columns[name] = _compare(reference, live[name], column["type"], column, thresholds)
    scores = live[inference_log.PREDICTION]
    if info.task == "multiclass":
        import pandas as pd

        scores = pd.Series(np.stack(scores.to_numpy()).argmax(axis=1))
    prediction = _compare(profile["prediction"], scores, profile["prediction"]["type"], None,
                          thresholds)  # fmt: skip
    prediction.drifted = prediction.psi >= thresholds.prediction_psi and (
        prediction.ks_pvalue is None or prediction.ks_pvalue < thresholds.ks_pvalue
    )
    result = Judgement(
        info.name, version, f"{window[0]:%Y-%m-%dT%H:%M}Z", f"{window[1]:%Y-%m-%dT%H:%M}Z", rows,
        int(live[inference_log.REQUEST_ID].nunique()), columns, prediction,
    )  # fmt: skip
    for name, c in columns.items():
        if c.drifted:
            result.breaches.append({"kind": "drift", "what": name, "measure": "psi",
                                    "value": c.psi, "threshold": thresholds.psi,
                                    "ks_pvalue": c.ks_pvalue})  # fmt: skip
        if c.missing - c.missing_reference > thresholds.missing_increase:
            result.breaches.append({"kind": "drift", "what": name, "measure": "missing share",
                                    "value": c.missing, "threshold":
                                    c.missing_reference + thresholds.missing_increase})  # fmt: skip
        if c.unseen > thresholds.unseen_share:
            result.breaches.append({"kind": "drift", "what": name, "measure": "unseen share",
                                    "value": c.unseen,
                                    "threshold": thresholds.unseen_share})  # fmt: skip
    if prediction.drifted:
        result.breaches.append({"kind": "drift", "what": "prediction", "measure": "psi",
                                "value": prediction.psi,
                                "threshold": thresholds.prediction_psi})  # fmt: skip
    return result


def read_window(
    store: DatasetStore,
    start: dt.datetime,
    end: dt.datetime,
    version: str,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """The inference log's rows answered by ``version`` in [start, end) (only ``columns`` of
    them, besides the time and version, when given); a file that cannot be read is
    ``Skipped`` with its name (judging what is left could raise a false alarm)."""
    import pandas as pd

    files = store.inference_files(start, end)
    if not files:
        raise Skipped(f"no inference log under {store.root}/inference for "
                      f"{start:%Y-%m-%d %H:%M}..{end:%Y-%m-%d %H:%M} UTC: no traffic logged "
                      "(is the server's --log-sample above 0?)")  # fmt: skip
    frames = []
    wanted = None if columns is None else [inference_log.TIMESTAMP, inference_log.VERSION,
                                           *columns]  # fmt: skip
    for path in files:
        try:
            with store.fs.open(path, "rb") as handle:
                frames.append(pd.read_parquet(handle, columns=wanted))
        except Exception as exc:  # pyarrow's errors for a truncated or foreign file vary
            raise Skipped(f"the inference log file {path} cannot be read ({exc}); move it "
                          "aside or remove it") from None  # fmt: skip
    frame = pd.concat(frames, ignore_index=True)
    stamps = frame[inference_log.TIMESTAMP]
    inside = (stamps >= pd.Timestamp(start)) & (stamps < pd.Timestamp(end))
    frame = frame[inside & (frame[inference_log.VERSION] == version)]
    return frame.reset_index(drop=True)


# -- live performance ---------------------------------------------------------------------
LABEL = "label"  # the labels feed's outcome column, valued as the source's records are
KEY = [inference_log.REQUEST_ID, inference_log.ROW]  # what joins a label to its prediction


def live_performance(
    store: DatasetStore,
    info: ModelInfo,
    version: str,
    evaluated: float | None,
    end: dt.datetime,
    thresholds: Thresholds,
) -> dict[str, Any] | None:
    """The version's predictions of the ``performance_hours`` up to ``end`` scored against the
    labels that arrived in that time, with the model's evaluation metric; None when no labels
    arrived. ``live`` stays None, with the ``reason``, when there is too little to score."""
    import pandas as pd

    from helmsman_steps.evaluate import gain, metrics

    start = end - dt.timedelta(hours=thresholds.performance_hours)
    files = store.label_files(start, end)
    if not files:
        return None
    said: dict[str, Any] = {
        "metric": info.metric, "evaluated": evaluated, "live": None, "labelled_rows": 0,
        "window_start": f"{start:%Y-%m-%dT%H:%M}Z",
    }  # fmt: skip
    frames = []
    for path in files:
        try:
            with store.fs.open(path, "rb") as handle:
                frames.append(pd.read_parquet(handle, columns=[*KEY, LABEL]))
        except Exception as exc:  # a truncated or foreign file; pyarrow's errors vary
            reason = f"the labels file {path} cannot be read ({exc}); move it aside or remove it"
            return said | {"reason": reason}
    try:  # the keys and the predictions only: a long window of every column is large
        served = read_window(store, start, end, version, [*KEY, inference_log.PREDICTION])
    except Skipped as exc:  # no traffic logged in the window
        return said | {"reason": str(exc)}
    try:
        labels, served = (_keyed(f) for f in (pd.concat(frames, ignore_index=True), served))
    except (TypeError, ValueError) as exc:
        return said | {"reason": f"the labels' request_id or row cannot be read ({exc})"}
    labels = labels.dropna(subset=[LABEL])
    joined = served.merge(labels, on=KEY, how="inner")
    said["labelled_rows"] = rows = len(joined)
    if rows < thresholds.min_rows:
        return said | {"reason": f"{rows} served rows have labels, fewer than min_rows "
                                 f"{thresholds.min_rows}"}  # fmt: skip
    try:
        y = info.target(_as_classes(joined[LABEL], info))
    except ValueError as exc:
        return said | {"reason": f"labels that the model cannot score: {exc}"}
    scores = joined[inference_log.PREDICTION].to_numpy()
    p = np.stack(scores) if info.task == "multiclass" else scores.astype(np.float64)
    try:
        live = metrics(y, p, info.task)[info.metric]
    except ValueError as exc:  # ROC AUC of labels of one class
        return said | {"reason": f"{info.metric} cannot be scored: {exc}"}
    said["live"] = live
    if evaluated is not None and evaluated != 0:
        said["drop"] = -gain(info.metric, live, evaluated) / abs(evaluated)
    return said


def _keyed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its join keys as one type on both sides (request id text, row integer)
    and each key once: a label sent again (a corrected outcome), or a request id a client used
    twice, keeps its last row."""
    frame = frame.dropna(subset=KEY)
    ids, rows = frame[inference_log.REQUEST_ID].astype(str), frame[inference_log.ROW]
    frame = frame.assign(**{inference_log.REQUEST_ID: ids, inference_log.ROW: rows.astype("int64")})
    return frame.drop_duplicates(KEY, keep="last")


def _as_classes(labels: pd.Series, info: ModelInfo) -> np.ndarray:
    """A classifier's labels as its classes, matched by value or by their text (a labels feed
    written from CSV hands ``1`` back as ``"1"``); ValueError naming values that are neither
    (a binary model's target would count them as its negative class)."""
    values: np.ndarray = labels.to_numpy()
    if info.task == "regression" or not info.classes:
        return values
    by_text = {str(c): c for c in info.classes}
    matched = [v if v in info.classes else by_text.get(str(v), _NONE) for v in values.tolist()]
    unknown = sorted({str(v) for v, m in zip(values.tolist(), matched, strict=True) if m is _NONE})
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among the classes {list(info.classes)}")
    return np.asarray(matched)


_NONE = object()


def thresholds_of(settings: Mapping[str, Any] | None) -> Thresholds:
    known = {f for f in Thresholds.__dataclass_fields__}
    given = {k: v for k, v in (settings or {}).items() if k in known}
    unknown = set(settings or {}) - known
    if unknown:
        raise BadInputError(
            f"unknown monitoring thresholds {sorted(unknown)}; one of {sorted(known)}"
        )
    return Thresholds(**given)


def finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


# -- the monitor step ---------------------------------------------------------------------
def run(
    store: DatasetStore,
    info: ModelInfo,
    start: dt.datetime,
    end: dt.datetime,
    thresholds: Thresholds,
    run_key: str,
    pushgateway: str = "",
) -> dict[str, Any]:
    """Judge the champion's traffic in [start, end) and record it in MLflow (metrics, the
    report and its plot, the verdict as tags) and, given a ``pushgateway``, as Prometheus
    gauges there; ``Skipped`` when there is nothing to judge (nothing is pushed, so the
    gauges' window end tells how long the model has gone unjudged)."""
    import mlflow

    from helmsman_steps import contract, registry

    champion = registry.champion(info.name)
    if champion is None:
        raise Skipped(f"{info.name} has no @champion: nothing is served to watch")
    folder = contract.REFERENCE_PROFILE_ARTIFACT.rsplit("/", 1)[0]
    stored = {a.path for a in registry.client().list_artifacts(champion.run_id, folder)}
    if contract.REFERENCE_PROFILE_ARTIFACT not in stored:
        raise Skipped(
            f"version {champion.version} of {info.name} has no reference profile "
            f"({contract.REFERENCE_PROFILE_ARTIFACT} in run {champion.run_id}): it was trained "
            "before monitoring; the next training run records one"
        )
    profile = mlflow.artifacts.load_dict(
        f"runs:/{champion.run_id}/{contract.REFERENCE_PROFILE_ARTIFACT}"
    )
    live = read_window(store, start, end, champion.version)
    judgement = judge(profile, live, info, champion.version, (start, end), thresholds)
    evaluated = registry.client().get_run(champion.run_id).data.metrics.get(f"eval_{info.metric}")
    scored = live_performance(store, info, champion.version, evaluated, end, thresholds)
    judgement.performance = scored
    if scored is not None and scored.get("reason"):
        log.warning("no live performance verdict", reason=scored["reason"])
    if scored is not None and scored.get("drop", 0) > thresholds.performance_drop:
        judgement.breaches.append({"kind": "performance", "what": info.metric,
                                   "measure": "relative drop", "value": scored["drop"],
                                   "threshold": thresholds.performance_drop,
                                   "live": scored["live"], "evaluated": evaluated,
                                   "labelled_rows": scored["labelled_rows"]})  # fmt: skip
    verdict = "breach" if judgement.breaches else "ok"
    report = judgement.to_dict()
    window = f"{judgement.window_start}..{judgement.window_end}"
    tags = {contract.MONITOR_VERDICT_TAG: verdict, contract.MODEL_NAME_TAG: info.name,
            contract.MODEL_VERSION_TAG: champion.version, contract.MONITOR_WINDOW_TAG: window,
            contract.MONITOR_BREACHES_TAG: _json(judgement.breaches)[:4000]}  # fmt: skip
    with registry.get_or_start_run(
        contract.MONITORING_EXPERIMENT, run_key, f"monitor {info.name} {judgement.window_end}",
        tags,
    ) as monitored:  # fmt: skip
        metrics = {"rows": float(judgement.rows), "requests": float(judgement.requests),
                   "breaches": float(len(judgement.breaches)),
                   "prediction_psi": judgement.prediction.psi}  # fmt: skip
        for name, c in judgement.columns.items():
            metrics |= {f"psi.{name}": c.psi, f"js.{name}": c.js, f"missing.{name}": c.missing,
                        f"unseen.{name}": c.unseen}  # fmt: skip
            if c.ks_pvalue is not None:
                metrics[f"ks_pvalue.{name}"] = c.ks_pvalue
        if scored is not None:
            metrics["labelled_rows"] = float(scored["labelled_rows"])
            if scored["live"] is not None:
                metrics[f"live.{info.metric}"] = scored["live"]
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        mlflow.set_tags(tags)
        mlflow.log_dict(report, contract.MONITOR_REPORT_ARTIFACT)
        mlflow.log_figure(plot(profile, live, judgement, info), "monitor/drift.png")
        report["mlflow_run_id"] = monitored.info.run_id
    if pushgateway:
        report["pushed"] = push(judgement, pushgateway)
    log.info(judgement.summary(), verdict=verdict, drifted=judgement.drifted)
    return report


# -- Prometheus ---------------------------------------------------------------------------
PUSH_JOB = "helmsman-monitor"  # the Pushgateway group's job; its other key is the model
PUSH_TIMEOUT_S = 10.0


def gauges(judgement: Judgement) -> Any:
    """The judgement as Prometheus gauges, in a registry of their own: per feature (PSI,
    Jensen-Shannon distance, KS p-value, missing and unseen shares, drifted), the prediction's
    PSI, the window's rows, the breaches and when the judged window ended. Every series carries
    the judged ``version``; the Pushgateway group (``push``) adds ``job`` and ``model``."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    version = {"version": judgement.version}

    def gauge(name: str, doc: str, *labels: str) -> Gauge:
        return Gauge(f"helmsman_monitor_{name}", doc, ["version", *labels], registry=registry)

    per_feature = {
        key: gauge(f"feature_{key}", doc, "feature")
        for key, doc in (
            ("psi", "Population stability index against training"),
            ("js_distance", "Jensen-Shannon distance (base 2) against training"),
            ("ks_pvalue", "Two-sample Kolmogorov-Smirnov p-value against training (numbers)"),
            ("missing_share", "Share of rows without a value"),
            ("unseen_share", "Share of values training never saw"),
            ("drifted", "1 when the feature breaches its drift rule"),
        )
    }
    for name, c in judgement.columns.items():
        values = {"psi": c.psi, "js_distance": c.js, "ks_pvalue": c.ks_pvalue,
                  "missing_share": c.missing, "unseen_share": c.unseen,
                  "drifted": float(c.drifted)}  # fmt: skip
        for key, value in values.items():
            if (kept := finite(value)) is not None:  # no KS test for a category
                per_feature[key].labels(**version, feature=name).set(kept)
    gauge("prediction_psi", "PSI of the predictions against training").labels(**version).set(
        judgement.prediction.psi
    )
    gauge("window_rows", "Logged rows judged in the window").labels(**version).set(judgement.rows)
    gauge("breaches", "Thresholds the window breached").labels(**version).set(
        len(judgement.breaches)
    )
    scored = judgement.performance or {}
    if scored.get("live") is not None:
        figures = gauge("performance", "The evaluation metric on labelled live traffic", "metric")
        figures.labels(**version, metric=scored["metric"]).set(scored["live"])
        if scored.get("evaluated") is not None:
            gauge("performance_evaluated", "The same metric at evaluation", "metric").labels(
                **version, metric=scored["metric"]
            ).set(scored["evaluated"])
    if scored:
        gauge("labelled_rows", "Served rows with a label, scored").labels(**version).set(
            scored["labelled_rows"]
        )
    gauge("window_end_timestamp_seconds", "End of the last judged window").labels(**version).set(
        _window_end(judgement)
    )
    return registry


def _window_end(judgement: Judgement) -> float:
    end = dt.datetime.strptime(judgement.window_end, "%Y-%m-%dT%H:%MZ").replace(tzinfo=dt.UTC)
    return end.timestamp()


def _pushed_window_end(gateway: str, model: str) -> float | None:
    """The window end the Pushgateway holds for ``model``'s group, if any."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    base = gateway if "://" in gateway else f"http://{gateway}"  # as push_to_gateway reads it
    with urllib.request.urlopen(f"{base.rstrip('/')}/metrics", timeout=PUSH_TIMEOUT_S) as answer:  # noqa: S310 - the configured gateway
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "helmsman_monitor_window_end_timestamp_seconds"
                    and sample.labels.get("job") == PUSH_JOB
                    and sample.labels.get("model") == model):  # fmt: skip
                return float(sample.value)
    return None


def push(judgement: Judgement, gateway: str) -> bool:
    """Replace the model's group on the Pushgateway with this judgement's gauges (so a feature
    or version no longer judged leaves no stale series). A Pushgateway that cannot be reached
    is a warning, not a failed run: MLflow holds the record and the alarm reads it from there."""
    from prometheus_client import push_to_gateway

    try:
        # A rerun of an earlier window (a cleared task) must not replace a later verdict.
        held = _pushed_window_end(gateway, judgement.model)
        if held is not None and held > _window_end(judgement):
            log.info("the Pushgateway holds a later window's gauges; left as they are",
                     window_end=judgement.window_end)  # fmt: skip
            return False
        push_to_gateway(gateway, job=PUSH_JOB, grouping_key={"model": judgement.model},
                        registry=gauges(judgement), timeout=PUSH_TIMEOUT_S)  # fmt: skip
    except Exception as exc:  # URLError, a 4xx/5xx from the gateway, a malformed address
        log.warning("could not push the monitor's gauges to the Pushgateway; the MLflow run "
                    "has them", pushgateway=gateway, error=str(exc))  # fmt: skip
        return False
    return True


def _json(value: Any) -> str:
    import json

    return json.dumps(value, default=float, sort_keys=True)


def plot(profile: Mapping[str, Any], live: pd.DataFrame, judgement: Judgement,
         info: ModelInfo) -> Any:  # fmt: skip
    """Training against live, per column and for the predictions: the shares of each bin (or
    category) side by side, the PSI in each title, drifted ones in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*info.raw_columns, "prediction"]
    cols = 3
    rows = math.ceil(len(names) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        reference = profile["prediction"] if name == "prediction" else profile["columns"][name]
        drift = judgement.prediction if name == "prediction" else judgement.columns[name]
        values = live[inference_log.PREDICTION if name == "prediction" else name].dropna()
        if name == "prediction" and info.task == "multiclass":
            values = values.map(lambda v: int(np.argmax(v)))
        if "shares" in reference and isinstance(reference["shares"], dict):
            labels = sorted(set(reference["shares"]) | set(values.astype(str)))
            expected = [reference["shares"].get(n, 0.0) for n in labels]
            counts = values.astype(str).value_counts(normalize=True)
            actual = [float(counts.get(n, 0.0)) for n in labels]
        elif "edges" in reference:
            edges = reference["edges"]
            labels = [f"<{edges[0]:.3g}", *(f"{e:.3g}+" for e in edges)]
            expected = list(reference["shares"])
            actual = _shares(values.to_numpy(dtype=np.float64), edges).tolist()
        else:
            continue
        x = np.arange(len(labels))
        ax.bar(x - 0.2, expected, 0.4, label="training", color="#7f8c8d")
        ax.bar(x + 0.2, actual, 0.4, label="live", color="#c0392b" if drift.drifted else "#2980b9")
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{name}  PSI {drift.psi:.3f}" + ("  DRIFT" if drift.drifted else ""),
                     color="#c0392b" if drift.drifted else "black", fontsize=10)  # fmt: skip
        ax.set_ylabel("share", fontsize=8)
    axes.flat[0].legend(fontsize=8)
    figure.suptitle(f"{info.name} v{judgement.version}: {judgement.rows} live rows "
                    f"{judgement.window_start}..{judgement.window_end} vs training")  # fmt: skip
    figure.tight_layout()
    return figure
