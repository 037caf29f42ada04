"""The daemon end to end on the real local Kafka broker: `cdr-detector run` as a subprocess.

Every test has its own topics and consumer group (daemon_harness.KafkaSetup) and never leaves a
daemon running (the `daemons` fixture SIGKILLs whatever is still alive at teardown). The data is a
small slice of the labelled sample, made once per session; the reference is `cdr-detector backtest`
over the same files.
"""
from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest

try:  # tests/ on sys.path (no tests/__init__.py) or the repo root (a package)
    from daemon_harness import (PARTITIONS, SAMPLE_DIR, DaemonProcess, KafkaSetup, backtest_events,
                                contract_violations, decode_events, diff_events, make_slice, read_lines,
                                replay_cli, replay_inprocess, split_at_ts_boundary, wait_until, write_lines)
    from kafka_broker import ensure_broker
except ImportError:  # pragma: no cover
    from tests.daemon_harness import (PARTITIONS, SAMPLE_DIR, DaemonProcess, KafkaSetup, backtest_events,
                                      contract_violations, decode_events, diff_events, make_slice, read_lines,
                                      replay_cli, replay_inprocess, split_at_ts_boundary, wait_until,
                                      write_lines)
    from tests.kafka_broker import ensure_broker

from detector import kafka_io
from detector.core import partition_of
from detector.topic_dump import read_events

pytestmark = pytest.mark.kafka

STOP_TIMEOUT_S = 30


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def broker() -> str:
    return ensure_broker()


@pytest.fixture(scope="session")
def daemon_slice(tmp_path_factory) -> dict:
    """`scripts/slice_dataset.py SAMPLE OUT --benign 150 --fraud-per-scheme 3`, once per session."""
    if not (SAMPLE_DIR / "cdrs.jsonl.gz").exists():
        pytest.skip(f"labelled sample not found in {SAMPLE_DIR}")
    out = tmp_path_factory.mktemp("daemon-slice")
    counts = make_slice(out, benign=150, fraud_per_scheme=3)
    lines = read_lines(out / "cdrs.jsonl.gz")
    assert len(lines) == counts["records"] > 1000
    return {"dir": out, "cdrs": out / "cdrs.jsonl.gz", "subscribers": out / "subscribers.jsonl",
            "lines": lines, "records": len(lines)}


@pytest.fixture(scope="session")
def reference_events(daemon_slice, tmp_path_factory) -> dict[str, dict]:
    """The backtest's events over the whole slice, by event_id."""
    out = tmp_path_factory.mktemp("backtest") / "events.jsonl"
    events = backtest_events(daemon_slice["cdrs"], daemon_slice["subscribers"], out)
    # The parity checks below are only meaningful if the slice makes the detector decide something.
    assert len(events) >= 5, f"the slice yields only {len(events)} backtest events"
    return events


@pytest.fixture
def kafka_setup(broker) -> KafkaSetup:
    s = KafkaSetup(broker)
    s.ensure_topics()
    yield s
    try:
        s.delete()
    except Exception as exc:  # cleanup must not turn a passing test into an error
        print(f"could not delete the test topics: {exc!r}")


@pytest.fixture
def daemons(kafka_setup, tmp_path):
    """`daemons()` starts a daemon on this test's topics; all are SIGKILLed at teardown if alive."""
    started: list[DaemonProcess] = []
    log = tmp_path / "daemon.log"

    def start(**env: str) -> DaemonProcess:
        d = DaemonProcess(kafka_setup, log, kafka_setup.env(**env) if env else None)
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.cleanup()
    # Shown by pytest only when the test fails (captured output of the teardown).
    print(f"\n--- daemon log ({log}) ---\n{started[-1].log_tail(120) if started else '(none)'}")


