"""Verification outcomes end to end on the real broker: `cleared` restores, and the daemon's
restores equal those of `cdr-detector backtest --outcomes` over the same files."""
from __future__ import annotations

import runpy
from pathlib import Path

import orjson
import pytest

try:
    from daemon_harness import DaemonProcess, KafkaSetup, diff_events, replay_inprocess
    from test_daemon_kafka import broker, daemon_slice  # noqa: F401 (fixtures)
except ImportError:  # pragma: no cover
    from tests.daemon_harness import DaemonProcess, KafkaSetup, diff_events, replay_inprocess
    from tests.test_daemon_kafka import broker, daemon_slice  # noqa: F401

from detector import config
from detector.backtest import backtest
from detector.report import load_labels
from detector.topic_dump import read_events

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parent.parent
# A low threshold so that the slice has legitimate lines to suspend and clear.
LOW = {"CDR_DETECTOR__TIERS__LOW__THRESHOLD": "0.07", "CDR_DETECTOR__RESTORE__BELOW_SCORE": "0.035"}


@pytest.mark.parametrize("consumer_backend", ["kafka-python", "confluent"])
def test_cleared_lines_are_restored_by_the_daemon_as_in_the_backtest(broker, daemon_slice, tmp_path,  # noqa: F811
                                                                    consumer_backend):
    cfg = config.load(environ=LOW)
    cdrs, subs = str(daemon_slice["cdrs"]), str(daemon_slice["subscribers"])
    first, _ = backtest(cfg, cdrs, subs, str(tmp_path / "first.jsonl"), show_progress=False)
    derive = runpy.run_path(str(ROOT / "scripts" / "derive_outcomes.py"))["derive"]
    outcomes = derive(load_labels(str(daemon_slice["dir"] / "labels.csv")), first.events, 6.0, 2.0)
    cleared = {o["msisdn"] for o in outcomes if o["outcome"] == "cleared"}
    assert cleared, "the slice must give legitimate lines to clear at this threshold"
    outcomes_path = tmp_path / "outcomes.jsonl"
    outcomes_path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in outcomes))
    ref, _ = backtest(cfg, cdrs, subs, str(tmp_path / "ref.jsonl"), outcomes=str(outcomes_path), show_progress=False)
    expected = {e["event_id"]: {k: v for k, v in e.items() if not k.startswith("_")} for e in ref.events}
    restored_ref = {e["msisdn"] for e in ref.events if e["action"] == "restore"}
    assert cleared <= restored_ref, "every cleared line that was suspended is restored offline"

    s = KafkaSetup(broker, extra=dict(LOW, CDR_DETECTOR__KAFKA__CONSUMER_BACKEND=consumer_backend))
    s.ensure_topics()
    d = DaemonProcess(s, tmp_path / "daemon.log")
    try:
        replay_inprocess(s, cdrs, subs)
        from detector.replay import publish
        publish(s.kcfg, s.topics["outcomes"], str(outcomes_path))
        d.start()
        d.wait_ready(timeout=60)
        d.wait_caught_up(timeout=180)
        assert d.terminate(timeout=30) == 0
        got = read_events(s.kcfg, s.topics["suspensions"])
        assert ("consumers: librdkafka" in d.log_path.read_text(errors="replace")) == (consumer_backend == "confluent")
    finally:
        d.cleanup()
        s.delete()
    restores = [e for e in got.values() if e["action"] == "restore"]
    assert {e["msisdn"] for e in restores} >= cleared
    assert all(e["reasons"] and e["reasons"][0]["text"] for e in restores)
    assert got == expected, diff_events(expected, got)
