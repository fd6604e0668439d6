"""What the NATS service answered: requests by endpoint and outcome code, their latency, and refusals by the
resource that did not fit. The service calls `observe` once per reply, from its one reply path."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram

from ledger.core.errors import InsufficientResources, LedgerError
from ledger.core.resources import RESOURCES

OK = "ok"
NO_RESOURCE = "none"  # a refusal no single resource explains (place: no host fits)
REFUSABLE = (*(r.value for r in RESOURCES), "gpu")
# validate answers in tenths of a millisecond on SQLite and in milliseconds on PostgreSQL; a request that
# waits on a lock or a reconnect takes seconds
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class RequestMetrics:
    """`ledger_requests_total`, `ledger_request_duration_seconds` and `ledger_refusals_total`."""

    def __init__(self, registry: CollectorRegistry, endpoints: Iterable[str]) -> None:
        self._requests = Counter(
            "ledger_requests",
            "Requests answered, by endpoint and outcome code (ok, or the error reply's stable code)",
            ["endpoint", "code"],
            registry=registry,
        )
        self._duration = Histogram(
            "ledger_request_duration_seconds",
            "Time from receiving a request to sending its reply (validate: including the wait for its "
            "admission group)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._refusals = Counter(
            "ledger_refusals",
            "insufficient_resources replies, by endpoint and the resource that did not fit "
            f"({NO_RESOURCE}: no single one, e.g. place found no host)",
            ["endpoint", "resource"],
            registry=registry,
        )
        # Series that exist before their first event: rate() and increase() see them start from 0. The
        # children are kept: `labels()` costs more than the increment itself, on every reply.
        self._counted: dict[tuple[str, str], Counter] = {
            (endpoint, OK): self._requests.labels(endpoint, OK) for endpoint in endpoints
        }
        self._timed: dict[str, Histogram] = {
            endpoint: self._duration.labels(endpoint) for endpoint in endpoints
        }
        for resource in REFUSABLE:
            self._refusals.labels("validate", resource)

    def observe(self, endpoint: str, seconds: float, error: LedgerError | None = None) -> None:
        """One reply sent: `error` is the error reply's, None for a success."""
        code = OK if error is None else error.code
        counted = self._counted.get((endpoint, code))
        if counted is None:
            counted = self._counted[endpoint, code] = self._requests.labels(endpoint, code)
        counted.inc()
        timed = self._timed.get(endpoint)
        if timed is None:
            timed = self._timed[endpoint] = self._duration.labels(endpoint)
        timed.observe(seconds)
        if error is not None and code == InsufficientResources.code:
            resource = error.details.get("resource")
            self._refusals.labels(endpoint, str(resource) if resource else NO_RESOURCE).inc()
