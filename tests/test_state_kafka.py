"""State that survives crashes and scale-out, on the real broker.

- kill -9 in the middle, restart: the events (repeats dropped) and the restored per-number state
  equal those of an uninterrupted run;
- two daemons in one group split the partitions; one stops mid-stream and the other takes its
  partitions and their state: the result equals the single-process backtest, cross-number
  (handset/cell) facts included.
"""
from __future__ import annotations

import threading

import orjson
import pytest

try:
    from daemon_harness import (DaemonProcess, KafkaSetup, diff_events, replay_inprocess, split_at_ts_boundary,
                                wait_until, write_lines)
    from test_daemon_kafka import broker, daemon_slice, reference_events  # noqa: F401 (fixtures)
except ImportError:  # pragma: no cover
    from tests.daemon_harness import (DaemonProcess, KafkaSetup, diff_events, replay_inprocess,
                                      split_at_ts_boundary, wait_until, write_lines)
    from tests.test_daemon_kafka import broker, daemon_slice, reference_events  # noqa: F401

from detector.features import NumberState
from detector.replay import publish
from detector.topic_dump import read_events, read_topic

pytestmark = pytest.mark.kafka

# A killed consumer holds its partitions until its session expires; keep that short here.
# (kafka-python names; the confluent backend translates them.)
FAST_SESSION = {"CDR_DETECTOR__KAFKA__CONSUMER_OPTIONS": "{session_timeout_ms: 8000, heartbeat_interval_ms: 2000}"}
CONSUMER_BACKENDS = ["kafka-python", "confluent"]


@pytest.fixture
def setups(broker, consumer_backend):  # noqa: F811
    """Setups and daemons of one test; every consumer (the daemons' and the test's own reads of
    the topics) uses `consumer_backend` ("mixed": kafka-python unless a daemon is given its own)."""
    made: list[KafkaSetup] = []
    procs: list[DaemonProcess] = []
    default = "kafka-python" if consumer_backend == "mixed" else consumer_backend

    def new_setup() -> KafkaSetup:
        s = KafkaSetup(broker, extra=dict(FAST_SESSION, CDR_DETECTOR__KAFKA__CONSUMER_BACKEND=default))
        s.ensure_topics()
        made.append(s)
        return s

    def new_daemon(s: KafkaSetup, log, backend: str | None = None) -> DaemonProcess:
        d = DaemonProcess(s, log, s.env(CDR_DETECTOR__KAFKA__CONSUMER_BACKEND=backend) if backend else None)
        procs.append(d)
        return d.start()

    yield new_setup, new_daemon
    for d in procs:
        d.cleanup()
    for s in made:
        try:
            s.delete()
        except Exception as exc:
            print(f"could not delete test topics: {exc!r}")


def final_number_states(s: KafkaSetup) -> dict[str, dict]:
    """The latest changelog value of every number (what a restore would rebuild)."""
    out: dict[str, dict] = {}
    for msg in read_topic(s.kcfg, f"{s.group_id}.state-changelog"):
        key = msg.key.decode()
        if key.startswith("n:"):
            if msg.value is None:
                out.pop(key[2:], None)
                TOMBSTONES.append((key, msg.partition, msg.offset))
            else:
                out[key[2:]] = NumberState.unpack(msg.value).to_dict()
    return out


TOMBSTONES: list = []


def assert_librdkafka(d: DaemonProcess, consumer_backend: str) -> None:
    """The daemon ran the consumers it was told to (kafka_io logs librdkafka's version once)."""
    uses = "consumers: librdkafka" in d.log_path.read_text(errors="replace")
    assert uses == (consumer_backend == "confluent"), f"the daemon did not use consumer backend {consumer_backend}"


def run_to_end(d: DaemonProcess, timeout: float = 240) -> None:
    d.wait_ready(timeout=60)
    d.wait_caught_up(timeout=timeout)


def stop(d: DaemonProcess) -> None:
    rc = d.terminate(timeout=30)
    assert rc == 0, f"daemon exited with {rc}:\n{d.log_tail()}"