# -- helpers ----------------------------------------------------------------------------------------
def check_suspension_messages(setup: KafkaSetup, messages: list) -> list[dict]:
    """Keyed by msisdn, in the msisdn's partition, and contract-valid; returns the decoded events."""
    cfg = setup.cfg()
    events = decode_events(messages)
    problems = []
    for m, e in zip(messages, events):
        if m.key != e["msisdn"].encode():
            problems.append(f"offset {m.partition}/{m.offset}: key {m.key!r} != msisdn {e['msisdn']!r}")
        if m.partition != partition_of(e["msisdn"], PARTITIONS):
            problems.append(f"offset {m.partition}/{m.offset}: msisdn {e['msisdn']} in the wrong partition")
        problems += [f"event {e.get('event_id')}: {v}" for v in contract_violations(e, cfg)]
    assert not problems, "\n".join(problems[:20])
    return events


def stop_cleanly(d: DaemonProcess) -> None:
    rc = d.terminate(timeout=STOP_TIMEOUT_S)
    assert rc == 0, f"daemon exited with {rc} after SIGTERM:\n{d.log_tail()}"


BACKEND = "CDR_DETECTOR__KAFKA__PRODUCER_BACKEND"
CONSUMER_BACKEND = "CDR_DETECTOR__KAFKA__CONSUMER_BACKEND"


def backends(producer: str, consumer: str) -> dict[str, str]:
    """The environment of a daemon with these producer and consumer backends."""
    return {BACKEND: producer, CONSUMER_BACKEND: consumer}


def assert_consumer_backend(d: DaemonProcess, consumer_backend: str) -> None:
    """The daemon really ran the consumers it was told to (kafka_io logs librdkafka's version
    when it makes the first ConfluentConsumer of a process)."""
    text = d.log_path.read_text(errors="replace")
    assert ("consumers: librdkafka" in text) == (consumer_backend == "confluent"), \
        f"the daemon did not use consumer backend {consumer_backend}"


# (producer backend, consumer backend) of the daemon
BACKEND_PAIRS = [pytest.param("kafka-python", "kafka-python", id="kafka-python"),
                 pytest.param("confluent", "kafka-python", id="confluent-producer"),
                 pytest.param("kafka-python", "confluent", id="confluent-consumer"),
                 pytest.param("confluent", "confluent", id="confluent")]


# -- 1. end to end + parity with the backtest --------------------------------------------------------
@pytest.mark.parametrize("backend,consumer_backend", BACKEND_PAIRS)
def test_end_to_end_parity_with_backtest(kafka_setup, daemons, daemon_slice, reference_events, backend,
                                         consumer_backend):
    """Every producer backend (replay and daemon) and consumer backend (daemon) gives the
    backtest's events, partitioned alike."""
    s = kafka_setup
    counts = replay_cli(s, daemon_slice["cdrs"], daemon_slice["subscribers"], env=s.env(**{BACKEND: backend}))
    assert counts["records"] == daemon_slice["records"]
    assert counts["subscribers"] > 0
    records = s.messages("records")  # keyed sends land where kafka-python's murmur2 puts them
    assert len(records) == counts["records"]
    assert all(m.partition == partition_of(m.key.decode(), PARTITIONS) for m in records)

    d = daemons(**backends(backend, consumer_backend))
    d.wait_ready()
    d.wait_caught_up(timeout=60)

    rec = d.records_total()
    decisions = sum(v for (n, _), v in d.metrics().items() if n == "cdr_detector_decisions_total")
    assert rec["ok"] == daemon_slice["records"], rec
    assert rec["invalid"] == rec["duplicate"] == 0, rec

    messages = s.messages("suspensions")
    events = check_suspension_messages(s, messages)
    assert decisions == len(messages), "decisions_total does not count the events on the topic"
    online = {e["event_id"]: e for e in events}
    assert online == read_events(s.kcfg, s.topics["suspensions"])
    assert online == reference_events, diff_events(reference_events, online)
    assert not s.messages("dlq"), "valid input reached the dead-letter topic"

    stop_cleanly(d)
    assert d.stop_seconds < STOP_TIMEOUT_S
    assert_consumer_backend(d, consumer_backend)


