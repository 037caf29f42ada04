"""The consumer backends on the real broker: kafka-python's KafkaConsumer and the confluent-kafka
(librdkafka) adapter `kafka_io.ConfluentConsumer` must behave alike where the daemon relies on it.

Most tests run against both backends, so a difference in semantics (position after a seek,
records after a pause, where a group member starts) fails here rather than in a daemon test.
The librdkafka pitfalls are covered explicitly: a seek right after an assignment (librdkafka
refuses it until the partition is fetched), a seek from inside the rebalance callback, records
prefetched before a pause, the end offset past a transaction marker (no record there).
"""
from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest
from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

try:
    from kafka_broker import ensure_broker, unique_topic
except ImportError:  # pragma: no cover
    from tests.kafka_broker import ensure_broker, unique_topic

from detector import kafka_io

pytestmark = pytest.mark.kafka
ck = pytest.importorskip("confluent_kafka")

PARTS = 3
PER_PARTITION = 500
BOTH = ["kafka-python", "confluent"]


@pytest.fixture(scope="module")
def broker() -> str:
    return ensure_broker()


@pytest.fixture
def topic(broker):
    name = unique_topic("consumer-backend")
    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        admin.create_topics([NewTopic(name, PARTS, 1)])
        yield name
        admin.delete_topics([name])
    finally:
        admin.close()


def settings(broker: str, backend: str, **more) -> dict:
    k = {"bootstrap_servers": broker, "group_id": f"cb-{uuid.uuid4().hex[:10]}", "client_id": "consumer-backend-test",
         "consumer_backend": backend, "max_poll_records": 200}
    k.update(more)
    return k


def value(p: int, i: int) -> bytes:
    return f"p{p}-r{i}".encode()


def produce(broker: str, topic: str, n: int = PER_PARTITION, start: int = 0) -> None:
    """n records into every partition: value p{p}-r{i}, key k{i}, a header on every 7th."""
    p = ck.Producer({"bootstrap.servers": broker, "linger.ms": 5})
    for part in range(PARTS):
        for i in range(start, start + n):
            headers = [("h", str(i).encode())] if i % 7 == 0 else None
            p.produce(topic, value(part, i), f"k{i}".encode(), partition=part, headers=headers)
        p.poll(0)
    assert p.flush(30) == 0


def tps_of(topic: str, parts=range(PARTS)) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in parts]


def drain(c, tps, end: dict, timeout: float = 30) -> dict[TopicPartition, list]:
    """poll() until position(tp) >= end[tp] for every tp (as the daemon's restore loops do)."""
    got: dict[TopicPartition, list] = {tp: [] for tp in tps}
    deadline = time.monotonic() + timeout
    while any(c.position(tp) < end[tp] for tp in tps):
        assert time.monotonic() < deadline, {tp: (c.position(tp), end[tp]) for tp in tps}
        for tp, recs in c.poll(timeout_ms=200).items():
            got.setdefault(tp, []).extend(recs)
    return got


def offsets(recs) -> list[int]:
    return [r.offset for r in recs]


# -- selection and settings -------------------------------------------------------------------------
def test_the_setting_selects_the_backend(broker):
    k = settings(broker, "confluent")
    c = kafka_io.consumer(k, group=False)
    try:
        assert isinstance(c, kafka_io.ConfluentConsumer)
    finally:
        c.close()
    c = kafka_io.consumer(settings(broker, "kafka-python"), group=False)
    try:
        assert isinstance(c, KafkaConsumer)
    finally:
        c.close()
    k.pop("consumer_backend")
    c = kafka_io.consumer(k, group=False)  # the default
    try:
        assert isinstance(c, KafkaConsumer)
    finally:
        c.close()
    with pytest.raises(ValueError, match="consumer_backend"):
        kafka_io.consumer(settings(broker, "librdkafka"))


