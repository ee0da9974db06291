"""`GET /metrics`: the receiver's series in the Prometheus text format, through `prometheus-client`.

Each app has a `CollectorRegistry` of its own (never the library's global one), so several apps in one
process, or one test after another, each count only their own. Counters and histograms are updated
where things happen (a webhook answered, a batch committed, a handler try recorded): one
increment each, on the event loop. The backlog (runs by status, the oldest due run) and the
streams' lag are read when Prometheus scrapes, from the store and the open streams, so they are
true after a restart and with several processes on one database.

With several worker processes, each serves its own `/metrics` (its own counters; the backlog
gauges read the shared store, so every worker reports the same backlog).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import ConfigurationError, StoreUnavailable
from .stores.protocol import BACKLOG_STATUSES, Backlog, Store
from .stream import EventStream

__all__ = ["CONTENT_TYPE", "HANDLER_OUTCOMES", "RECEIVED_OUTCOMES", "Metrics"]

log = logging.getLogger("montra.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What `generate_latest` writes: the classic text format every Prometheus reads."""

RECEIVED_OUTCOMES = (
    "stored",
    "duplicate",
    "body_too_large",
    "unsupported_media_type",
    "missing_headers",
    "bad_timestamp",
    "timestamp_out_of_tolerance",
    "invalid_signature",
    "invalid_json",
    "invalid_event",
    "store_unavailable",
    "headers_too_large",
)
"""Outcomes exported at 0 from the start: a series that appears only at its first increment hides that
increment from `rate()` and `increase()`, which alerts are written with."""

HANDLER_OUTCOMES = ("succeeded", "failed", "timeout", "dead")

# Acknowledgements wait for an fsync: milliseconds, more under load.
_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Handlers call other services; the default timeout is 60 s.
_HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """One app's series and its `/metrics` endpoint.

    >>> metrics = Metrics(store=lambda: app.store, stream=app.stream, token=None)
    >>> metrics.answered(200, "stored", started)
    """

    def __init__(self, *, store: Callable[[], Store], stream: EventStream, token: str | None = None) -> None:
        if token is not None and not token.strip():
            raise ConfigurationError("The metrics token is empty: pass a long random one, or none to leave it open.")
        self._store = store
        self._token = token.encode() if token is not None else None
        self.registry = CollectorRegistry()
        self._received = Counter(
            "montra_webhooks_received",
            "Webhook requests answered, by outcome: stored, duplicate, or the rejection's error code.",
            ["outcome"],
            registry=self.registry,
        )
        self._ack = Histogram(
            "montra_webhooks_ack_seconds",
            "Seconds from a webhook request's start to its 2xx answer (after the durable commit).",
            buckets=_ACK_BUCKETS,
            registry=self.registry,
        )
        self._batch = Histogram(
            "montra_group_commit_batch_size",
            "Writes committed together in one transaction (one fsync).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self._tries = Counter(
            "montra_handler_tries",
            "Handler tries recorded by this process, by handler and outcome: succeeded, failed, timeout, dead.",
            ["handler", "outcome"],
            registry=self.registry,
        )
        self._handler_seconds = Histogram(
            "montra_handler_seconds",
            "Seconds a handler try took.",
            ["handler"],
            buckets=_HANDLER_BUCKETS,
            registry=self.registry,
        )
        self._state = _StateCollector(stream)
        self.registry.register(self._state)
        # Label lookups cost a lock and a tuple each: the hot path finds its child in a plain dict.
        self._outcomes = {outcome: self._received.labels(outcome) for outcome in RECEIVED_OUTCOMES}

    # -- updated where things happen -------------------------------------------------------

    def answered(self, status: int, outcome: str, started: float) -> None:
        """A webhook request was answered: count its outcome; time it if it was acknowledged (2xx)."""
        child = self._outcomes.get(outcome)
        if child is None:  # an outcome outside RECEIVED_OUTCOMES (internal_error, ...): a few, fixed by the code
            child = self._outcomes[outcome] = self._received.labels(outcome)
        child.inc()
        if 200 <= status < 300:
            self._ack.observe(time.perf_counter() - started)

    def committed(self, size: int) -> None:
        """The store committed `size` writes in one transaction."""
        self._batch.observe(size)

    def handlers(self, names: Iterable[str]) -> None:
        """Export these handlers' series at 0 before their first try (see RECEIVED_OUTCOMES)."""
        for name in names:
            for outcome in HANDLER_OUTCOMES:
                self._tries.labels(name, outcome)
            self._handler_seconds.labels(name)

    def handler_try(self, handler: str, outcome: str, seconds: float | None) -> None:
        """A handler try's outcome was recorded; `seconds` is how long the handler ran (None: it did not run)."""
        self._tries.labels(handler, outcome).inc()
        if seconds is not None:
            self._handler_seconds.labels(handler).observe(seconds)

    # -- read on scrape --------------------------------------------------------------------

    async def endpoint(self, request: Request) -> Response:
        """`GET /metrics`: check the token, read the backlog from the store, write every series."""
        if self._token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
                message = "Metrics need 'Authorization: Bearer <metrics token>', and that token did not match."
                return JSONResponse(
                    {"error": "unauthorized", "message": message},
                    status_code=401,
                    headers={"www-authenticate": "Bearer"},
                )
        store = self._store()
        backlog: Backlog | None = None
        newest: int | None = None
        try:
            backlog = await store.backlog(now=time.time())
            if self._state.stream.clients:
                _, newest = await store.seq_bounds()
        except StoreUnavailable as e:
            # The counters still matter most then (store_unavailable answers): serve them, leave the gauges out.
            log.warning("metrics: could not read the backlog from the store, so its gauges are left out: %s", e)
        # Set and written with no await between: a concurrent scrape cannot swap the snapshot meanwhile.
        self._state.backlog, self._state.newest, self._state.now = backlog, newest, time.time()
        return Response(generate_latest(_Exported(self.registry)), media_type=CONTENT_TYPE)