# -- 2. poison records go to the DLQ, untouched, and the rest is processed ---------------------------
def test_poison_records_dead_lettered_and_processing_continues(kafka_setup, daemons, daemon_slice):
    s = kafka_setup
    good = daemon_slice["lines"][:400]
    before, after = good[:200], good[200:]
    template = orjson.loads(good[0])

    missing_ts = {k: v for k, v in template.items() if k != "ts"}
    missing_ts["record_id"] = "poison-missing-ts"
    negative = dict(template, record_id="poison-negative-duration", duration_s=-5)
    bad = [  # (raw bytes, key, expected reason, expected field)
        (b"this is not json {", b"13800000001", "not_json", ""),
        (b'{"record_id": "poison-\xff\xfe-utf8", "ts": 1}', b"13800000002", "bad_utf8", ""),
        (orjson.dumps(missing_ts), template["msisdn"].encode(), "missing_field", "ts"),
        (orjson.dumps(negative), template["msisdn"].encode(), "bad_value", "duration_s"),
    ]

    producer = kafka_io.producer(s.kcfg)
    try:
        for line in before:
            producer.send(s.topics["records"], key=orjson.loads(line)["msisdn"].encode(), value=line)
        futures = [producer.send(s.topics["records"], key=key, value=raw) for raw, key, _, _ in bad]
        for line in after:
            producer.send(s.topics["records"], key=orjson.loads(line)["msisdn"].encode(), value=line)
        # Records of the (compacted, internal) shared-facts topic that no daemon writes: read by
        # every daemon at every start, they must be counted and skipped, not stop it.
        shared_topic = kafka_io.topic_names(s.kcfg)["shared"]
        bad_shared = [(b"c|cell-1|13800000001", b"not json"), (b"h|8600|13800000001", b'{"v":99,"b":1,"m":["1"]}'),
                      (b"\xff\xfe", b"{}"), (b"w|0", b"[1]")]
        for key, value in bad_shared:
            producer.send(shared_topic, key=key, value=value, partition=0)
        producer.flush(timeout=30)
        sent = {(f.get(timeout=30).partition, f.get(timeout=30).offset): b for f, b in zip(futures, bad)}
    finally:
        producer.close(timeout=10)
    assert len(sent) == len(bad)

    d = daemons()
    d.wait_ready()
    d.wait_caught_up(timeout=60)

    # The dead letters: original bytes and key, headers naming the error and the real source offset.
    dlq = s.messages("dlq")
    assert len(dlq) == len(bad), f"{len(dlq)} dead letters for {len(bad)} bad records"
    seen = set()
    for m in dlq:
        h = {k: v.decode() for k, v in (m.headers or [])}
        for name in ("error", "error.reason", "error.field", "source.topic", "source.partition", "source.offset"):
            assert name in h, f"dead letter without header {name!r}: {h}"
        src = (int(h["source.partition"]), int(h["source.offset"]))
        assert src in sent, f"dead letter names {src}, not the offset of a bad record ({sorted(sent)})"
        raw, key, reason, fld = sent[src]
        assert m.value == raw, f"dead letter bytes changed: {m.value!r} != {raw!r}"
        assert m.key == key
        assert h["source.topic"] == s.topics["records"]
        assert h["error.reason"] == reason, h
        assert h["error.field"] == fld, h
        assert h["error"].strip(), h
        seen.add(src)
    assert seen == set(sent)

    # Everything good was processed, and the daemon is still up.
    metrics = d.metrics()
    health = d.healthz()
    d.assert_alive()
    assert health["live"] and health["ready"] and health["lag"] == 0, health
    stop_cleanly(d)

    def by(name: str, label: str) -> dict[str, float]:
        return {dict(lb)[label]: v for (n, lb), v in metrics.items() if n == name and v}

    assert sum(v for (n, _), v in metrics.items() if n == "cdr_detector_shared_invalid_records_total") == len(bad_shared)
    want = Counter(reason for _, _, reason, _ in bad)
    assert by("cdr_detector_records_total", "result").get("ok") == len(good), by("cdr_detector_records_total", "result")
    assert by("cdr_detector_dlq_records_total", "reason") == want
    # The rejected CDRs must be counted as invalid records too (metrics.py: "CDRs rejected as invalid,
    # by reason code"; deploy/prometheus/rules/recording.yml builds the invalid ratio from these).
    assert by("cdr_detector_invalid_records_total", "reason") == want, \
        "cdr_detector_invalid_records_total does not count the rejected records"
    assert by("cdr_detector_records_total", "result").get("invalid") == len(bad), \
        "cdr_detector_records_total{result=\"invalid\"} does not count the rejected records"


