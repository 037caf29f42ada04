"""The daemon's merge of its input partitions in event time, without a broker.

The merge is pure bookkeeping over the daemon's per-partition buffers; it asks the consumer only
where each partition stands (`highwater`, `position`). A stand-in answers those two questions
here, so the rules can be checked exactly: wait `max_task_idle_ms` for a partition that is behind,
then run the others ahead of it, but never more than the allowed lateness ahead of its last
record, until `max_skew_wait_ms` more has passed.
"""
from __future__ import annotations

from collections import deque

import pytest
from kafka import TopicPartition

from conftest import HOUR, MINUTE, T0, Stream, load_cfg
from detector import daemon as daemon_mod
from detector.core import Detector
from detector.daemon import Daemon, Item


class Positions:
    """Where each partition stands: the consumer's answers the merge relies on, and nothing else."""

    def __init__(self):
        self.hw: dict[TopicPartition, int] = {}
        self.pos: dict[TopicPartition, int] = {}

    def highwater(self, tp):
        return self.hw.get(tp)

    def position(self, tp):
        return self.pos[tp]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(daemon_mod.time, "monotonic", c.monotonic)
    return c


def make_daemon(**over) -> tuple[Daemon, list[TopicPartition]]:
    cfg = load_cfg(**{"kafka.max_task_idle_ms": 2000, "kafka.max_skew_wait_ms": 30_000, **over})
    d = Daemon(cfg, serve_http=False)
    d.detector = Detector(cfg, partitions=2)
    d.owned = {0, 1}  # every partition is ours: no shared facts to wait for
    d.consumer = Positions()
    tps = [TopicPartition(d.topics["records"], p) for p in (0, 1)]
    for tp in tps:
        d.buffers[tp] = deque()
    return d, tps


def push(d: Daemon, tp: TopicPartition, ts: int, offset: int, rid: str) -> None:
    rec = Stream().rec(msisdn="13800000001", ts=ts)
    d.buffers[tp].append(Item((ts, 1, rid), offset, rec, b"", None))


def next_tp(d: Daemon):
    d._caught_cache = {}
    return d._next_tp()


def behind(d: Daemon, tp: TopicPartition, last_ts: int) -> None:
    """tp has processed up to last_ts, its buffer is empty, and the broker holds more of it."""
    d.last_ts[tp.partition] = last_ts
    d.consumer.pos[tp] = 10
    d.consumer.hw[tp] = 20


def test_partitions_are_merged_in_event_time(clock):
    d, (a, b) = make_daemon()
    push(d, a, T0 + 2 * MINUTE, 0, "a0")
    push(d, b, T0 + MINUTE, 0, "b0")
    assert next_tp(d) == b


def test_an_empty_partition_behind_is_waited_for_then_merged_past_within_the_lateness(clock):
    d, (a, b) = make_daemon()
    lateness = d.detector.lateness_ms
    behind(d, b, T0)
    push(d, a, T0 + lateness // 2, 0, "a0")
    assert next_tp(d) is None, "within max_task_idle_ms the merge waits for the partition behind"
    clock.now += 2.5
    assert next_tp(d) == a, "past max_task_idle_ms, a record within the lateness goes ahead"


def test_the_merge_never_runs_further_than_the_lateness_ahead_of_a_partition_behind(clock):
    d, (a, b) = make_daemon()
    lateness = d.detector.lateness_ms
    behind(d, b, T0)
    push(d, a, T0 + lateness + 1, 0, "a0")
    assert next_tp(d) is None
    clock.now += 2.5
    assert next_tp(d) is None, "one millisecond past the lateness ahead of the laggard: it waits"
    clock.now += 20
    assert next_tp(d) is None
    # the laggard's next records arrive and are processed: the bound moves with it
    push(d, b, T0 + 2 * MINUTE, 10, "b10")
    assert next_tp(d) == b
    d.buffers[b].popleft()
    d.last_ts[b.partition] = T0 + 2 * MINUTE
    d.consumer.pos[b] = 11
    assert next_tp(d) is None, "empty and behind again: max_task_idle_ms starts over"
    clock.now += 2.5
    assert next_tp(d) == a, "within the lateness of the laggard's new last record"
    assert d.metrics.skew_wait_timeouts._value.get() == 0


def test_a_laggard_that_never_comes_is_merged_past_after_max_skew_wait_ms(clock, caplog):
    d, (a, b) = make_daemon()
    behind(d, b, T0)
    push(d, a, T0 + 3 * HOUR, 0, "a0")
    push(d, a, T0 + 4 * HOUR, 1, "a1")
    assert next_tp(d) is None
    clock.now += 2.5
    assert next_tp(d) is None, "past max_task_idle_ms, max_skew_wait_ms starts"
    clock.now += 29
    assert next_tp(d) is None
    clock.now += 2
    with caplog.at_level("WARNING", logger=daemon_mod.log.name):
        assert next_tp(d) == a
    assert d.metrics.skew_wait_timeouts._value.get() == 1
    assert any("gave up waiting" in r.getMessage() for r in caplog.records)
    d.buffers[a].popleft()
    assert next_tp(d) == a, "once given up, the merge does not wait again for the same laggard"
    assert d.metrics.skew_wait_timeouts._value.get() == 1


def test_a_caught_up_partition_holds_nothing_back(clock):
    d, (a, b) = make_daemon()
    d.last_ts[b.partition] = T0
    d.consumer.pos[b] = d.consumer.hw[b] = 20  # empty because there is nothing more to read
    push(d, a, T0 + 5 * HOUR, 0, "a0")
    assert next_tp(d) == a


def test_a_partition_with_nothing_processed_yet_is_waited_for_only_max_task_idle_ms(clock):
    d, (a, b) = make_daemon()
    d.consumer.pos[b], d.consumer.hw[b] = 0, 20  # behind, but no record of it processed: no bound known
    push(d, a, T0 + 5 * HOUR, 0, "a0")
    assert next_tp(d) is None
    clock.now += 2.5
    assert next_tp(d) == a, "no bound without a last record of the laggard: only max_task_idle_ms"