class _Exported(Collector):
    """The registry's series without the `_created` samples prometheus-client adds to counters and histograms:
    the series are exactly the public ones (turning them off in the library would be process-wide)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():  # each collect() builds fresh Metric objects: ours to trim
            metric.samples = [sample for sample in metric.samples if not sample.name.endswith("_created")]
            yield metric


class _StateCollector(Collector):
    """The gauges read on scrape: the store's backlog (set by the endpoint just before) and the streams."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.backlog: Backlog | None = None
        self.newest: int | None = None
        self.now = 0.0

    def collect(self) -> Iterable[Metric]:
        if self.backlog is not None:
            runs = GaugeMetricFamily(
                "montra_runs",
                "Handler runs in the store by status (pending, running, failed = waiting to retry, dead).",
                labels=["status"],
            )
            for status in BACKLOG_STATUSES:
                runs.add_metric([status], self.backlog.runs[status])
            yield runs
            oldest = self.backlog.oldest_due
            yield GaugeMetricFamily(
                "montra_oldest_due_run_seconds",
                "Seconds the longest-waiting due handler run has been due (0 when none is due).",
                value=0.0 if oldest is None else max(0.0, self.now - oldest.timestamp()),
            )
        yield GaugeMetricFamily("montra_stream_clients", "Open GET /stream connections.", value=self.stream.clients)
        slowest = self.stream.slowest_cursor()
        lag = 0 if slowest is None or self.newest is None else max(0, self.newest - slowest)
        yield GaugeMetricFamily(
            "montra_stream_lag_events",
            "Events stored but not yet sent to the slowest open stream (newest seq minus its cursor).",
            value=lag,
        )

    def describe(self) -> Sequence[Metric]:
        return []  # nothing to check for clashes: the registry is this app's own
