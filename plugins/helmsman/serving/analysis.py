"""Live analysis of a rollout step: figures from Prometheus, verdicts as pure functions.

Each step is judged on the traffic of its own window, the new version against the stable one
(told apart by the ``slot`` label the scrape job sets):

- error rate (5xx share of ``/predict``) and p99 latency, from the server's counters and
  latency histogram;
- the divergence of the new version's prediction distribution from the stable one's over the
  same window (Jensen-Shannon, base 2, so 0 = the same and 1 = disjoint), from the servers'
  ``helmsman_prediction`` histograms -- the ML check the HTTP-only tools do not make;
- in the shadow step, the same requests answered by both: the share whose decision differs
  and the mean absolute difference of the scores, paired by request id from both versions'
  prediction logs.

A side with fewer than ``min_requests`` requests in the window cannot be judged on rates or
distributions; that is reported as a note, not a pass or a failure of a check.
"""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

# The server's endpoint labels that score rows: its own API and the Open Inference Protocol's.
PREDICT_ENDPOINTS = "/predict|/v2/infer"


@dataclass(frozen=True)
class Thresholds:
    """What a step must stay within. Defaults suit a binary classifier's scores."""

    max_error_rate: float = 0.01  # the new version's 5xx share of /predict
    max_p99_ms: float = 250.0  # the new version's p99, absolute
    # ... and relative to the stable version's p99 (beyond a small absolute slack)
    max_p99_ratio: float = 2.0
    p99_slack_ms: float = 25.0
    # Jensen-Shannon (base 2) of the prediction distributions, judged once each side has
    # min_divergence_samples predictions: two samples of 100 from one distribution differ by
    # up to ~0.07 (99th percentile, 20 buckets); a +0.2 score skew scores ~0.2, constant
    # predictions ~0.8 (bench/rollout_bench.py prints these).
    max_divergence: float = 0.1
    min_divergence_samples: int = 100
    max_disagreement: float = 0.1  # shadow: share of requests whose decision differs
    max_mean_abs_diff: float = 0.1  # shadow: mean |score_new - score_stable|
    # ... or, when evaluation compared the two versions offline, what it saw plus a margin:
    # a retrained model may differ from the champion by design; served, it must differ as much
    # as it did in evaluation, no more.
    shadow_margin: float = 0.05
    divergence_margin: float = 0.1  # sampling noise of 100 predictions is under 0.07
    min_requests: int = 20  # per side and window, to judge rates and distributions
    decision_threshold: float = 0.5  # a score at or above it is the positive decision


@dataclass
class Figures:
    """One version's traffic over one window."""

    requests: float = 0.0
    errors: float = 0.0
    p99_ms: float | None = None
    histogram: list[float] = field(default_factory=list)  # counts per prediction bucket
    scraped: bool = True  # Prometheus had series of this version at all

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class Paired:
    """Shadow comparison: the same requests answered by both versions."""

    pairs: int = 0
    disagreement: float = 0.0
    mean_abs_diff: float = 0.0
    mean_diff: float = 0.0  # signed: new - stable; a serving skew shifts it


@dataclass(frozen=True)
class Offline:
    """How evaluation saw the new version differ from the stable one on the held-out rows."""

    disagreement: float
    mean_abs_diff: float
    divergence: float | None = None
    mean_diff: float | None = None  # signed: new - stable


@dataclass
class StepReport:
    """What one step saw and decided; goes to the task log, MLflow and the demo."""

    step: str
    weight: int
    window_s: float
    new: Figures
    stable: Figures
    divergence: float | None = None
    paired: Paired | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        def side(f: Figures) -> str:
            p99 = "-" if f.p99_ms is None else f"{f.p99_ms:.0f}ms"
            return f"{f.requests:.0f} req, {f.error_rate:.1%} err, p99 {p99}"

        parts = [f"{self.step} ({self.weight}%, {self.window_s:.0f}s)",
                 f"new {side(self.new)}", f"stable {side(self.stable)}"]  # fmt: skip
        if self.divergence is not None:
            parts.append(f"divergence {self.divergence:.3f}")
        if self.paired is not None:
            parts.append(
                f"shadow {self.paired.pairs} pairs, disagreement {self.paired.disagreement:.1%}, "
                f"mean |diff| {self.paired.mean_abs_diff:.3f}"
            )
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.failures)
        return " | ".join(parts) + f" -> {verdict}"


# -- pure checks ----------------------------------------------------------------------------


