"""detector/metrics.py: names, types and labels of every metric, and the HTTP endpoint."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from detector.metrics import TIERS, Metrics, serve

# attribute -> (name as exposed, type, label names)
EXPECTED = {
    "records": ("cdr_detector_records_total", "counter", ("result",)),
    "invalid": ("cdr_detector_invalid_records_total", "counter", ("reason",)),
    "decisions": ("cdr_detector_decisions_total", "counter", ("action", "tier", "mode")),
    "score": ("cdr_detector_risk_score", "histogram", ()),
    "decision_latency": ("cdr_detector_decision_latency_seconds", "histogram", ()),
    "lag": ("cdr_detector_consumer_lag_records", "gauge", ("partition",)),
    "numbers_tracked": ("cdr_detector_numbers_tracked", "gauge", ()),
    "suspended_lines": ("cdr_detector_suspended_lines", "gauge", ("tier",)),
    "checkpoint_seconds": ("cdr_detector_state_checkpoint_seconds", "histogram", ()),
    "commit_seconds": ("cdr_detector_commit_seconds", "histogram", ()),
    "restore_records": ("cdr_detector_state_restore_records_total", "counter", ()),
    "restore_seconds": ("cdr_detector_state_restore_seconds", "histogram", ()),
    "rebalances": ("cdr_detector_rebalances_total", "counter", ("kind",)),
    "broker_errors": ("cdr_detector_broker_errors_total", "counter", ("operation",)),
    "outcomes": ("cdr_detector_verification_outcomes_total", "counter", ("tier", "outcome")),
    "restores": ("cdr_detector_restores_total", "counter", ("tier", "cause")),
    "suspension_to_restore": ("cdr_detector_suspension_to_restore_seconds", "histogram", ("tier",)),
    "resuspensions": ("cdr_detector_resuspensions_total", "counter", ("tier",)),
    "storm_breaker": ("cdr_detector_storm_breaker_tripped", "gauge", ()),
    "shared_wait_timeouts": ("cdr_detector_shared_wait_timeouts_total", "counter", ()),
    "skew_wait_timeouts": ("cdr_detector_skew_wait_timeouts_total", "counter", ()),
    "shared_invalid": ("cdr_detector_shared_invalid_records_total", "counter", ()),
    "dlq": ("cdr_detector_dlq_records_total", "counter", ("reason",)),
    "batch_seconds": ("cdr_detector_batch_processing_seconds", "histogram", ()),
    "last_event_ts": ("cdr_detector_last_record_event_timestamp_seconds", "gauge", ()),
}
# Label names that would hold a phone number: one series per subscriber, and personal data.
FORBIDDEN_LABELS = {"msisdn", "peer", "number", "caller", "callee", "imsi", "imei", "subscriber"}


def family_name(exposed: str, kind: str) -> str:
    """prometheus_client names a counter family without its _total suffix."""
    return exposed.removesuffix("_total") if kind == "counter" else exposed


def families(metrics: Metrics) -> dict:
    return {f.name: f for f in metrics.registry.collect()}


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read().decode()


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics(version="1.2.3", model="gbm-test")
    m.records.labels(result="ok").inc(5)
    m.lag.labels(partition="0").set(42)
    m.score.observe(0.93)
    return m


@pytest.fixture
def server(metrics):
    srv = serve(metrics, "127.0.0.1", 0)
    yield srv
    srv.shutdown()


def test_every_metric_has_its_name_type_and_labels(metrics):
    fams = families(metrics)
    for attr, (exposed, kind, labels) in EXPECTED.items():
        metric = getattr(metrics, attr)
        fam = fams[family_name(exposed, kind)]
        assert fam.type == kind, attr
        assert tuple(metric._labelnames) == labels, attr


def test_build_info_is_one_with_version_and_model(metrics):
    [sample] = families(metrics)["cdr_detector_build"].samples
    assert sample.name == "cdr_detector_build_info"
    assert sample.labels == {"version": "1.2.3", "model": "gbm-test"}
    assert sample.value == 1
    metrics.set_build_info("1.2.4", "gbm-next")
    [sample] = families(metrics)["cdr_detector_build"].samples
    assert sample.labels == {"version": "1.2.4", "model": "gbm-next"}


def test_all_names_are_namespaced_and_in_base_units(metrics):
    for fam in metrics.registry.collect():
        assert fam.name.startswith("cdr_detector_"), fam.name
        assert not any(unit in fam.name for unit in ("_milliseconds", "_ms", "_minutes", "_percent")), fam.name


def test_no_label_can_hold_a_phone_number(metrics):
    for fam in metrics.registry.collect():
        for sample in fam.samples:
            assert not FORBIDDEN_LABELS & set(sample.labels), sample
    for attr in EXPECTED:
        assert not FORBIDDEN_LABELS & set(getattr(metrics, attr)._labelnames), attr


def test_bucket_layouts():
    m = Metrics()
    score = m.score._upper_bounds
    assert score[:-1] == pytest.approx([0.05 * i for i in range(1, 21)])
    assert score[-1] == float("inf")
    latency = m.decision_latency._upper_bounds
    assert latency[0] == 0.001 and latency[-2] == 600
    restore = m.suspension_to_restore.labels(tier="low")._upper_bounds
    assert restore[0] == 60 and restore[-2] >= 7 * 86400


def test_known_label_values_start_at_zero():
    """So that rate() and the ratios of the recording rules exist before the first event."""
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in Metrics().registry.collect() for s in f.samples}
    for tier in TIERS:
        key = ("cdr_detector_decisions_total", (("action", "suspend"), ("mode", "enforce"), ("tier", tier)))
        assert samples[key] == 0
        assert samples[("cdr_detector_verification_outcomes_total",
                        (("outcome", "cleared"), ("tier", tier)))] == 0
    assert samples[("cdr_detector_records_total", (("result", "invalid"),))] == 0
    assert samples[("cdr_detector_storm_breaker_tripped", ())] == 0


def test_instances_have_separate_registries():
    a, b = Metrics(), Metrics()  # would raise "Duplicated timeseries" on a shared registry
    a.records.labels(result="ok").inc()
    assert b.registry.get_sample_value("cdr_detector_records_total", {"result": "ok"}) == 0
    own = CollectorRegistry()
    assert Metrics(registry=own).registry is own


def test_metrics_endpoint_serves_every_metric(server, metrics):
    assert server.port > 0 and server.address == "127.0.0.1"
    status, content_type, body = get(f"http://127.0.0.1:{server.port}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    parsed = {f.name: f for f in text_string_to_metric_families(body)}
    for attr, (exposed, kind, _) in EXPECTED.items():
        assert family_name(exposed, kind) in parsed, exposed
    assert "cdr_detector_build_info" in body
    assert 'cdr_detector_records_total{result="ok"} 5.0' in body
    assert 'cdr_detector_consumer_lag_records{partition="0"} 42.0' in body
    assert 'cdr_detector_risk_score_bucket{le="0.95"} 1.0' in body


def test_healthz_without_a_check_is_ok(server):
    status, content_type, body = get(f"http://127.0.0.1:{server.port}/healthz")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {"status": "ok"}


@pytest.mark.parametrize(("result", "status", "body"), [
    ((True, {"partitions": 3}), 200, {"status": "ok", "partitions": 3}),
    ((False, {"reason": "consumer stalled"}), 503, {"status": "unhealthy", "reason": "consumer stalled"}),
])
def test_healthz_reports_the_check(metrics, result, status, body):
    srv = serve(metrics, "127.0.0.1", 0, health=lambda: result)
    try:
        got_status, _, got_body = get(f"http://127.0.0.1:{srv.port}/healthz")
    finally:
        srv.shutdown()
    assert got_status == status
    assert json.loads(got_body) == body


def test_healthz_is_503_when_the_check_raises(metrics):
    def broken():
        raise RuntimeError("boom")

    with serve(metrics, "127.0.0.1", 0, health=broken) as srv:
        status, _, body = get(f"http://127.0.0.1:{srv.port}/healthz")
    assert status == 503
    assert json.loads(body)["status"] == "unhealthy"


def test_unknown_path_is_404(server):
    assert get(f"http://127.0.0.1:{server.port}/")[0] == 404


def test_shutdown_frees_the_port(metrics):
    srv = serve(metrics, "127.0.0.1", 0)
    port = srv.port
    srv.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # would fail with EADDRINUSE if still listening


def test_per_record_metrics_are_published_per_batch_and_complete_after_a_run():
    """Records counted ok and the last event time are brought into the metrics once per batch
    (`Pipeline.publish_metrics`, which the daemon calls after each polled batch and `run` every
    4,096 records and at its end): after a run they are exactly the pipeline's own counts."""
    from conftest import T0, Stream, load_cfg
    from detector.backtest import run
    from detector.core import Detector
    from detector.pipeline import Pipeline

    s = Stream()
    recs = [s.rec(msisdn=f"1380000{i % 50:04d}", ts=T0 + i * 1000) for i in range(5000)]
    m = Metrics()
    pipeline = Pipeline(Detector(load_cfg()), m)
    for r in recs[:10]:
        pipeline.process(r)
    pipeline.publish_metrics()
    assert m.registry.get_sample_value("cdr_detector_records_total", {"result": "ok"}) == 10
    assert m.registry.get_sample_value("cdr_detector_last_record_event_timestamp_seconds") == recs[9].ts / 1000
    run(pipeline, recs[10:])
    ok = m.registry.get_sample_value("cdr_detector_records_total", {"result": "ok"})
    assert ok == pipeline.counts["ok"] == len(recs)
    assert m.registry.get_sample_value("cdr_detector_last_record_event_timestamp_seconds") == recs[-1].ts / 1000


def test_batch_histogram_exposes_what_a_prometheus_histogram_does():
    """The score histogram takes a batch per lock; scraped, it must read as the client library's
    own Histogram fed the same values one by one (every bucket, `_count`, `_sum`)."""
    import random

    from prometheus_client import Histogram

    from detector.metrics import SCORE_BUCKETS, BatchHistogram

    rng = random.Random(2)
    values = [rng.random() for _ in range(3000)] + [0.0, 0.05, 0.1, 1.0, 0.95, 0.35]
    mine_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    mine = BatchHistogram("x_score", "doc", SCORE_BUCKETS, mine_registry)
    theirs = Histogram("x_score", "doc", buckets=SCORE_BUCKETS, registry=theirs_registry)
    for i in range(0, len(values), 700):
        mine.observe_many(values[i:i + 700])
    mine.observe(0.5)
    for v in values + [0.5]:
        theirs.observe(v)

    def samples(registry):
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in registry.collect() for s in f.samples if not s.name.endswith("_created")}

    got, want = samples(mine_registry), samples(theirs_registry)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12), k
    assert got[("x_score_count", ())] == len(values) + 1
