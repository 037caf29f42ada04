"""A retriable broker error raised by poll() is waited out, not fatal — without a broker.

kafka-python 3.0 mostly returns nothing from poll() while the broker is down, but sometimes
raises `KafkaConnectionError` (ECONNREFUSED, from a metadata refresh inside the group
coordinator's poll). A fresh-clone CI run saw the daemon die of that in the middle of
tests/test_broker_faults.py's outage. A stand-in consumer raises exactly that here.
"""
from __future__ import annotations

from collections import deque

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaConnectionError, KafkaError

from conftest import load_cfg
from detector.core import Detector
from detector.daemon import Daemon


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
    warnings = [r for r in caplog.records if "broker unreachable" in r.getMessage()]
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
