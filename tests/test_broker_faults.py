"""The daemon survives its broker going away mid-stream, and reconnects by itself.

A SEPARATE broker (random free ports, own run/data dirs under tmp) is started for this test, so the shared
broker on 9092 is never touched; it is stopped in a `finally`. The daemon (one process, never
restarted) reads half of a slice, the broker is stopped while it works, stays down ~10 s, comes
back, the rest of the slice is published, and the daemon must end exactly where
`cdr-detector backtest` ends on the same files: every record counted once, the same distinct events.
"""
from __future__ import annotations

import os
import signal
import time
from collections import Counter

import orjson
import pytest

from daemon_harness import (PARTITIONS, SAMPLE_DIR, DaemonProcess, KafkaSetup, backtest_events, diff_events,
                            make_slice, read_lines, replay_inprocess, split_at_ts_boundary, write_lines)
from robust_harness import ExtraBroker, event_violations, free_ports, port_open, wait_until

pytestmark = pytest.mark.kafka

DOWN_S = 10


@pytest.fixture(scope="module")
def fault_broker(tmp_path_factory):
    """The separate broker of this module, stopped and removed at the end. Its ports are free ones
    picked at random (not a fixed 19192), so concurrent runs of this file (other developers, CI)
    do not collide; the shared broker on 9092 is never touched."""
    port, controller = free_ports(2)
    broker = ExtraBroker(tmp_path_factory.mktemp("kafka-faults"), port, controller_port=controller)
    try:
        broker.start()
        yield broker
    finally:
        broker.cleanup()
        assert not port_open(port), "the extra broker is still up after cleanup"


@pytest.mark.parametrize("consumer_backend", ["kafka-python", "confluent"])
def test_daemon_rides_out_a_broker_outage(tmp_path, fault_broker, consumer_backend):
    report = outage_run(tmp_path, fault_broker, {"CDR_DETECTOR__KAFKA__CONSUMER_BACKEND": consumer_backend}, DOWN_S)
    rep = report["events"]
    assert rep["max_repeat"] <= 2, report


# Not strict: whether batches expire inside the outage depends on timing, and on a fast machine the
# run sometimes gets through (an XPASS is reported, not counted as a pass, and does not fail the run).
@pytest.mark.xfail(strict=False, reason="LIMITATION: the daemon's producer retries without a delivery timeout "
                                       "by default, so outages of any length are waited out (the test above); "
                                       "with an explicit short producer delivery_timeout_ms, kafka-python's "
                                       "idempotent producer wedges once batches expire and flush() never "
                                       "completes again, so the daemon stalls instead of rewinding")
def test_outage_longer_than_delivery_timeout_recovers(tmp_path, fault_broker):
    # 5 s delivery timeout (default 120 s) stands in for a longer outage, to keep the test short.
    outage_run(tmp_path, fault_broker, {"CDR_DETECTOR__KAFKA__PRODUCER_OPTIONS":
                                        "{delivery_timeout_ms: 5000, request_timeout_ms: 3000}"},
               7, catch_up_s=30)


