"""Every Prometheus metric of the detector, and the HTTP endpoint that serves them.

All metrics live here so that the names used by the deploy/ rules and dashboards
have a single source of truth (tests/test_deploy.py checks them against this
module). Conventions:

* namespace ``cdr_detector_``, base units (seconds, records, ratios 0..1);
* labels only take values from the small closed sets below, or a Kafka
  partition number. A phone number (msisdn, peer, ...) is NEVER a label: it
  would create one time series per subscriber and leak personal data into the
  monitoring system;
* known label values are initialised to 0 at start-up, so that ``rate()`` and
  the ratios in the recording rules exist before the first event of each kind.
"""

from __future__ import annotations

import bisect
import json
import math
import socket
import threading
from collections.abc import Callable, Iterable
from importlib import metadata
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

# Closed sets of label values, all initialised to 0 at start-up. Any other value a caller
# uses must be just as bounded (a short code, never an identifier from a record).
RESULTS = ("ok", "invalid", "duplicate", "late")
INVALID_REASONS = ("not_json", "bad_utf8", "not_object", "missing_field", "bad_type", "bad_value", "too_large")
DLQ_REASONS = INVALID_REASONS + ("late", "processing_error")
TIERS = ("low", "high", "extreme")
ACTIONS = ("suspend", "escalate", "restore")
MODES = ("enforce", "shadow")
REBALANCE_KINDS = ("assigned", "revoked", "lost")
BROKER_OPERATIONS = ("poll", "send", "commit", "assign")  # where a retriable broker error is waited out
OUTCOMES = ("cleared", "confirmed_fraud")
RESTORE_CAUSES = ("cleared", "automatic")

# Risk scores are probabilities: 20 equal-width buckets show the whole shape.
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
# Event time -> decision: a healthy pipeline is in milliseconds, a lagging one in minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Housekeeping operations (commit, checkpoint, batch, restore): 1 ms .. 2 min.
OPERATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# A suspended line waits for verification: minutes to a week.
SUSPENSION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200,
                      86400, 172800, 345600, 604800)