# -- 3. graceful shutdown, offsets committed, state resumed from the changelog -----------------------
def test_graceful_shutdown_and_resume(kafka_setup, daemons, daemon_slice, reference_events, tmp_path):
    s = kafka_setup
    lines = daemon_slice["lines"]
    cut = split_at_ts_boundary(lines, 0.5)
    first = write_lines(tmp_path / "first.jsonl.gz", lines[:cut])
    second = write_lines(tmp_path / "second.jsonl", lines[cut:])

    counts = replay_inprocess(s, first, daemon_slice["subscribers"])
    assert counts["records"] == cut

    d1 = daemons()
    d1.wait_ready()
    d1.wait_caught_up(timeout=60)
    assert d1.records_total()["ok"] == cut
    stop_cleanly(d1)

    end = s.end_offsets("records")
    assert sum(end.values()) == cut
    assert s.committed_offsets("records") == {p: off for p, off in end.items() if off}, \
        "after SIGTERM the group's committed offsets are not the end of the records topic"
    run1 = len(s.messages("suspensions"))

    counts = replay_inprocess(s, second)
    assert counts["records"] == len(lines) - cut

    d2 = daemons()
    d2.wait_ready()
    d2.wait_caught_up(timeout=60)
    rec = d2.records_total()
    restored = d2.metric("cdr_detector_state_restore_records_total")
    stop_cleanly(d2)

    assert restored > 0, "the second run did not restore any state from the changelog"
    assert rec["ok"] == len(lines) - cut and rec["duplicate"] == 0, \
        f"the second run should process exactly the second half: {rec}"

    messages = s.messages("suspensions")
    events = check_suspension_messages(s, messages)
    online = {e["event_id"]: e for e in events}
    assert online == reference_events, diff_events(reference_events, online)
    repeated = {k: n for k, n in Counter(e["event_id"] for e in events).items() if n > 1}
    assert len(messages) == len(online), f"a clean restart repeated events: {repeated}"
    assert 0 < run1 < len(messages), "the split should leave events to both runs"


# -- 4. kill -9 in the middle: the restarted daemon ends where the backtest ends ----------------------
@pytest.mark.parametrize("backend,consumer_backend", [p for p in BACKEND_PAIRS if p.id != "confluent-consumer"])
def test_crash_midway_then_recovery_matches_backtest(kafka_setup, daemons, daemon_slice, reference_events, backend,
                                                    consumer_backend, tmp_path):
    s = kafka_setup
    total = daemon_slice["records"]
    # Only the first 70% is on the topic until the daemon is killed, so the kill lands midway
    # however fast the daemon is; the rest is replayed before the restart.
    lines = daemon_slice["lines"]
    cut = split_at_ts_boundary(lines, 0.7)
    replay_inprocess(s, write_lines(tmp_path / "head.jsonl", lines[:cut]), daemon_slice["subscribers"])

    d1 = daemons(**backends(backend, consumer_backend))
    d1.wait_ready()

    def midway():
        d1.assert_alive()
        committed = sum(s.committed_offsets("records").values())
        ok = d1.records_total()["ok"]  # read after the offsets: ok >= what they cover
        return ok if ok >= 0.3 * total and committed > 0 else None

    wait_until(midway, 60, "the daemon to be 30-70% through the slice", d1.log_tail, interval=0.05)
    rc = d1.kill9()
    assert rc == -9
    committed = sum(s.committed_offsets("records").values())
    assert 0 < committed < total, f"committed {committed}/{total}: not a crash in the middle"
    run1 = len(s.messages("suspensions"))
    replay_inprocess(s, write_lines(tmp_path / "tail.jsonl", lines[cut:]))

    # The killed consumer stays in the group until its session expires (kafka-python's and
    # librdkafka's default session timeout is 45 s), and only then are the partitions assigned to
    # the new daemon.
    d2 = daemons(**backends(backend, consumer_backend))
    d2.wait_ready(timeout=75)
    d2.wait_caught_up(timeout=60)
    rec = d2.records_total()
    restored = d2.metric("cdr_detector_state_restore_records_total")
    stop_cleanly(d2)

    assert restored > 0, "the restarted daemon did not restore state from the changelog"
    # It resumes from the state's positions, at or past the committed offsets: nothing before
    # them is processed (or counted) again.
    assert 0 < rec["ok"] + rec["duplicate"] <= total - committed, (committed, rec)

    messages = s.messages("suspensions")
    events = check_suspension_messages(s, messages)
    online = {e["event_id"]: e for e in events}
    assert online == reference_events, diff_events(reference_events, online)
    assert len(messages) >= run1
    assert_consumer_backend(d2, consumer_backend)


