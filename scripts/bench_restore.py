#!/usr/bin/env python3
"""Changelog size and restore time for a large state, on the local broker.

    scripts/bench_restore.py [--numbers 1000000] [--partitions 3] [--bootstrap-servers 127.0.0.1:9092]

Builds per-number state through the real feature code (each number gets a few outgoing and
incoming calls), writes it to a fresh compacted changelog topic exactly as the daemon does
(`state.drain_changes`), then restores it as the daemon does on assignment (`Daemon._restore`'s
loop: read each partition to its end, `state.apply_change`), and reports bytes and seconds.
"""
from __future__ import annotations

import argparse
import os
import time
import uuid

from kafka import TopicPartition
from kafka.admin import NewTopic

from detector import config, kafka_io, state
from detector.contract import CDR
from detector.core import Detector
from detector.shared import NO_FACTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--numbers", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    a = ap.parse_args()
    cfg = config.load(overrides={"kafka": {"bootstrap_servers": a.bootstrap_servers, "partitions": a.partitions}})
    k = cfg["kafka"]
    det = Detector(cfg, a.partitions, track_changes=True)
    t0 = time.perf_counter()
    ts0 = 1_784_000_000_000
    for i in range(a.numbers):
        m = f"13{i:09d}"
        eng = det.engine(m)
        for j in range(4):
            eng.on_record(CDR(f"b{i}-{j}", ts0 + i * 10 + j * 60_000, m, "MO" if j < 3 else "MT",
                              f"15{(i * 7 + j) % 10**9:09d}", "voice", 60, True, f"c{i % 50000}", "GD-SZ",
                              "GD-GZ" if j else "HN", f"86{i:013d}"), NO_FACTS)
    build_s = time.perf_counter() - t0
    topic = f"bench-changelog-{uuid.uuid4().hex[:8]}"
    admin = kafka_io.KafkaAdminClient(**kafka_io.common(k))
    admin.create_topics([NewTopic(topic, a.partitions, 1, topic_configs={"cleanup.policy": "compact"})])
    prod = kafka_io.producer(k)
    t0 = time.perf_counter()
    nbytes = nrec = 0
    for p in range(a.partitions):
        for key, value in state.drain_changes(det, p, {"records": 0}):
            prod.send(topic, key=key, value=value, partition=p)
            nbytes += len(key) + len(value or b"")
            nrec += 1
    prod.flush()
    write_s = time.perf_counter() - t0
    prod.close()

    fresh = Detector(cfg, a.partitions)
    c = kafka_io.consumer(k, group=False)
    tps = [TopicPartition(topic, p) for p in range(a.partitions)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    end = c.end_offsets(tps)
    t0 = time.perf_counter()
    restored = 0
    while any(c.position(tp) < end[tp] for tp in tps):
        for tp, msgs in c.poll(timeout_ms=500, max_records=20000).items():
            for msg in msgs:
                state.apply_change(fresh, tp.partition, msg.key, msg.value)
                restored += 1
    restore_s = time.perf_counter() - t0
    c.close()
    assert fresh.numbers_tracked() == a.numbers, (fresh.numbers_tracked(), a.numbers)
    admin.delete_topics([topic])
    admin.close()
    print(f"numbers {a.numbers:,}  partitions {a.partitions}  (machine: {os.cpu_count()} cores)")
    print(f"build state through the core: {build_s:.1f} s")
    print(f"changelog: {nrec:,} records, {nbytes / 1e6:.1f} MB of keys+values "
          f"({nbytes / a.numbers:.0f} B per number), written in {write_s:.1f} s")
    print(f"restore: {restored:,} records in {restore_s:.1f} s ({restored / restore_s:,.0f} records/s)")


if __name__ == "__main__":
    main()
