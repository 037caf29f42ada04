"""Broker errors that an outage brings are waited out, not fatal — without a broker.

kafka-python 3.0 mostly returns nothing from poll() while the broker is down, but sometimes
raises `KafkaConnectionError` (ECONNREFUSED, from a metadata refresh inside the group
coordinator's poll). A fresh-clone CI run saw the daemon die of that in the middle of
tests/test_broker_faults.py's outage. Stand-in clients raise exactly what the real ones raise:
in poll(), while taking an assignment, and in send() once the producer's buffer is full.
"""
from __future__ import annotations

from collections import deque

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from conftest import load_cfg
from detector.core import Detector
from detector.daemon import Daemon, StopWithoutCommit


class FlakyConsumer:
    """poll() raises the given errors one after the other, then returns `then`."""

    def __init__(self, errors, then):
        self.errors = list(errors)
        self.then = then
        self.polls = 0

    def poll(self, timeout_ms=None, max_records=None):
        self.polls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.then


class Msg:
    def __init__(self, offset, value):
        self.offset, self.value, self.key = offset, value, None


def make_daemon(consumer) -> tuple[Daemon, TopicPartition]:
    d = Daemon(load_cfg(), serve_http=False)
    d.consumer = consumer
    tp = TopicPartition(d.topics["records"], 0)
    d.buffers[tp] = deque()
    return d, tp


def broker_errors(d: Daemon, operation: str) -> float:
    return d.metrics.registry.get_sample_value("cdr_detector_broker_errors_total", {"operation": operation})


def test_connection_refused_in_poll_is_waited_out_and_counted():
    consumer = FlakyConsumer([KafkaConnectionError("111 ECONNREFUSED")] * 3, {})
    d, tp_records = make_daemon(consumer)
    consumer.then = {tp_records: [Msg(7, b"not json")]}
    d.last_loop = 0.0
    for _ in range(3):
        d._poll(timeout_ms=0)  # would raise without the guard
    assert broker_errors(d, "poll") == 3
    assert d.last_loop > 0.0, "waiting on the broker must keep /healthz live"
    assert not d.buffers[tp_records]
    d._poll(timeout_ms=0)  # the broker is back: records flow again
    assert [item.offset for item in d.buffers[tp_records]] == [7]
    assert broker_errors(d, "poll") == 3


def test_a_non_retriable_error_still_stops_the_daemon():
    class Fatal(KafkaError):
        retriable = False

    d, _ = make_daemon(FlakyConsumer([Fatal("authorization failed")], {}))
    with pytest.raises(Fatal):
        d._poll(timeout_ms=0)
    assert broker_errors(d, "poll") == 0


def test_a_waited_out_error_is_logged_once_a_minute(caplog):
    d, _ = make_daemon(FlakyConsumer([KafkaConnectionError("111 ECONNREFUSED")] * 4, {}))
    with caplog.at_level("WARNING", logger="cdr_detector.daemon"):
        for _ in range(4):
            d._poll(timeout_ms=0)
    warnings = [r for r in caplog.records if "broker away" in r.getMessage()]
    assert len(warnings) == 1
    assert broker_errors(d, "poll") == 4


class Seeks:
    """The group consumer and the profiles consumer as `_take_assignment` uses them."""

    def __init__(self):
        self.seeks = {}

    def seek(self, tp, pos):
        self.seeks[tp] = pos

    def committed(self, tp):
        return None

    def seek_to_beginning(self, *tps):
        for tp in tps:
            self.seeks[tp] = 0

    def beginning_offsets(self, tps):
        return {tp: 0 for tp in tps}

    def assign(self, tps):
        self.assigned = list(tps)

    def end_offsets(self, tps):
        return {tp: 0 for tp in tps}

    def position(self, tp):
        return 0


def test_broker_gone_while_taking_an_assignment_puts_it_back_and_retries(monkeypatch):
    d = Daemon(load_cfg(), serve_http=False)
    d.detector = Detector(load_cfg(), partitions=2)
    d.consumer, d.profiles = Seeks(), Seeks()
    tp = TopicPartition(d.topics["records"], 1)
    attempts = []

    def restore(parts):
        attempts.append(list(parts))
        if len(attempts) == 1:
            d.detector.engines[1] = object()  # a half-done restore leaves an engine behind
            raise KafkaConnectionError("111 ECONNREFUSED")
        return {1: {"records": 42}}

    monkeypatch.setattr(d, "_restore", restore)
    d.pending_assigned = {tp}
    d._take_assignment()  # would raise without the guard
    assert broker_errors(d, "assign") == 1
    assert d.pending_assigned == {tp} and 1 not in d.owned and tp not in d.buffers
    assert 1 not in d.detector.engines
    d._take_assignment()
    assert attempts == [[1], [1]], "the retry restores the partition again, from the changelog"
    assert d.owned == {1} and not d.pending_assigned
    assert d.consumer.seeks[tp] == 42 and d.processed[tp] == 42


class FullProducer:
    """send() raises KafkaTimeoutError (waited max_block_ms for room, queued nothing) `full` times."""

    def __init__(self, full: int, on_full=None):
        self.full, self.on_full, self.sent = full, on_full, []

    def send(self, topic, **kw):
        if self.full:
            self.full -= 1
            if self.on_full:
                self.on_full()
            raise KafkaTimeoutError("local queue full for 5 s: the broker is not taking records")
        self.sent.append((topic, kw))
        return ("future", len(self.sent))


def test_a_send_refused_for_a_full_buffer_is_sent_again_once_there_is_room():
    d = Daemon(load_cfg(), serve_http=False)
    d.producer = FullProducer(full=3)
    d.last_loop = 0.0
    d._send("cdr.suspensions", key=b"k", value=b"v")
    assert d.producer.sent == [("cdr.suspensions", {"key": b"k", "value": b"v"})], "sent exactly once"
    assert d.in_flight == [("future", 1)]
    assert broker_errors(d, "send") == 3
    assert d.last_loop > 0.0


def test_a_stop_while_the_buffer_stays_full_exits_without_a_commit():
    d = Daemon(load_cfg(), serve_http=False)
    d.producer = FullProducer(full=10**9, on_full=d.request_stop)
    with pytest.raises(StopWithoutCommit):
        d._send("cdr.suspensions", key=b"k", value=b"v")
    assert not d.producer.sent and not d.in_flight


def test_the_confluent_adapter_gives_up_a_send_after_max_block_ms_with_nothing_queued():
    """Real librdkafka, its broker unreachable: a full local queue makes send() raise after
    max_block_ms (what the daemon's retry relies on) — and wait for as long as it takes without."""
    import time  # confluent-kafka is a test dependency: this runs, never skips

    from detector import kafka_io

    kcfg = {"bootstrap_servers": "127.0.0.1:1", "rdkafka_options": {"queue.buffering.max.messages": 5}}
    p = kafka_io.ConfluentProducer(kcfg, max_block_ms=300)
    for _ in range(5):
        p.send("t", key=b"k", value=b"v")
    t0 = time.monotonic()
    with pytest.raises(KafkaTimeoutError):
        p.send("t", key=b"k", value=b"v")
    assert 0.3 <= time.monotonic() - t0 < 5
    assert len(p._p) == 5, "the refused send was not queued"
    assert kafka_io.ConfluentProducer(kcfg).max_block_s is None  # the replay tools wait forever