class BatchHistogram:
    """A histogram without labels that takes its observations a batch at a time.

    Exposed exactly as a `prometheus_client.Histogram` is (`_bucket{le}`, `_count`, `_sum`), but
    `observe_many` takes one lock per batch: `Histogram.observe` costs ~1.5 µs (a lock and a
    scan of the buckets per value), and the risk score is observed for most records."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry):
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("buckets must be sorted")
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name = name
        self.documentation = documentation
        self._labelnames = ()
        self._upper_bounds = bounds
        self._counts = [0] * len(bounds)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def observe_many(self, values: Iterable[float]) -> None:
        bounds, where = self._upper_bounds, bisect.bisect_left  # le: the first bound >= value
        with self._lock:
            counts = self._counts
            total = 0.0
            for v in values:
                counts[where(bounds, v)] += 1
                total += v
            self._sum += total

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self):
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, n in zip(self._upper_bounds, counts):
            running += n
            cumulative.append((floatToGoString(bound), running))
        return [HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=total)]


def _package_version() -> str:
    try:
        return metadata.version("cdr-detector")
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """The detector's metrics, registered in their own registry.

    A fresh ``CollectorRegistry`` per instance (rather than the global default)
    lets tests build as many as they like and keeps the process's own
    ``python_*``/``process_*`` collectors out unless the caller asks for them.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 version: str | None = None, model: str = "unknown") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        # --- ingest ---------------------------------------------------------
        self.records = Counter(
            "cdr_detector_records_total", "CDRs consumed, by result.", ["result"], registry=r)
        self.invalid = Counter(
            "cdr_detector_invalid_records_total", "CDRs rejected as invalid, by reason code.",
            ["reason"], registry=r)
        self.dlq = Counter(
            "cdr_detector_dlq_records_total", "Records written to the dead-letter topic, by reason code.",
            ["reason"], registry=r)
        self.last_event_ts = Gauge(
            "cdr_detector_last_record_event_timestamp_seconds",
            "Event time (Unix seconds) of the newest record processed; now minus this is the event-time lag.",
            registry=r)
        self.lag = Gauge(
            "cdr_detector_consumer_lag_records", "Records between the committed offset and the end of the partition.",
            ["partition"], registry=r)
        self.batch_seconds = Histogram(
            "cdr_detector_batch_processing_seconds", "Wall time to process one polled batch.",
            buckets=OPERATION_BUCKETS, registry=r)

        # --- scoring and decisions -----------------------------------------
        self.score = BatchHistogram(
            "cdr_detector_risk_score", "Risk score (0..1) of every scored record.",
            buckets=SCORE_BUCKETS, registry=r)
        self.decisions = Counter(
            "cdr_detector_decisions_total", "Suspension events emitted, by action, tier and mode.",
            ["action", "tier", "mode"], registry=r)
        self.decision_latency = Histogram(
            "cdr_detector_decision_latency_seconds",
            "Event time of the triggering record to the decision being emitted.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.numbers_tracked = Gauge(
            "cdr_detector_numbers_tracked", "Numbers that currently have per-number state.", registry=r)
        self.suspended_lines = Gauge(
            "cdr_detector_suspended_lines", "Lines currently suspended, by tier.", ["tier"], registry=r)
        self.shared_wait_timeouts = Counter(
            "cdr_detector_shared_wait_timeouts_total",
            "Times a daemon stopped waiting for another partition's shared facts (handset/cell) "
            "and decided without them.", registry=r)
        self.skew_wait_timeouts = Counter(
            "cdr_detector_skew_wait_timeouts_total",
            "Times a daemon stopped waiting for an input partition that was behind and merged the "
            "others past it by more than the allowed lateness.", registry=r)
        self.shared_invalid = Counter(
            "cdr_detector_shared_invalid_records_total",
            "Records of the shared-facts topic skipped because no daemon writes them (a bad key or "
            "value, an unknown version): the handset/cell facts they held are missing.", registry=r)
        self.storm_breaker = Gauge(
            "cdr_detector_storm_breaker_tripped",
            "1 while the storm breaker holds back suspensions (too many at once), else 0.", registry=r)

        # --- false positives: what happened to the suspensions --------------
        self.outcomes = Counter(
            "cdr_detector_verification_outcomes_total", "Verification outcomes of suspended lines.",
            ["tier", "outcome"], registry=r)
        self.restores = Counter(
            "cdr_detector_restores_total", "Lines restored, by tier and cause.", ["tier", "cause"], registry=r)
        self.suspension_to_restore = Histogram(
            "cdr_detector_suspension_to_restore_seconds", "Time a line spent suspended before its restore.",
            ["tier"], buckets=SUSPENSION_BUCKETS, registry=r)
        self.resuspensions = Counter(
            "cdr_detector_resuspensions_total", "Lines suspended again after having been restored.",
            ["tier"], registry=r)

        # --- state and Kafka housekeeping ----------------------------------
        self.checkpoint_seconds = Histogram(
            "cdr_detector_state_checkpoint_seconds", "Wall time to write a state checkpoint.",
            buckets=OPERATION_BUCKETS, registry=r)
        self.commit_seconds = Histogram(
            "cdr_detector_commit_seconds", "Wall time to commit consumer offsets.",
            buckets=OPERATION_BUCKETS, registry=r)
        self.restore_records = Counter(
            "cdr_detector_state_restore_records_total", "Records replayed or loaded while restoring state.",
            registry=r)
        self.restore_seconds = Histogram(
            "cdr_detector_state_restore_seconds", "Wall time of a complete state restore.",
            buckets=OPERATION_BUCKETS, registry=r)
        self.rebalances = Counter(
            "cdr_detector_rebalances_total", "Consumer-group rebalance callbacks, by kind.", ["kind"], registry=r)
        self.broker_errors = Counter(
            "cdr_detector_broker_errors_total",
            "Retriable broker errors waited out (the broker away or unreachable; send: the producer buffer "
            "full), by operation.",
            ["operation"], registry=r)

        self.build_info = Info(
            "cdr_detector_build", "Version of the detector and of the model it runs.", registry=r)
        self.set_build_info(version or _package_version(), model)

        self._initialise_labels()

    def set_build_info(self, version: str, model: str) -> None:
        """Record which code and which model are running (``cdr_detector_build_info`` = 1)."""
        self.build_info.info({"version": version, "model": model})

    def _initialise_labels(self) -> None:
        for result in RESULTS:
            self.records.labels(result=result)
        for reason in INVALID_REASONS:
            self.invalid.labels(reason=reason)
        for reason in DLQ_REASONS:
            self.dlq.labels(reason=reason)
        for kind in REBALANCE_KINDS:
            self.rebalances.labels(kind=kind)
        for operation in BROKER_OPERATIONS:
            self.broker_errors.labels(operation=operation)
        for tier in TIERS:
            self.suspended_lines.labels(tier=tier)
            self.resuspensions.labels(tier=tier)
            self.suspension_to_restore.labels(tier=tier)
            for action in ACTIONS:
                for mode in MODES:
                    self.decisions.labels(action=action, tier=tier, mode=mode)
            for outcome in OUTCOMES:
                self.outcomes.labels(tier=tier, outcome=outcome)
            for cause in RESTORE_CAUSES:
                self.restores.labels(tier=tier, cause=cause)
        self.storm_breaker.set(0)


HealthCheck = Callable[[], tuple[bool, dict]]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow scrape never blocks /healthz."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """Scrapes every few seconds would flood stderr with access-log lines."""

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass


class MetricsServer:
    """A running /metrics + /healthz endpoint; ``shutdown()`` stops it and frees the port."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.address, self.port = httpd.server_address[:2]

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _app(metrics: Metrics, health: HealthCheck | None):
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            try:
                ok, details = health() if health is not None else (True, {})
            except Exception as exc:  # a broken check is itself unhealthy, not a crash
                ok, details = False, {"error": type(exc).__name__}
            body = json.dumps({**details, "status": "ok" if ok else "unhealthy"}, default=str).encode()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


def serve(metrics: Metrics, addr: str = "127.0.0.1", port: int = 9400,
          health: HealthCheck | None = None) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` from a daemon thread.

    Binds to loopback by default: exposing the endpoint beyond the host is a
    deployment decision (``addr="0.0.0.0"`` in a container). ``port=0`` picks a
    free port, readable afterwards as ``server.port``. ``health()`` returns
    ``(ok, details)``; /healthz answers 200 with the details as JSON when ok,
    else 503, so orchestrators can restart a wedged consumer.
    """
    server_class = _ThreadingWSGIServer
    if ":" in addr:  # an IPv6 literal such as "::" or "::1"
        server_class = type("_ThreadingWSGIServerV6", (_ThreadingWSGIServer,),
                            {"address_family": socket.AF_INET6})
    httpd = make_server(addr, port, _app(metrics, health), server_class, _QuietHandler)
    # A short poll interval keeps shutdown() quick (it waits for the loop to notice).
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)
