"""Publish recorded files into the topics, keyed by msisdn, as fast as possible or paced by the
records' own timestamps — for backtests through the real pipeline."""
from __future__ import annotations

import logging
import time

import orjson

from . import kafka_io
from .files import iter_lines

log = logging.getLogger("cdr_detector.replay")


def _key(line: bytes) -> bytes | None:
    """The partition key; a line that is not a JSON object still goes out (the daemon DLQs it)."""
    try:
        obj = orjson.loads(line)
        m = obj.get("msisdn") if isinstance(obj, dict) else None
        return m.encode() if isinstance(m, str) else None
    except orjson.JSONDecodeError:
        return None


def _ts(line: bytes) -> int | None:
    try:
        obj = orjson.loads(line)
        ts = obj.get("ts") if isinstance(obj, dict) else None
        return ts if isinstance(ts, int) else None
    except orjson.JSONDecodeError:
        return None


def publish(kcfg: dict, topic: str, path: str, speed: float | None = None, progress: bool = False,
            limit: int | None = None, producer=None) -> int:
    """Send every line of `path` to `topic`; `speed` X replays at X times real time (None: max)."""
    own = producer is None
    producer = producer or kafka_io.producer(kcfg)
    n = 0
    t_wall0 = time.monotonic()
    t_ev0 = None
    last_report = t_wall0
    try:
        for _, line in iter_lines(path):
            if limit is not None and n >= limit:
                break
            if speed:
                ts = _ts(line)
                if ts is not None:
                    if t_ev0 is None:
                        t_ev0 = ts
                    due = t_wall0 + (ts - t_ev0) / 1000 / speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            producer.send(topic, key=_key(line), value=line)
            n += 1
            if progress and n % 10000 == 0 and time.monotonic() - last_report > 2:
                last_report = time.monotonic()
                print(f"  {topic}: {n:,} sent ({n / (last_report - t_wall0):,.0f}/s)", flush=True)
        producer.flush()
    finally:
        if own:
            producer.close(timeout=30)
    return n


def replay(cfg: dict, cdrs: str, subscribers: str | None = None, outcomes: str | None = None,
           speed: float | None = None, progress: bool = True, limit: int | None = None) -> dict:
    k = cfg["kafka"]
    kafka_io.ensure_topics(k)
    t = kafka_io.topic_names(k)
    producer = kafka_io.producer(k)
    counts = {}
    t0 = time.monotonic()
    try:
        if subscribers:  # profiles first: the daemon reads them before it scores
            counts["subscribers"] = publish(k, t["subscribers"], subscribers, producer=producer)
        if outcomes:
            counts["outcomes"] = publish(k, t["outcomes"], outcomes, producer=producer)
        counts["records"] = publish(k, t["records"], cdrs, speed=speed, progress=progress, limit=limit,
                                    producer=producer)
    finally:
        producer.close(timeout=30)
    counts["seconds"] = round(time.monotonic() - t0, 2)
    return counts
