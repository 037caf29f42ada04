"""The suspension-storm breaker on a broken feed: core level (backtest) and daemon level (Kafka).

The broken feed is a slice of the labelled sample in which every call seems to go to a far
province or a premium foreign destination, unanswered — what a mediation system that lost its
number-range table would send. The breaker (`storm.max_suspensions_per_minute`) must cap the
enforced suspensions/escalations per minute of event time, turn everything after the trip into
shadow decisions while scoring goes on, and be re-armed by SIGUSR1 in the daemon.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import orjson
import pytest

from conftest import MINUTE, T0, Stream, load_cfg, warm_up
from daemon_harness import SAMPLE_DIR, DaemonProcess, KafkaSetup, make_slice, read_lines, replay_cli, write_lines
from detector.backtest import backtest
from detector.core import Detector, StormBreaker
from detector.pipeline import Pipeline
from robust_harness import corrupt, event_violations, is_enforced_block, max_per_window, wait_until

BOUND = 3


@pytest.fixture(scope="module")
def broken_feed(tmp_path_factory) -> dict:
    if not (SAMPLE_DIR / "cdrs.jsonl.gz").exists():
        pytest.fail(f"labelled sample not found in {SAMPLE_DIR}")
    out = tmp_path_factory.mktemp("storm-slice")
    counts = make_slice(out, benign=150, fraud_per_scheme=3, seed=1)
    lines = read_lines(out / "cdrs.jsonl.gz")
    bad = corrupt(lines)
    path = write_lines(out / "broken.jsonl.gz", bad)
    return {"dir": out, "cdrs": path, "subscribers": out / "subscribers.jsonl", "records": counts["records"]}


def storm_cfg(enabled: bool = True, bound: int = BOUND) -> dict:
    return load_cfg(**{"storm.enabled": enabled, "storm.max_suspensions_per_minute": bound})


def run_backtest(feed: dict, cfg: dict, out: Path):
    res, pipeline = backtest(cfg, str(feed["cdrs"]), str(feed["subscribers"]), str(out), show_progress=False)
    return res, pipeline


# -- (a) core level --------------------------------------------------------------------------------
def test_breaker_caps_enforced_decisions_on_a_broken_feed(broken_feed, tmp_path):
    cfg = storm_cfg()
    res, p = run_backtest(broken_feed, cfg, tmp_path / "events.jsonl")
    events = res.events
    assert p.counts["ok"] == broken_feed["records"], "every record is still scored"

    enforced = [e for e in events if is_enforced_block(e)]
    worst = max_per_window(e["ts"] for e in enforced)
    assert worst <= BOUND, f"{worst} enforced suspensions/escalations in one minute of event time (bound {BOUND})"

    # It did trip, and from the trip on every suspension/escalation is shadow-only...
    breaker = p.detector.breaker
    assert breaker.tripped and breaker.trips == 1, breaker.to_dict()
    first = next(i for i, e in enumerate(events) if e.get("_breaker"))
    assert events[first]["ts"] == breaker.tripped_ts
    after = [e for e in events[first:] if e["action"] in ("suspend", "escalate")]
    assert after and all(e["mode"] == "shadow" for e in after)
    # ... while scoring goes on: shadow decisions keep coming long after the trip.
    shadow_ts = [e["ts"] for e in after]
    assert len(after) >= 5 * BOUND, f"only {len(after)} shadow decisions after the trip"
    assert max(shadow_ts) - breaker.tripped_ts > 60 * MINUTE, "no shadow decision an hour past the trip"
    for e in events:
        assert not event_violations(e, cfg), (event_violations(e, cfg), e)
    # The written file (what a backtest hands on) says the same as the in-memory events.
    written = [orjson.loads(x) for x in read_lines(tmp_path / "events.jsonl")]
    assert [w["mode"] for w in written] == [e["mode"] for e in events]

    # Meaningful: without the breaker the same feed enforces far more, and faster than the bound.
    res_off, p_off = run_backtest(broken_feed, storm_cfg(enabled=False), tmp_path / "off.jsonl")
    enforced_off = [e for e in res_off.events if is_enforced_block(e)]
    assert len(enforced_off) >= 2 * max(1, len(enforced)) and len(enforced_off) - len(enforced) >= 100, \
        (len(enforced_off), len(enforced))
    assert max_per_window(e["ts"] for e in enforced_off) > BOUND
    assert not p_off.detector.breaker.tripped
    # Same decisions, only the mode differs: the breaker never changes what is scored or decided.
    strip = lambda es: [(e["event_id"], e["action"], e["tier"], e["score"]) for e in es]  # noqa: E731
    assert strip(res.events) == strip(res_off.events)


def test_breaker_bound_is_configurable(broken_feed, tmp_path):
    counts = {}
    for bound in (1, 10):
        res, _ = run_backtest(broken_feed, storm_cfg(bound=bound), tmp_path / f"b{bound}.jsonl")
        enforced = [e for e in res.events if is_enforced_block(e)]
        assert max_per_window(e["ts"] for e in enforced) <= bound
        counts[bound] = len(enforced)
    assert counts[1] < counts[10]


def trip_breaker():
    """Four blasting lines against a bound of one suspension a minute: the breaker trips."""
    p = Pipeline(Detector(storm_cfg(bound=1)))
    warm_up(p.detector)
    s = Stream()
    recs = []
    for i in range(4):
        recs += s.blast(f"1380000000{i}", T0 + i * 1000, 12, gap_ms=20_000)
    recs.sort(key=lambda r: (r.ts, r.record_id))
    return p, s, [e for r in recs for e in p.process(r)]


def test_rearm_lets_enforcement_resume():
    """After an operator re-arms the breaker, new suspensions are enforced again."""
    p, s, ev = trip_breaker()
    assert p.detector.breaker.tripped and any(e["mode"] == "shadow" for e in ev)
    p.detector.breaker.rearm()
    assert not p.detector.breaker.tripped
    fresh = s.blast("13900000077", T0 + 2 * 3_600_000, 12, gap_ms=60_000)
    ev2 = [e for r in fresh for e in p.process(r)]
    assert any(e["action"] == "suspend" and e["mode"] == "enforce" for e in ev2), ev2


def test_line_shadowed_during_storm_is_enforced_after_rearm():
    """A suspension the breaker turned to shadow was never enforced: after the re-arm the line is
    decided afresh, and a line still behaving like fraud gets an enforced `suspend`."""
    p, s, ev = trip_breaker()
    shadowed = sorted({e["msisdn"] for e in ev if e.get("_breaker")} - {e["msisdn"] for e in ev if is_enforced_block(e)})
    assert shadowed, ev
    p.detector.breaker.rearm()
    victim = shadowed[0]
    more = s.blast(victim, T0 + 3_600_000, 40, gap_ms=60_000)
    ev2 = [e for r in more for e in p.process(r)]
    assert any(e["action"] == "suspend" and e["mode"] == "enforce" for e in ev2), \
        f"still fraudulent after the re-arm, but no enforced suspension: {[(e['action'], e['tier'], e['mode']) for e in ev2]}"


def test_breaker_bound_holds_for_out_of_order_events():
    b = StormBreaker({"max_suspensions_per_minute": BOUND})
    events = [{"action": "suspend", "mode": "enforce", "ts": t} for t in (0, 0, 0, 200_000, 30_000)]
    out = b.filter(events)
    assert max_per_window(e["ts"] for e in out if e["mode"] == "enforce") <= BOUND


# -- (b) daemon level --------------------------------------------------------------------------------
@pytest.mark.kafka
def test_daemon_breaker_trips_and_sigusr1_rearms(broken_feed, tmp_path):
    from kafka_broker import ensure_broker

    cfg = storm_cfg()
    ref, _ = run_backtest(broken_feed, cfg, tmp_path / "ref.jsonl")
    ref_enforced = sorted(e["event_id"] for e in ref.events if is_enforced_block(e))

    setup = KafkaSetup(ensure_broker(), extra={"CDR_DETECTOR__STORM__MAX_SUSPENSIONS_PER_MINUTE": str(BOUND)})
    setup.ensure_topics()
    d = DaemonProcess(setup, tmp_path / "daemon.log")
    try:
        counts = replay_cli(setup, broken_feed["cdrs"], broken_feed["subscribers"])
        assert counts["records"] == broken_feed["records"]
        d.start()
        d.wait_ready(timeout=60)
        d.wait_caught_up(timeout=120)
        assert d.records_total()["ok"] == broken_feed["records"]

        events = [orjson.loads(m.value) for m in setup.messages("suspensions")]
        for e in events:
            assert not event_violations(e, cfg), (event_violations(e, cfg), e)
        enforced = [e for e in events if is_enforced_block(e)]
        worst = max_per_window(e["ts"] for e in enforced)
        assert worst <= BOUND, f"the daemon enforced {worst} decisions in one minute of event time"
        assert len({e["event_id"] for e in events}) >= 2 * max(1, len(enforced)), "the breaker should have held most back"
        assert sorted({e["event_id"] for e in enforced}) == ref_enforced, "daemon and backtest enforce different decisions"
        assert d.metric("cdr_detector_storm_breaker_tripped") == 1.0
        assert d.metric("cdr_detector_decisions_total", action="suspend", tier="high", mode="shadow") > 0

        os.kill(d.pid, signal.SIGUSR1)
        wait_until(lambda: (d.assert_alive(), d.metric("cdr_detector_storm_breaker_tripped") == 0.0)[1], 20,
                   "the breaker gauge to go back to 0 after SIGUSR1", d.log_tail)
        # Still alive and healthy a few poll loops later (the re-arm must not break the loop).
        wait_until(lambda: (d.assert_alive(), (d.healthz() or {}).get("live"))[1], 10, "healthz live", d.log_tail)
        import time
        time.sleep(3)
        d.assert_alive()
        h = d.healthz()
        assert h and h["live"], h
        assert d.metric("cdr_detector_storm_breaker_tripped") == 0.0
        rc = d.terminate(timeout=30)
        assert rc == 0, d.log_tail()
        log_text = d.log_path.read_text(errors="replace")
        assert "breaker tripped" in log_text and "re-armed" in log_text
    finally:
        d.cleanup()
        try:
            setup.delete()
        except Exception:  # best effort
            pass
