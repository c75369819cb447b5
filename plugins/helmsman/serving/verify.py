"""Pre-traffic verification: the new version's pods, checked through the preview Service
before any user request can reach them.

Readiness alone is not trusted (a server may say Ready and still not answer): every check is
made, and every failure reported, not just the first:

1. the new pods became available within the ready timeout, and none restarted;
2. ``/metadata`` reports exactly the new version (identity) on every answer;
3. the golden set's predictions match the offline evaluation within a tolerance (parity);
4. a probe load stays within an error rate and a p99.

:func:`pod_problems` and :func:`verdict` are pure, so the rules are tested without a cluster.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from helmsman.serving.analysis import scores_of
from helmsman.serving.kube import Kube, Obj, progress
from helmsman_steps import contract

# Waiting reasons that no amount of waiting fixes.
HOPELESS = frozenset(
    {"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
     "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)  # fmt: skip


class Rejected(Exception):
    """The new version failed a check: before traffic, or in a step. Carries every reason."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class Checks:
    tolerance: float = 1e-4  # golden-set parity, absolute
    probe_requests: int = 200
    max_probe_error_rate: float = 0.0
    max_probe_p99_ms: float = 250.0


@dataclass
class Verification:
    reasons: list[str] = field(default_factory=list)
    probe_p99_ms: float = 0.0
    probe_error_rate: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons,
                "probe_p99_ms": round(self.probe_p99_ms, 1),
                "probe_error_rate": self.probe_error_rate}  # fmt: skip


def pod_problems(pods: list[Obj]) -> list[str]:
    """Why these pods cannot serve: restarts, and waiting reasons that never clear."""
    problems = []
    for pod in pods:
        name = pod["metadata"]["name"]
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("restartCount"):
                last = ((status.get("lastState") or {}).get("terminated")) or {}
                exit_code = last.get("exitCode")
                detail = f" (last exit code {exit_code})" if exit_code is not None else ""
                problems.append(f"pod {name} restarted {status['restartCount']} time(s){detail}")
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in HOPELESS:
                problems.append(f"pod {name}: {waiting['reason']} {waiting.get('message', '')}")
    return problems


def wait_available(
    kube: Kube,
    deployment: str,
    pod_labels: dict[str, str],
    timeout: float,
    heartbeat: Callable[[], None] = lambda: None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Wait until the Deployment is available; return why it never will be (empty: it is).

    Gives up at once on a pod that restarts or cannot start, and after ``timeout`` otherwise
    (bounded, well under the Deployment's own progress deadline).
    """
    deadline = time.monotonic() + timeout
    while True:
        d = kube.read("Deployment", deployment)
        if d is None:
            return [f"deployment {deployment} is gone"]
        state = progress(d)
        problems = pod_problems(kube.pods(pod_labels))
        if problems:
            return problems
        if state.failed:
            return [state.failed]
        if state.done:
            return []
        if time.monotonic() > deadline:
            return [f"not available after {timeout:.0f}s ({state.summary})"]
        heartbeat()
        sleep(1)


def _call(url: str, body: Any = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - the preview Service's http address
        url,
        data=data,
        # The server keeps checks like these out of its inference log.
        headers={"Content-Type": "application/json", contract.VERIFY_HEADER: "1"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.load(response)


def _flat(predictions: list[Any]) -> list[float]:
    """Every score of every row, in order."""
    return [score for p in predictions for score in scores_of(p)]


def verdict(
    expected_version: str,
    seen_versions: set[str],
    served: list[Any] | None,
    golden: list[Any],
    tolerance: float,
) -> list[str]:
    """Identity and parity, from what the preview answered."""
    reasons = []
    if seen_versions != {expected_version}:
        reasons.append(
            f"/metadata reports versions {sorted(seen_versions)}, expected {expected_version}"
        )
    if served is not None:
        answered, expected = _flat(served), _flat(golden)
        if len(served) != len(golden) or len(answered) != len(expected):
            reasons.append(
                f"golden set: {len(answered)} scores for {len(served)} rows answered, where "
                f"evaluation recorded {len(expected)} for {len(golden)}"
            )
            return reasons
        worst = max((abs(a - b) for a, b in zip(answered, expected, strict=True)), default=0.0)
        if worst > tolerance:
            reasons.append(
                f"golden-set predictions differ from evaluation by up to {worst:.6f} "
                f"(tolerance {tolerance})"
            )
    return reasons


def verify(
    url: str, pods: list[Obj], version: str, golden: dict[str, Any], checks: Checks
) -> Verification:
    """Every check through the preview Service at ``url``; all reasons, not the first."""
    result = Verification(reasons=pod_problems(pods))
    if not pods:
        result.reasons.append("no pods of the new version")
    for pod in pods:
        conditions = (pod.get("status") or {}).get("conditions") or []
        if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            result.reasons.append(f"pod {pod['metadata']['name']} is not ready")
    try:
        seen = {
            str(_call(url + "/metadata")["model_version"]) for _ in range(max(4, 2 * len(pods)))
        }
        served = _call(url + "/predict", {"instances": golden["inputs"]})["predictions"]
        result.reasons += verdict(version, seen, served, golden["predictions"], checks.tolerance)
    except (OSError, KeyError, ValueError) as exc:
        result.reasons.append(f"the new version did not answer correctly: {exc}")
        return result  # a server that cannot answer would only fail the probe load slowly
    latencies, errors, slow = [], 0, 0
    row = {"instances": golden["inputs"][:1]}
    # Past these counts the verdict cannot change: stop early (a slow version would otherwise
    # hold the probe load for requests x its latency).
    most_errors = checks.max_probe_error_rate * checks.probe_requests
    most_slow = 0.01 * checks.probe_requests
    for _ in range(checks.probe_requests):
        started = time.perf_counter()
        try:
            _call(url + "/predict", row, timeout=5)
        except (OSError, ValueError):
            errors += 1
        latencies.append(time.perf_counter() - started)
        slow += latencies[-1] * 1000 > checks.max_probe_p99_ms
        if errors > most_errors or slow > most_slow:
            break
    latencies.sort()
    if latencies:
        result.probe_p99_ms = 1000 * latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)]
    result.probe_error_rate = errors / max(len(latencies), 1)
    if result.probe_error_rate > checks.max_probe_error_rate:
        result.reasons.append(
            f"probe load error rate {result.probe_error_rate:.2%} over "
            f"{checks.max_probe_error_rate:.2%}"
        )
    if result.probe_p99_ms > checks.max_probe_p99_ms:
        result.reasons.append(
            f"probe load p99 {result.probe_p99_ms:.1f} ms over {checks.max_probe_p99_ms:.1f} ms"
        )
    return result