def jensen_shannon(p: list[float], q: list[float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two histograms over the same buckets."""
    if len(p) != len(q):
        raise ValueError(f"histograms of {len(p)} and {len(q)} buckets cannot be compared")
    sp, sq = sum(p), sum(q)
    if sp <= 0 or sq <= 0:
        raise ValueError("an empty histogram has no distribution")
    pn, qn = [x / sp for x in p], [x / sq for x in q]

    def kl(a: list[float], m: list[float]) -> float:
        return sum(x * math.log2(x / y) for x, y in zip(a, m, strict=True) if x > 0)

    m = [(x + y) / 2 for x, y in zip(pn, qn, strict=True)]
    return max(0.0, min(1.0, (kl(pn, m) + kl(qn, m)) / 2))


def buckets_from_cumulative(cumulative: dict[float, float]) -> list[float]:
    """Per-bucket counts from Prometheus' cumulative ``le`` buckets (``+Inf`` included)."""
    bounds = sorted(cumulative)
    counts, before = [], 0.0
    for bound in bounds:
        value = max(cumulative[bound], before)  # counter resets can make a window dip
        counts.append(value - before)
        before = value
    return counts


# What a served row answers: a score, or a multiclass model's probability per class.
Prediction = float | list[float]


def pair(
    stable: dict[str, list[Prediction]], new: dict[str, list[Prediction]], threshold: float
) -> Paired:
    """Compare the predictions two versions logged for the same request ids. A decision is
    a score at ``threshold``, or a multiclass row's most probable class; the differences are
    over every score (each class's probability)."""
    common = sorted(set(stable) & set(new))
    diffs, signed, disagreements, rows, n = 0.0, 0.0, 0, 0, 0
    for request_id in common:
        for a, b in zip(stable[request_id], new[request_id], strict=False):
            old, now = scores_of(a), scores_of(b)
            if len(old) != len(now):
                continue  # versions with other classes: no pairing
            for x, y in zip(old, now, strict=True):
                diffs += abs(x - y)
                signed += y - x
                n += 1
            disagreements += _decision(old, threshold) != _decision(now, threshold)
            rows += 1
    if not n:
        return Paired()
    return Paired(len(common), disagreements / rows, diffs / n, signed / n)


def scores_of(prediction: Prediction) -> list[float]:
    """A row's scores: its one score, or a multiclass row's probability per class."""
    return [float(x) for x in prediction] if isinstance(prediction, list) else [float(prediction)]


def _decision(scores: list[float], threshold: float) -> int:
    if len(scores) > 1:
        return max(range(len(scores)), key=scores.__getitem__)
    return int(scores[0] >= threshold)


def parse_prediction_log(text: str) -> dict[str, list[Prediction]]:
    """request id -> predictions, from a server's JSON log lines (event ``prediction``)."""
    found: dict[str, list[Prediction]] = {}
    for line in text.splitlines():
        if '"prediction"' not in line:
            continue
        try:
            entry = json.loads(line[line.index("{") :])
        except ValueError:
            continue
        if entry.get("event") == "prediction" and entry.get("request_id"):
            found[str(entry["request_id"])] = [
                [float(v) for v in x] if isinstance(x, list) else float(x)
                for x in entry.get("predictions", [])
            ]
    return found


def judge(
    report: StepReport,
    thresholds: Thresholds,
    *,
    compare_live: bool = True,
    offline: Offline | None = None,
) -> StepReport:
    """Fill in the report's failures and notes from its figures; returns the report.

    ``compare_live``: the stable side had traffic in the same window (not when all traffic
    went to the new version, as after a blue-green switch; then its window before counts).
    ``offline``: how the two versions differed in evaluation (the shadow step's baseline).
    """
    t, new, stable = thresholds, report.new, report.stable
    if not new.scraped and not stable.scraped:
        report.failures.append(
            "Prometheus has no series of either version: is it scraping the serving pods "
            "(labels slot, service, version)? Nothing was judged"
        )
        return report
    if new.requests < t.min_requests:
        report.notes.append(
            f"the new version had {new.requests:.0f} requests in {report.window_s:.0f}s "
            f"(under {t.min_requests}): rates and distribution not judged"
        )
    else:
        if new.error_rate > t.max_error_rate:
            report.failures.append(
                f"error rate {new.error_rate:.2%} over {t.max_error_rate:.2%} "
                f"({new.errors:.0f} of {new.requests:.0f} requests; stable "
                f"{stable.error_rate:.2%})"
            )
        if new.p99_ms is not None:
            if new.p99_ms > t.max_p99_ms:
                report.failures.append(f"p99 {new.p99_ms:.0f} ms over {t.max_p99_ms:.0f} ms")
            elif (
                stable.p99_ms is not None
                and stable.requests >= t.min_requests
                and new.p99_ms > t.max_p99_ratio * stable.p99_ms
                and new.p99_ms - stable.p99_ms > t.p99_slack_ms
            ):
                report.failures.append(
                    f"p99 {new.p99_ms:.0f} ms over {t.max_p99_ratio:g}x the stable version's "
                    f"{stable.p99_ms:.0f} ms"
                )
        samples = min(sum(new.histogram), sum(stable.histogram))
        if stable.requests >= t.min_requests and samples < t.min_divergence_samples:
            report.notes.append(
                f"{samples:.0f} predictions on a side (under {t.min_divergence_samples}): "
                "distributions not compared"
            )
        elif stable.requests >= t.min_requests:
            report.divergence = jensen_shannon(new.histogram, stable.histogram)
            most = t.max_divergence
            if offline is not None and offline.divergence is not None:
                most = max(most, offline.divergence + t.divergence_margin)
            if report.divergence > most:
                seen = (
                    f" (evaluation saw {offline.divergence:.3f})"
                    if offline is not None and offline.divergence is not None
                    else ""
                )
                report.failures.append(
                    f"prediction distribution diverges from the stable version's: "
                    f"Jensen-Shannon {report.divergence:.3f} over {most:.3f}{seen}"
                )
        elif compare_live:
            report.notes.append("the stable version had too little traffic to compare with")
    paired = report.paired
    if paired is not None:
        if paired.pairs < t.min_requests:
            report.notes.append(f"shadow: {paired.pairs} paired requests, too few to compare")
        else:
            most_disagreement, most_diff = t.max_disagreement, t.max_mean_abs_diff
            if offline is not None:
                most_disagreement = max(most_disagreement, offline.disagreement + t.shadow_margin)
                most_diff = max(most_diff, offline.mean_abs_diff + t.shadow_margin)
                report.notes.append(
                    f"shadow: evaluation saw disagreement {offline.disagreement:.1%}, mean "
                    f"|diff| {offline.mean_abs_diff:.3f} between these versions"
                )
            if paired.disagreement > most_disagreement:
                report.failures.append(
                    f"shadow: decisions differ on {paired.disagreement:.1%} of "
                    f"{paired.pairs} requests (over {most_disagreement:.1%})"
                )
            if paired.mean_abs_diff > most_diff:
                report.failures.append(
                    f"shadow: mean |score difference| {paired.mean_abs_diff:.3f} over "
                    f"{most_diff:.3f}"
                )
            # Served as evaluated, the new version's scores sit above or below the stable
            # one's by what evaluation saw; a skew in serving moves that, even between two
            # versions that differ a lot.
            if offline is not None and offline.mean_diff is not None:
                shift = paired.mean_diff - offline.mean_diff
                if abs(shift) > t.shadow_margin:
                    report.failures.append(
                        f"shadow: scores shifted by {shift:+.3f} from what evaluation saw "
                        f"(live {paired.mean_diff:+.3f}, evaluation {offline.mean_diff:+.3f}, "
                        f"margin {t.shadow_margin})"
                    )
    return report


# -- Prometheus -----------------------------------------------------------------------------


class PrometheusError(Exception):
    """Prometheus did not answer a query; the message says which and why."""


@dataclass(frozen=True)
class Prometheus:
    """Instant queries against a Prometheus server's HTTP API."""

    url: str
    timeout: float = 10.0

    def query(self, promql: str, at: float) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
        address = f"{self.url.rstrip('/')}/api/v1/query?{params}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout) as response:  # noqa: S310
                body = json.load(response)
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"Prometheus at {self.url} did not answer: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused {promql!r}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, promql: str, at: float) -> float | None:
        result = self.query(promql, at)
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    def figures(
        self, namespace: str, service: str, slot: str, window_s: float, at: float
    ) -> Figures:
        """One slot's scoring traffic (``/predict`` and v2 ``infer``) over
        ``[at - window_s, at]``."""
        sel = f'namespace="{namespace}",service="{service}",slot="{slot}"'
        w = f"{max(2, round(window_s))}s"
        predict = f'{sel},endpoint=~"{PREDICT_ENDPOINTS}"'
        scraped = bool(self.query(f"count(helmsman_model_info{{{sel}}})", at))
        requests = self.scalar(f"sum(increase(helmsman_requests_total{{{predict}}}[{w}]))", at)
        errors = self.scalar(
            f'sum(increase(helmsman_requests_total{{{predict},code=~"5.."}}[{w}]))', at
        )
        p99 = self.scalar(
            "histogram_quantile(0.99, sum by (le) "
            f"(increase(helmsman_request_seconds_bucket{{{predict}}}[{w}])))",
            at,
        )
        buckets = self.query(
            f"sum by (le) (increase(helmsman_prediction_bucket{{{sel}}}[{w}]))", at
        )
        cumulative = {float(b["metric"]["le"]): float(b["value"][1]) for b in buckets}
        return Figures(
            scraped=scraped,
            requests=requests or 0.0,
            errors=errors or 0.0,
            p99_ms=None if p99 is None else 1000 * p99,
            histogram=buckets_from_cumulative(cumulative) if cumulative else [],
        )
