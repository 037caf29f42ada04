"""Offline runs of the core over recorded files, in the order production would see them.

Records are taken in event-time order with ties broken by `record_id` — the same order the daemon
reconstructs when it merges its partitions — and verification outcomes are interleaved by time.
"""
from __future__ import annotations

import heapq
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import orjson

from .contract import CDR, InvalidRecord
from .core import Detector, public
from .files import JsonlWriter, iter_lines
from .pipeline import Pipeline

log = logging.getLogger("cdr_detector")


def _record_id(rec: CDR) -> str:
    return rec.record_id


def ordered_records(pipeline: Pipeline, lines: Iterable[tuple[int, bytes]],
                    on_invalid: Callable[[int, bytes, InvalidRecord], None] | None = None) -> Iterator[CDR]:
    """Parse lines and yield records; equal timestamps come out sorted by record_id."""
    parse = pipeline.parse
    held = None  # the last record, not yielded yet: the next may share its timestamp
    ties: list[CDR] | None = None  # `held` and the records after it with the same timestamp
    for n, line in lines:
        rec = parse(line)
        if type(rec) is not CDR:
            if on_invalid:
                on_invalid(n, line, rec)
            continue
        if held is not None:
            if rec.ts == held.ts:
                if ties is None:
                    ties = [held]
                ties.append(rec)
                continue
            if ties is not None:
                ties.sort(key=_record_id)
                yield from ties
                ties = None
            else:
                yield held
        held = rec
    if ties is not None:
        ties.sort(key=_record_id)
        yield from ties
    elif held is not None:
        yield held


def load_outcomes(path: str) -> list[tuple[int, bytes]]:
    out = []
    for _, line in iter_lines(path):
        try:
            ts = int(orjson.loads(line)["ts"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            ts = 0
        out.append((ts, line))
    out.sort(key=lambda x: x[0])
    return out


@dataclass
class RunResult:
    events: list[dict] = field(default_factory=list)
    records: int = 0
    first_ts: int = 0
    last_ts: int = 0
    seconds: float = 0.0


class Progress:
    """A line on stderr every few seconds: how far, how fast."""

    def __init__(self, enabled: bool, every_s: float = 2.0, stream=sys.stderr):
        self.enabled = enabled
        self.every_s = every_s
        self.stream = stream
        self.start = time.monotonic()
        self.next = self.start + every_s

    def tick(self, records: int, events: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + self.every_s
        rate = records / max(1e-9, now - self.start)
        print(f"  {records:>10,} records  {events:>6,} events  {rate:,.0f} records/s", file=self.stream, flush=True)


def run(pipeline: Pipeline, records: Iterable[CDR], outcomes: list[tuple[int, bytes]] | None = None,
        sink: Callable[[dict], None] | None = None, progress: Progress | None = None) -> RunResult:
    """Drive the core over time-ordered records, interleaving outcomes that are due."""
    res = RunResult()
    t0 = time.monotonic()
    pending = list(outcomes or [])
    heapq.heapify(pending)
    events_out = res.events
    process = pipeline.process
    n = 0
    last_ts = 0
    for rec in records:
        ts = rec.ts
        while pending and pending[0][0] <= ts:
            for e in pipeline.outcome(heapq.heappop(pending)[1]):
                events_out.append(e)
                if sink:
                    sink(e)
        events = process(rec)
        n += 1
        if not res.first_ts:
            res.first_ts = ts
        if ts > last_ts:
            last_ts = ts
        if events:
            for e in events:
                events_out.append(e)
                if sink:
                    sink(e)
        if not n & 4095:
            pipeline.publish_metrics()  # (the demo serves them while it runs)
            if progress:
                progress.tick(n, len(events_out))
    res.records = n
    res.last_ts = last_ts
    while pending:
        for e in pipeline.outcome(heapq.heappop(pending)[1]):
            events_out.append(e)
            if sink:
                sink(e)
    pipeline.publish_metrics()
    res.seconds = time.monotonic() - t0
    return res


def load_profiles(pipeline: Pipeline, path: str) -> int:
    n = 0
    for _, line in iter_lines(path):
        n += pipeline.profile(line)
    return n


def backtest(cfg: dict, cdrs: str, subscribers: str | None, out: str, outcomes: str | None = None,
             dlq: str | None = None, show_progress: bool = True, metrics=None,
             partitions: int | None = None) -> tuple[RunResult, Pipeline]:
    pipeline = Pipeline(Detector(cfg, partitions), metrics)
    if subscribers:
        load_profiles(pipeline, subscribers)
    dlq_writer = JsonlWriter(dlq) if dlq else None

    def on_invalid(n: int, line: bytes, err: InvalidRecord) -> None:
        if pipeline.counts["invalid"] <= 5:
            log.warning("line %d rejected: %s", n, err)
        if dlq_writer:
            dlq_writer.write({"line": n, "reason": err.reason, "field": err.field, "error": str(err),
                              "raw": line.decode("utf-8", "replace")})

    with JsonlWriter(out) as writer:
        res = run(pipeline, ordered_records(pipeline, iter_lines(cdrs), on_invalid),
                  load_outcomes(outcomes) if outcomes else None,
                  sink=lambda e: writer.write(public(e)), progress=Progress(show_progress))
    if dlq_writer:
        dlq_writer.close()
    return res, pipeline