def test_kafka_python_consumer_options_are_translated_or_refused(broker):
    c = kafka_io.consumer(settings(broker, "confluent", consumer_options={
        "session_timeout_ms": 8000, "heartbeat_interval_ms": 2000, "max_poll_records": 17}))
    try:
        assert c._max_records == 17
    finally:
        c.close()
    with pytest.raises(ValueError, match="rdkafka_consumer_options"):
        kafka_io.consumer(settings(broker, "confluent", consumer_options={"no_such_setting_ms": 1}))
    with pytest.raises(ck.KafkaException):  # librdkafka validates its own properties
        kafka_io.consumer(settings(broker, "confluent", rdkafka_consumer_options={"no.such.property": 1}))
    # a group-less reader ignores the group consumer's options, as with kafka-python
    kafka_io.consumer(settings(broker, "confluent", consumer_options={"no_such_setting_ms": 1}), group=False).close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_librdkafka_log_lines_go_through_python_logging_not_stderr(caplog, capfd):
    """An operator's log pipeline reads the daemon's JSON lines: librdkafka's own lines (here:
    connection refused) must be among them, not raw syslog-style text on stderr."""
    dead = f"127.0.0.1:{free_port()}"
    k = {"bootstrap_servers": dead, "group_id": "dead-broker", "client_id": "log-test",
         "consumer_backend": "confluent", "producer_backend": "confluent"}
    with caplog.at_level("INFO", logger=kafka_io.rdkafka_log.name):
        c = kafka_io.consumer(k)
        p = kafka_io.producer(k)
        try:
            c.subscribe([unique_topic("dead")])
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not caplog.records:
                c.poll(timeout_ms=200)
                p.send("dead-topic", value=b"x")
                p._p.poll(0.1)
        finally:
            c.close()
            p._p.purge()
    lines = [r for r in caplog.records if r.name == kafka_io.rdkafka_log.name]
    assert lines, "no librdkafka line reached Python logging within 20 s"
    assert any(dead in r.getMessage() for r in lines), [r.getMessage() for r in lines][:5]
    assert dead not in capfd.readouterr().err, "librdkafka still writes to stderr itself"


def test_offset_requests_share_one_admin_client_released_with_the_last_consumer(broker, topic):
    """Offsets are asked on an admin client's connections, not behind the consumer's long-polling
    fetch (the broker answers a connection's requests in order): fast even while fetching."""
    produce(broker, topic, n=10)
    k = settings(broker, "confluent")
    a, b = kafka_io.consumer(k, group=False), kafka_io.consumer(k, group=False)
    tps = tps_of(topic)
    try:
        a.assign(tps)
        a.seek_to_beginning(*tps)
        drain(a, tps, a.end_offsets(tps))
        a.poll(timeout_ms=100)  # its fetch now waits at the broker for new records
        t0 = time.perf_counter()
        assert b.end_offsets(tps) == a.end_offsets(tps) == {tp: 10 for tp in tps}
        assert time.perf_counter() - t0 < 0.4, "offset requests waited behind a fetch"
        assert a._admin_client is b._admin_client is not None
    finally:
        a.close()
        assert kafka_io._admins, "released while a consumer still uses it"
        b.close()
    assert not kafka_io._admins


# -- manual assignment ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BOTH)
def test_poll_returns_every_record_once_with_its_fields(broker, topic, backend):
    produce(broker, topic)
    c = kafka_io.consumer(settings(broker, backend), group=False)
    try:
        assert c.partitions_for_topic(topic) == set(range(PARTS))
        assert not c.partitions_for_topic(unique_topic("missing"))  # None (librdkafka) or set() (kafka-python)
        tps = tps_of(topic)
        c.assign(tps[:2])
        if backend == "confluent":  # never fetched: unknown, not 0
            assert c.highwater(tps[2]) is None
        c.assign(tps)
        c.seek_to_beginning(*tps)
        assert c.beginning_offsets(tps) == {tp: 0 for tp in tps}
        end = c.end_offsets(tps)
        assert end == {tp: PER_PARTITION for tp in tps}
        got = drain(c, tps, end)
        for tp in tps:
            recs = got[tp]
            assert offsets(recs) == list(range(PER_PARTITION)), f"{tp}: records missing or repeated"
            assert [r.value for r in recs] == [value(tp.partition, i) for i in range(PER_PARTITION)]
            assert [r.key for r in recs] == [f"k{i}".encode() for i in range(PER_PARTITION)]
            assert all(r.topic == topic and r.partition == tp.partition for r in recs)
            assert all(isinstance(r.timestamp, int) and r.timestamp > 1e12 for r in recs)
            assert [list(r.headers or []) for r in recs[:8]] == [[("h", b"0")]] + [[]] * 6 + [[("h", b"7")]]
            assert c.position(tp) == PER_PARTITION
            assert c.highwater(tp) == PER_PARTITION
        assert all(type(tp) is TopicPartition for tp in got)
        assert c.poll(timeout_ms=300) == {}
    finally:
        c.close()


