"""`GET /metrics`: the receiver's series in the Prometheus text format, through `prometheus-client`.

Each app has a `CollectorRegistry` of its own (never the library's global one), so several apps in one
process, or one test after another, each count only their own. Counts are kept where things happen
(a webhook answered, a batch committed, a handler try recorded) in plain integers: every update runs
on the app's event loop, so it needs no lock, and costs a dict lookup and an addition on the ingest
path (the library's own Counter takes a lock per increment). At a scrape, `_Collector` hands them to
prometheus-client as counter and histogram families, which it writes in the exposition format. The
backlog (runs by status, the oldest due run) and the streams' lag are read at the scrape, from the
store and the open streams, so they are true after a restart and with several processes on one store.

With several worker processes, each serves its own `/metrics` (its own counters; the backlog
gauges read the shared store, so every worker reports the same backlog).
"""

from __future__ import annotations

import bisect
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import REJECTION_REASONS, ConfigurationError, StoreUnavailable
from .stores.protocol import BACKLOG_STATUSES, Backlog, Store
from .stream import EventStream

__all__ = ["CONTENT_TYPE", "HANDLER_OUTCOMES", "RECEIVED_OUTCOMES", "Metrics"]

log = logging.getLogger("montra.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What `generate_latest` writes: the classic text format every Prometheus reads."""

RECEIVED_OUTCOMES = ("stored", "duplicate", *REJECTION_REASONS, "store_unavailable", "headers_too_large")
"""Outcomes exported at 0 from the start: a series that appears only at its first increment hides that
increment from `rate()` and `increase()`, which alerts are written with."""

HANDLER_OUTCOMES = ("succeeded", "failed", "timeout", "dead")

# Acknowledgements wait for an fsync: milliseconds, more under load.
_ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
# Handlers call other services; the default timeout is 60 s.
_HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _Histogram:
    """Observations counted per bucket (not cumulative: one increment each) and summed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (`le` is "less or equal").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts by `le`, as the exposition format has them, +Inf last."""
        cumulative: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip([*map(repr, self.bounds), "+Inf"], self.counts, strict=True):
            total += count
            cumulative.append((bound, total))
        return cumulative


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
        self.received = dict.fromkeys(RECEIVED_OUTCOMES, 0)
        self.ack = _Histogram(_ACK_BUCKETS)
        self.batches = _Histogram(_BATCH_BUCKETS)
        self.tries: dict[tuple[str, str], int] = {}
        self.handler_seconds: dict[str, _Histogram] = {}
        self._collector = _Collector(self, stream)
        self.registry = CollectorRegistry()
        self.registry.register(self._collector)

    # -- updated where things happen, on the event loop ------------------------------------

    def answered(self, status: int, outcome: str, started: float) -> None:
        """A webhook request was answered: count its outcome; time it if it was acknowledged (2xx)."""
        received = self.received
        # An outcome outside RECEIVED_OUTCOMES (internal_error, ...) gets its own series: a few, fixed by the code.
        received[outcome] = received.get(outcome, 0) + 1
        if 200 <= status < 300:
            self.ack.observe(time.perf_counter() - started)

    def committed(self, size: int) -> None:
        """The store committed `size` writes in one transaction."""
        self.batches.observe(size)

    def handlers(self, names: Iterable[str]) -> None:
        """Export these handlers' series at 0 before their first try (see RECEIVED_OUTCOMES)."""
        for name in names:
            for outcome in HANDLER_OUTCOMES:
                self.tries.setdefault((name, outcome), 0)
            self.handler_seconds.setdefault(name, _Histogram(_HANDLER_BUCKETS))

    def handler_try(self, handler: str, outcome: str, seconds: float | None) -> None:
        """A handler try's outcome was recorded; `seconds` is how long the handler ran (None: it did not run)."""
        key = (handler, outcome)
        self.tries[key] = self.tries.get(key, 0) + 1
        if seconds is not None:
            histogram = self.handler_seconds.get(handler)
            if histogram is None:
                histogram = self.handler_seconds[handler] = _Histogram(_HANDLER_BUCKETS)
            histogram.observe(seconds)

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
            if self._collector.stream.clients:
                _, newest = await store.seq_bounds()
        except StoreUnavailable as e:
            # The counters still matter most then (store_unavailable answers): serve them, leave the gauges out.
            log.warning("metrics: could not read the backlog from the store, so its gauges are left out: %s", e)
        # Set and written with no await between: a concurrent scrape cannot swap the snapshot meanwhile.
        self._collector.backlog, self._collector.newest, self._collector.now = backlog, newest, time.time()
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)


class _Collector(Collector):
    """Every series at a scrape: the counts as they are, the store's backlog (read by the endpoint just before)
    and the streams."""

    def __init__(self, metrics: Metrics, stream: EventStream) -> None:
        self.metrics = metrics
        self.stream = stream
        self.backlog: Backlog | None = None
        self.newest: int | None = None
        self.now = 0.0

    def collect(self) -> Iterable[Metric]:
        metrics = self.metrics
        received = CounterMetricFamily(
            "montra_webhooks_received",
            "Webhook requests answered, by outcome: stored, duplicate, or the rejection's error code.",
            labels=["outcome"],
        )
        for outcome, count in list(metrics.received.items()):
            received.add_metric([outcome], count)
        yield received
        yield _histogram(
            "montra_webhooks_ack_seconds",
            "Seconds from a webhook request's start to its 2xx answer (after the durable commit).",
            metrics.ack,
        )
        yield _histogram(
            "montra_group_commit_batch_size",
            "Writes committed together in one transaction (one fsync).",
            metrics.batches,
        )
        tries = CounterMetricFamily(
            "montra_handler_tries",
            "Handler tries recorded by this process, by handler and outcome: succeeded, failed, timeout, dead.",
            labels=["handler", "outcome"],
        )
        for (handler, outcome), count in list(metrics.tries.items()):
            tries.add_metric([handler, outcome], count)
        yield tries
        seconds = HistogramMetricFamily("montra_handler_seconds", "Seconds a handler try took.", labels=["handler"])
        for handler, histogram in list(metrics.handler_seconds.items()):
            seconds.add_metric([handler], histogram.buckets(), histogram.sum)
        yield seconds
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


def _histogram(name: str, documentation: str, histogram: _Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=histogram.buckets(), sum_value=histogram.sum)