@pytest.mark.parametrize("consumer_backend", CONSUMER_BACKENDS)
def test_kill9_midway_restores_the_same_features_as_an_uninterrupted_run(setups, daemon_slice, reference_events,
                                                                           tmp_path, consumer_backend):
    new_setup, new_daemon = setups
    total = daemon_slice["records"]

    clean = new_setup()
    replay_inprocess(clean, daemon_slice["cdrs"], daemon_slice["subscribers"])
    d = new_daemon(clean, tmp_path / "clean.log")
    run_to_end(d)
    stop(d)
    expected_states = final_number_states(clean)
    assert len(expected_states) > 100

    crash = new_setup()
    # only the first 70% until the kill, so it lands midway however fast the daemon is
    lines = daemon_slice["lines"]
    cut = split_at_ts_boundary(lines, 0.7)
    replay_inprocess(crash, write_lines(tmp_path / "head.jsonl", lines[:cut]), daemon_slice["subscribers"])
    d1 = new_daemon(crash, tmp_path / "crash.log")
    d1.wait_ready(timeout=60)

    def midway():
        d1.assert_alive()
        ok = d1.records_total()["ok"]
        committed = sum(crash.committed_offsets("records").values())
        return ok if ok >= 0.25 * total and committed > 0 else None

    wait_until(midway, 90, "the daemon to be partway through", d1.log_tail, interval=0.05)
    assert d1.kill9() == -9
    replay_inprocess(crash, write_lines(tmp_path / "tail.jsonl", lines[cut:]))
    d2 = new_daemon(crash, tmp_path / "crash.log")
    run_to_end(d2)
    restored = d2.metric("cdr_detector_state_restore_records_total")
    stop(d2)
    assert restored > 0, "the restarted daemon did not restore from the changelog"

    got_events = read_events(crash.kcfg, crash.topics["suspensions"])
    assert got_events == reference_events, diff_events(reference_events, got_events)
    got_states = final_number_states(crash)
    missing = sorted(expected_states.keys() - got_states.keys())
    assert not missing, (f"{len(missing)} numbers missing from the restored state, e.g. "
                         f"{[(m, {k: expected_states[m][k] for k in ('n_mo', 'n_mt', 'applied_offset', 'last_ts')}) for m in missing[:3]]}"
                         f"\ntombstones {TOMBSTONES[:5]} of {len(TOMBSTONES)}\n"
                         + "\n".join(l for l in (tmp_path / "crash.log").read_text().splitlines()
                                     if "cdr_detector.daemon" in l and "decision" not in l))
    assert got_states.keys() == expected_states.keys()
    assert_librdkafka(d2, consumer_backend)
    differing = [m for m in expected_states if got_states[m] != expected_states[m]]
    assert not differing, f"{len(differing)} numbers' restored features differ, e.g. {differing[:3]}"


# "mixed": a kafka-python daemon and a confluent one in one group (switching the backend daemon
# by daemon): both use the eager range/roundrobin assignors, so they share the partitions.
@pytest.mark.parametrize("consumer_backend", CONSUMER_BACKENDS + ["mixed"])
def test_two_daemons_split_the_partitions_and_one_takes_over(setups, daemon_slice, reference_events, tmp_path,
                                                              consumer_backend):
    new_setup, new_daemon = setups
    backend_a, backend_b = (("kafka-python", "confluent") if consumer_backend == "mixed"
                            else (consumer_backend, consumer_backend))
    s = new_setup()
    publish(s.kcfg, s.topics["subscribers"], str(daemon_slice["subscribers"]))
    a = new_daemon(s, tmp_path / "a.log", backend_a)
    a.wait_ready(timeout=60)
    b = new_daemon(s, tmp_path / "b.log", backend_b)

    def split():
        ha, hb = a.healthz() or {}, b.healthz() or {}
        pa, pb = set(ha.get("assigned", [])), set(hb.get("assigned", []))
        return (pa, pb) if pa and pb and not (pa & pb) and len(pa | pb) == 3 else None

    wait_until(split, 90, "the two daemons to split the partitions", b.log_tail, interval=0.2)
    # The records arrive only now, paced over ~40 s of wall time by their own timestamps, so that
    # both daemons work on them and one can be stopped in the middle of the stream.
    lines = daemon_slice["lines"]
    span_s = (orjson.loads(lines[-1])["ts"] - orjson.loads(lines[0])["ts"]) / 1000
    sender = threading.Thread(target=publish, args=(s.kcfg, s.topics["records"], str(daemon_slice["cdrs"])),
                              kwargs={"speed": span_s / 40}, daemon=True)
    sender.start()

    def both_working():
        return a.records_total()["ok"] > 0 and b.records_total()["ok"] > 0

    wait_until(both_working, 120, "both daemons to process records", b.log_tail, interval=0.2)
    stop(a)  # mid-stream: b takes a's partitions and their state
    assert sender.is_alive(), "the replay ended before the daemon could be stopped mid-stream"

    def b_owns_all():
        return set((b.healthz() or {}).get("assigned", [])) == {0, 1, 2}

    wait_until(b_owns_all, 90, "b to take over every partition", b.log_tail, interval=0.2)
    sender.join(timeout=180)
    assert not sender.is_alive()
    run_to_end(b, timeout=300)
    stop(b)

    got = read_events(s.kcfg, s.topics["suspensions"])
    assert got == reference_events, diff_events(reference_events, got)
    assert_librdkafka(a, backend_a)
    assert_librdkafka(b, backend_b)