@pytest.mark.parametrize("backend", BOTH)
def test_seek_right_after_assign_and_back_again(broker, topic, backend):
    """librdkafka refuses a seek until the partition is fetched; the adapter must still start
    exactly where it was told, and a seek back must not return stale records of the old fetch."""
    produce(broker, topic)
    c = kafka_io.consumer(settings(broker, backend), group=False)
    try:
        tps = tps_of(topic)
        c.assign(tps)
        starts = {tps[0]: 123, tps[1]: 0, tps[2]: PER_PARTITION - 1}
        for tp, off in starts.items():
            c.seek(tp, off)
            assert c.position(tp) == off
        end = c.end_offsets(tps)
        got = drain(c, tps, end)
        for tp, off in starts.items():
            assert offsets(got[tp]) == list(range(off, PER_PARTITION)), tp
        # back to 10 while everything is read (librdkafka may hold nothing or prefetched data)
        c.seek(tps[0], 10)
        assert c.position(tps[0]) == 10
        got = drain(c, tps, end)
        assert offsets(got[tps[0]]) == list(range(10, PER_PARTITION))
        assert not got[tps[1]] and not got[tps[2]]
        # and a seek in the middle of reading: nothing of the superseded fetch comes back
        c.seek(tps[1], 0)
        first = {}
        while not first.get(tps[1]):
            for tp, recs in c.poll(timeout_ms=200, max_records=50).items():
                first.setdefault(tp, []).extend(recs)
        c.seek(tps[1], 400)
        rest = drain(c, tps, end)
        assert offsets(first[tps[1]]) == list(range(len(first[tps[1]])))
        assert offsets(rest[tps[1]]) == list(range(400, PER_PARTITION))
    finally:
        c.close()


@pytest.mark.parametrize("backend", [
    pytest.param("kafka-python", marks=pytest.mark.xfail(
        strict=True, reason="LIMITATION of kafka-python 3.0.12: a manually assigned partition paused while "
                            "records fetched for it are still buffered is never fetched again after resume() "
                            "(paused at its end, as the daemon pauses shared-facts partitions, it resumes fine)")),
    "confluent"])
def test_paused_partition_returns_nothing_and_resumes_where_it_stopped(broker, topic, backend):
    produce(broker, topic)
    c = kafka_io.consumer(settings(broker, backend), group=False)
    try:
        tps = tps_of(topic, (0, 1))
        c.assign(tps)
        c.seek_to_beginning(*tps)
        got: dict[TopicPartition, list] = {tp: [] for tp in tps}
        while len(got[tps[0]]) < 20:
            for tp, recs in c.poll(timeout_ms=200, max_records=10).items():
                got[tp].extend(recs)
        time.sleep(0.5)  # librdkafka prefetches the rest of partition 0 meanwhile
        c.pause(tps[0])
        assert c.paused() == {tps[0]}
        at_pause = c.position(tps[0])
        assert at_pause == len(got[tps[0]])
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            for tp, recs in c.poll(timeout_ms=100).items():
                assert tp != tps[0], "records of a paused partition"
                got[tp].extend(recs)
        assert c.position(tps[0]) == at_pause
        assert len(got[tps[1]]) == PER_PARTITION, "the other partition stopped too"
        c.resume(tps[0])
        assert not c.paused()
        end = c.end_offsets(tps)
        for tp, recs in drain(c, tps, end, timeout=10).items():
            got[tp].extend(recs)
        for tp in tps:
            assert offsets(got[tp]) == list(range(PER_PARTITION)), f"{tp}: skipped or repeated across the pause"
    finally:
        c.close()