# -- 5. /healthz lag counts the whole backlog ---------------------------------------------------------
def test_healthz_lag_counts_partitions_not_yet_processed(kafka_setup, daemons, daemon_slice, tmp_path):
    """Partition 2's records are all later in event time than partitions 0 and 1's, so the daemon's
    event-time merge reaches none of them until 0 and 1 are done. Meanwhile /healthz must still count
    them in `lag` (and must not report a daemon with an untouched backlog as caught up)."""
    s = kafka_setup
    early, late = [], []
    last_ts = max(orjson.loads(x)["ts"] for x in daemon_slice["lines"])
    shift = last_ts - min(orjson.loads(x)["ts"] for x in daemon_slice["lines"]) + 3_600_000
    for line in daemon_slice["lines"]:
        r = orjson.loads(line)
        if partition_of(r["msisdn"], PARTITIONS) == 2:
            late.append(orjson.dumps(dict(r, ts=r["ts"] + shift)))
        else:
            early.append(line)
    late.sort(key=lambda x: orjson.loads(x)["ts"])
    path = write_lines(tmp_path / "skewed.jsonl", early + late)
    replay_inprocess(s, path, daemon_slice["subscribers"])
    end = s.end_offsets("records")
    assert end[2] == len(late) > 1000 and end[0] + end[1] == len(early)

    d = daemons()
    samples = []  # (healthz, records ok read after it)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        d.assert_alive()
        h = d.healthz()
        if not h or h.get("assigned") != list(range(PARTITIONS)):
            time.sleep(0.02)
            continue
        ok = d.records_total()["ok"]
        if ok >= len(early):
            break
        samples.append((h, ok))
    # Read after /healthz: while the records processed are fewer than len(early), partition 2 was
    # untouched at the time of the sample. records_total is published once per polled batch, so it
    # trails what was processed by at most one batch (kafka.max_poll_records).
    batch = int(s.kcfg["max_poll_records"])
    samples = [(h, ok) for h, ok in samples if ok + batch < len(early)]
    assert samples, "no /healthz sample while the early partitions were being processed"
    # `lag` is None while some partition has not been fetched yet: unknown, not "caught up"
    wrong = [(h["lag"], h["ready"], int(ok)) for h, ok in samples if h["lag"] is not None and h["lag"] < len(late)]
    assert not [h for h, _ in samples if h["lag"] is None and h["ready"]], "ready while the lag is unknown"
    ready_wrong = [w for w in wrong if w[1]]
    assert not wrong, (f"/healthz reported lag below partition 2's untouched backlog of {len(late)} records "
                       f"(records topic holds {len(early) + len(late)}) in {len(wrong)}/{len(samples)} samples, "
                       f"{len(ready_wrong)} of them with ready=true; (lag, ready, records ok read just after "
                       f"it): first {wrong[:3]}, ready {ready_wrong[:3]}, last {wrong[-3:]}")
    stop_cleanly(d)
