"""Read a topic from the beginning to its current end — for parity checks and tests."""
from __future__ import annotations

import time

import orjson
from kafka import TopicPartition

from . import kafka_io


def read_topic(kcfg: dict, topic: str, timeout_s: float = 60.0) -> list:
    """Every message now in `topic`, partition by partition: kafka-python ConsumerRecords, or
    kafka_io.ConsumerRecords (the same fields) with kafka.consumer_backend confluent."""
    c = kafka_io.consumer(kcfg, group=False)
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out = []
        deadline = time.monotonic() + timeout_s
        while any(c.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took longer than {timeout_s}s")
            for msgs in c.poll(timeout_ms=500, max_records=10000).values():
                out.extend(msgs)
        return out
    finally:
        c.close(autocommit=False)


def read_events(kcfg: dict, topic: str) -> dict[str, dict]:
    """Suspension events by event_id (repeats dropped, as the contract lets consumers do)."""
    return {e["event_id"]: e for e in (orjson.loads(m.value) for m in read_topic(kcfg, topic))}