@pytest.mark.parametrize("backend", BOTH)
def test_position_reaches_the_end_past_a_transaction_marker(broker, topic, backend):
    """The last offset of a partition can hold no record (a transaction's commit marker here;
    compaction leaves such gaps too): position() must still reach end_offsets, or every
    "read to the end" loop (state restore, shared facts) would spin forever."""
    p = ck.Producer({"bootstrap.servers": broker, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, value(0, i), partition=0)
    p.commit_transaction(30)
    c = kafka_io.consumer(settings(broker, backend), group=False)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        end = c.end_offsets([tp])
        assert end[tp] == 11, "expected ten records and a commit marker"
        got = drain(c, [tp], end, timeout=20)
        assert offsets(got[tp]) == list(range(10))
        assert c.position(tp) == 11
    finally:
        c.close()


# -- the group's consumer ---------------------------------------------------------------------------
class Listener(ConsumerRebalanceListener):
    def __init__(self, consumer=None, seek_to: int | None = None):
        self.consumer = consumer
        self.seek_to = seek_to
        self.assigned: list[list] = []
        self.revoked: list[list] = []
        self.lost: list[list] = []

    def on_partitions_assigned(self, assigned):
        assert all(type(tp) is TopicPartition for tp in assigned)
        self.assigned.append(sorted(assigned))
        if self.seek_to is not None:
            for tp in assigned:
                self.consumer.seek(tp, self.seek_to)

    def on_partitions_revoked(self, revoked):
        assert all(type(tp) is TopicPartition for tp in revoked)
        self.revoked.append(sorted(revoked))

    def on_partitions_lost(self, lost):
        self.lost.append(sorted(lost))


def subscribe(c, topic: str, listener) -> None:
    """Subscribe as the daemon does: only once the consumer knows the topic's partitions.

    kafka-python 3.0.12 joining before it has the topic's metadata is assigned nothing, then
    rejoins when the metadata arrives; if a poll() times out while that second join is in
    flight, the leader's assignment inside it clears need_rejoin() and the join's result is
    never applied: the member stays assigned nothing (seen here 1 run in 25). The daemon asks
    for every topic's partitions before it subscribes (`Daemon._partition_count`), and so
    waits here: right after its creation a topic may have no leaders yet."""
    deadline = time.monotonic() + 30
    while not c.partitions_for_topic(topic):
        assert time.monotonic() < deadline, f"topic {topic} unknown to the consumer"
        time.sleep(0.2)
    c.subscribe([topic], listener=listener)


def poll_until(consumers, pred, timeout: float = 60, got: dict | None = None):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        for c in consumers:
            for tp, recs in c.poll(timeout_ms=100).items():
                if got is not None:
                    got.setdefault(tp, []).extend(recs)


@pytest.mark.parametrize("backend", BOTH)
def test_group_member_seeks_after_the_assignment_and_commits(broker, topic, backend):
    """What the daemon does: subscribe, poll until assigned, seek every new partition to the
    state's position right after poll() returns, commit synchronously; the next member of the
    group starts at the committed offsets."""
    produce(broker, topic, n=200)
    k = settings(broker, backend)
    tps = tps_of(topic)
    c = kafka_io.consumer(k)
    lst = Listener()
    try:
        subscribe(c, topic, lst)
        poll_until([c], lambda: c.assignment() == set(tps))
        assert [a for a in lst.assigned if a] == [tps]
        for tp in tps:
            assert c.committed(tp) is None
            c.seek(tp, 50)
        got = drain(c, tps, c.end_offsets(tps))
        for tp in tps:
            assert offsets(got[tp]) == list(range(50, 200)), tp
        c.commit({tps[0]: OffsetAndMetadata(120, "", -1), tps[1]: OffsetAndMetadata(200, "", -1)})
        assert c.committed(tps[0]) == 120 and c.committed(tps[1]) == 200 and c.committed(tps[2]) is None
    finally:
        c.close(autocommit=False)
    assert lst.revoked and lst.revoked[-1] == tps, "close() revokes what was assigned (as kafka-python does)"

    c = kafka_io.consumer(k)
    lst = Listener()
    got: dict = {}
    try:
        subscribe(c, topic, lst)
        poll_until([c], lambda: all(got.get(tp) for tp in (tps[0], tps[2])), got=got)
        assert got[tps[0]][0].offset == 120, "did not start at the committed offset"
        assert got[tps[2]][0].offset == 0, "without a commit a partition is read from its beginning"
        assert tps[1] not in got
    finally:
        c.close(autocommit=False)


@pytest.mark.parametrize("backend", BOTH)
def test_seek_inside_the_assignment_callback(broker, topic, backend):
    """librdkafka has not assigned the partitions yet when the callback runs: the adapter keeps
    the seek pending and drops what is fetched before it takes effect."""
    produce(broker, topic, n=100)
    c = kafka_io.consumer(settings(broker, backend))
    lst = Listener(c, seek_to=30)
    tps = tps_of(topic)
    try:
        subscribe(c, topic, lst)
        got: dict = {}
        poll_until([c], lambda: all(len(got.get(tp, ())) >= 70 for tp in tps), got=got)
        for tp in tps:
            assert offsets(got[tp]) == list(range(30, 100)), tp
            assert c.position(tp) == 100
    finally:
        c.close()


@pytest.mark.parametrize("backend", ["confluent"])  # kafka-python's side: tests/test_state_kafka.py (two daemons)
def test_two_members_split_the_partitions_and_hand_them_back(broker, topic, backend):
    """A second member joins: the first is told of the revocation, each then reads only its
    own partitions (the adapter drops records of revoked ones), and the survivor gets all back."""
    k = settings(broker, backend, consumer_options={"session_timeout_ms": 10000, "heartbeat_interval_ms": 1000})
    tps = set(tps_of(topic))
    a, b = kafka_io.consumer(k), kafka_io.consumer(k)
    la, lb = Listener(), Listener()
    try:
        subscribe(a, topic, la)
        poll_until([a], lambda: a.assignment() == tps)
        subscribe(b, topic, lb)
        poll_until([a, b], lambda: a.assignment() and b.assignment() and a.assignment() | b.assignment() == tps
                   and not a.assignment() & b.assignment(), timeout=90)
        assert la.revoked, "the first member was not told of the revocation"
        mine_a, mine_b = a.assignment(), b.assignment()
        for c in (a, b):
            for tp in c.assignment():
                c.seek_to_beginning(tp)
        produce(broker, topic, n=50)
        got_a: dict = {}
        got_b: dict = {}
        deadline = time.monotonic() + 30
        while sum(len(v) for v in (*got_a.values(), *got_b.values())) < 50 * len(tps):
            assert time.monotonic() < deadline
            for c, got in ((a, got_a), (b, got_b)):
                for tp, recs in c.poll(timeout_ms=100).items():
                    got.setdefault(tp, []).extend(recs)
        assert set(got_a) == mine_a and set(got_b) == mine_b, "records of partitions the member does not own"
        assert all(offsets(v) == list(range(50)) for v in (*got_a.values(), *got_b.values()))
        b.close()
        poll_until([a], lambda: a.assignment() == tps, timeout=60)
    finally:
        a.close()
        b.close()


# -- commit errors (confluent only: librdkafka's error codes) ----------------------------------------
class _CommitFails:
    """Wraps the librdkafka consumer: commit() raises `code` `times` times, then works."""

    def __init__(self, inner, code: int, times: int = 1):
        self.inner, self.code, self.times, self.calls = inner, code, times, []

    def commit(self, **kw):
        self.calls.append(kw["offsets"])
        if self.times:
            self.times -= 1
            raise ck.KafkaException(ck.KafkaError(self.code))
        return self.inner.commit(**kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_commit_refused_by_a_rebalance_is_retried_with_the_next_commit(broker, topic):
    produce(broker, topic, n=10)
    c = kafka_io.consumer(settings(broker, "confluent"))
    tps = tps_of(topic)
    real = c._c
    try:
        lst = Listener()
        subscribe(c, topic, lst)
        poll_until([c], lambda: lst.assigned)
        c._c = _CommitFails(real, ck.KafkaError.REBALANCE_IN_PROGRESS)
        c.commit({tps[0]: OffsetAndMetadata(5, "", -1)})  # refused: no error, kept for later
        assert c.committed(tps[0]) is None
        c.commit({tps[1]: OffsetAndMetadata(7, "", -1)})
        assert len(c._c.calls) == 2 and {p.partition for p in c._c.calls[1]} == {0, 1}
        assert c.committed(tps[0]) == 5 and c.committed(tps[1]) == 7

        c._c = _CommitFails(real, ck.KafkaError._TRANSPORT)
        with pytest.raises(KafkaError) as exc:
            c.commit({tps[2]: OffsetAndMetadata(3, "", -1)})
        assert exc.value.retriable, "a transport error is worth retrying (the daemon retries those)"
        c.commit({tps[2]: OffsetAndMetadata(3, "", -1)})
        assert c.committed(tps[2]) == 3

        c._c = _CommitFails(real, ck.KafkaError.GROUP_AUTHORIZATION_FAILED)
        with pytest.raises(KafkaError) as exc:
            c.commit({tps[2]: OffsetAndMetadata(4, "", -1)})
        assert not exc.value.retriable
    finally:
        c._c = real
        c.close()


def test_highwater_from_another_thread_while_polling(broker, topic):
    """/healthz reads highwater() on the HTTP thread while the main thread is inside poll(): it
    must answer at once (a call into the librdkafka handle from a second thread waits until the
    first thread's poll() returns, and the HTTP client gives up after 3 s)."""
    produce(broker, topic, n=100)
    c = kafka_io.consumer(settings(broker, "confluent"), group=False)
    tps = tps_of(topic)
    c.assign(tps)
    c.seek_to_beginning(*tps)
    seen, errors = [], []
    stop = threading.Event()

    slowest = [0.0]

    def reader():
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                seen.append(tuple(c.highwater(tp) for tp in tps))
            except Exception as exc:  # noqa: BLE001 - any error fails the test
                errors.append(exc)
                return
            slowest[0] = max(slowest[0], time.perf_counter() - t0)
            time.sleep(0.001)

    t = threading.Thread(target=reader)
    t.start()
    try:
        drain(c, tps, c.end_offsets(tps))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            c.poll(timeout_ms=500)
    finally:
        stop.set()
        t.join(10)
        c.close()
    assert not errors, errors
    assert slowest[0] < 0.1, f"highwater() from another thread took {slowest[0]:.3f} s"
    distinct = [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]
    assert seen and seen[-1] == (100, 100, 100), distinct[:20]


def test_the_confluent_producer_reports_a_refused_send_at_the_flush_that_settles_it(broker, topic):
    """The daemon never commits past a send the broker refused. The confluent adapter settles
    every send between two flushes on one shared future: a send the broker refuses (here a
    record over its 1 MB limit) marks that future failed, and the next flush starts a clean one."""
    p = kafka_io.ConfluentProducer({"bootstrap_servers": broker, "rdkafka_options": {"message.max.bytes": 5_000_000}})
    ok = p.send(topic, key=b"k", value=b"small", partition=0)
    p.flush(30)
    assert not ok.failed()
    good = p.send(topic, key=b"k", value=b"small", partition=1)
    bad = p.send(topic, key=b"k", value=b"x" * 2_000_000, partition=1)
    p.flush(30)
    assert bad.failed() and good.failed(), "one refusal fails everything sent since the last flush"
    assert isinstance(bad.exception, KafkaError) and "large" in str(bad.exception).lower()
    after = p.send(topic, key=b"k", value=b"small", partition=2)
    p.flush(30)
    assert not after.failed() and bad.failed()
    p.close(10)