def outage_run(tmp_path, broker: ExtraBroker, extra_env: dict, down_s: float, catch_up_s: float = 120) -> dict:
    if not (SAMPLE_DIR / "cdrs.jsonl.gz").exists():
        pytest.fail(f"labelled sample not found in {SAMPLE_DIR}")
    data = tmp_path / "slice"
    make_slice(data, benign=100, fraud_per_scheme=3, seed=2)
    lines = read_lines(data / "cdrs.jsonl.gz")
    cut = split_at_ts_boundary(lines, 0.5)
    first = write_lines(tmp_path / "first.jsonl.gz", lines[:cut])
    second = write_lines(tmp_path / "second.jsonl.gz", lines[cut:])
    reference = backtest_events(data / "cdrs.jsonl.gz", data / "subscribers.jsonl", tmp_path / "ref.jsonl")
    assert len(reference) >= 5

    d = None
    report = {}
    try:
        if not broker.running():
            report["broker_start_s"] = round(broker.start(), 1)
        setup = KafkaSetup(broker.bootstrap, extra=dict(extra_env))
        setup.ensure_topics()
        assert replay_inprocess(setup, first, data / "subscribers.jsonl")["records"] == cut

        # PYTHONFAULTHANDLER: SIGABRT dumps every thread's stack into the log if the daemon wedges.
        d = DaemonProcess(setup, tmp_path / "daemon.log", env=setup.env(PYTHONFAULTHANDLER="1")).start()
        pid = d.pid
        d.wait_ready(timeout=60)

        # Stop the broker while the daemon is in the middle of the first half.
        def midway():
            d.assert_alive()
            ok = d.records_total().get("ok", 0)
            return ok if ok >= 0.15 * cut else None
        at_stop = wait_until(midway, 60, "the daemon to be under way", d.log_tail, interval=0.05)
        report["ok_when_broker_stopped"] = int(at_stop)
        report["broker_stop_s"] = round(broker.stop(), 1)
        assert not port_open(broker.port)

        # Down for a while: the daemon stays up (and says so on /healthz) and does not exit.
        t_down = time.monotonic()
        samples = []
        while time.monotonic() - t_down < down_s:
            d.assert_alive()
            samples.append(d.healthz())
            time.sleep(1)
        report["healthz_while_down"] = sorted({(h or {}).get("status", "no answer") for h in samples})
        report["ok_while_down"] = int(d.records_total().get("ok", 0))

        report["broker_restart_s"] = round(broker.start(), 1)
        d.assert_alive()
        assert d.pid == pid

        # The rest of the stream arrives after the outage.
        assert replay_inprocess(setup, second)["records"] == len(lines) - cut
        try:
            d.wait_caught_up(timeout=catch_up_s)
        except TimeoutError as exc:
            h = d.healthz()
            os.kill(d.pid, signal.SIGABRT)
            time.sleep(2)
            dump = d.log_path.read_text(errors="replace")
            dump = dump[dump.rfind("Fatal Python error"):] if "Fatal Python error" in dump else d.log_tail()
            raise AssertionError(f"the daemon did not recover after the outage: /healthz {h}; "
                                 f"report {report}\n{str(exc).splitlines()[0]}\n--- stacks at SIGABRT ---\n"
                                 f"{dump[:6000]}") from None
        d.assert_alive()
        assert d.pid == pid, "the daemon was restarted"

        rec = d.records_total()
        report["records_total"] = {k: int(v) for k, v in rec.items()}
        assert rec["ok"] == len(lines), f"records lost or counted twice: {rec} for {len(lines)} published"
        assert rec["invalid"] == 0 and rec["late"] == 0, rec

        messages = setup.messages("suspensions")
        events = [orjson.loads(m.value) for m in messages]
        cfg = setup.cfg()
        for e in events:
            assert not event_violations(e, cfg), (event_violations(e, cfg), e)
        online = {e["event_id"]: e for e in events}
        repeats = {k: n for k, n in Counter(e["event_id"] for e in events).items() if n > 1}
        report["events"] = {"messages": len(messages), "distinct": len(online), "repeated_ids": len(repeats),
                            "max_repeat": max(repeats.values(), default=1)}
        report["rebalances"] = d.metric_by("cdr_detector_rebalances_total", "kind")
        report["broker_errors"] = d.metric_by("cdr_detector_broker_errors_total", "operation")
        print("broker-fault report:", report)
        assert online == reference, diff_events(reference, online)
        # At-least-once: a repeat is allowed only as a re-send of an event whose commit was cut off.
        assert max(repeats.values(), default=1) <= 2, f"event ids repeated more than twice: {repeats}"
        assert not setup.messages("dlq")
        assert d.terminate(timeout=30) == 0, d.log_tail()
    finally:
        if d is not None:
            d.cleanup()
        if not broker.running():  # leave it up for the next test of the module
            broker.start()
    return report
