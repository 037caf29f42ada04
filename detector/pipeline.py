"""The one processing step every runner shares: raw bytes → parse → core → events, counted.

The backtest, the demo and the Kafka daemon all call `Pipeline`, so they parse, dedupe, score and
decide identically; they differ only in where bytes come from and where events go.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

from .config import TIER_NAMES
from .contract import CDR, InvalidRecord, Outcome, parse_cdr, parse_outcome, parse_profile
from .core import Detector

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("cdr_detector")


class Pipeline:
    def __init__(self, detector: Detector, metrics: Metrics | None = None):
        self.detector = detector
        self.metrics = metrics
        self.counts: Counter = Counter()
        self.invalid: Counter = Counter()
        self.actions: Counter = Counter()
        # records counted ok, the event time of the last one and the scores, not yet in the
        # metrics: a Prometheus counter, gauge and histogram updated one record at a time cost
        # ~2 µs a record, so they are brought up to date once per polled batch (`publish_metrics`)
        self._ok_unpublished = 0
        self._last_ts = 0
        self._scores: list[float] = []

    def parse(self, raw: bytes | dict) -> CDR | InvalidRecord:
        try:
            return parse_cdr(raw)
        except InvalidRecord as err:
            self.counts["invalid"] += 1
            self.invalid[err.reason] += 1
            if self.metrics:
                self.metrics.records.labels("invalid").inc()
                self.metrics.invalid.labels(err.reason).inc()
            return err

    def process(self, rec: CDR, now: float | None = None, offset: int = -1) -> list[dict]:
        """Feed one parsed record to the core; returns its events (with internal annotations)."""
        events = self.detector.on_record(rec, offset=offset)
        m = self.metrics
        result = self.detector.last_result
        if result != "ok":
            self.counts[result] += 1
            if m:
                m.records.labels(result).inc()
            return events
        self.counts["ok"] += 1
        if m:
            self._ok_unpublished += 1
            self._last_ts = rec.ts
            if self.detector.last_score is not None:
                self._scores.append(self.detector.last_score)
        if events:
            self.observe_events(events, now)
        return events

    def observe_events(self, events: list[dict], now: float | None = None) -> None:
        m = self.metrics
        for e in events:
            self.actions[(e["action"], e["tier"], e["mode"])] += 1
            if not m:
                continue
            m.decisions.labels(e["action"], e["tier"], e["mode"]).inc()
            wall = time.time() if now is None else now
            m.decision_latency.observe(max(0.0, wall - e["ts"] / 1000))
            if e.get("_resuspension"):
                m.resuspensions.labels(e["tier"]).inc()
            if e["action"] == "restore":
                m.restores.labels(e["tier"], e.get("_cause", "automatic")).inc()
                m.suspension_to_restore.labels(e["tier"]).observe(e.get("_suspended_ms", 0) / 1000)

    def profile(self, raw: bytes | dict) -> bool:
        try:
            self.detector.on_profile(parse_profile(raw))
            return True
        except InvalidRecord as err:
            self.counts["invalid_profile"] += 1
            log.warning("invalid subscriber profile: %s", err)
            return False

    def process_at(self, rec: CDR, offset: int) -> list[dict]:
        return self.process(rec, offset=offset)

    def outcome(self, raw: bytes | dict | Outcome) -> list[dict]:
        if isinstance(raw, Outcome):
            o = raw
        else:
            try:
                o = parse_outcome(raw)
            except InvalidRecord as err:
                self.counts["invalid_outcome"] += 1
                log.warning("invalid verification outcome: %s", err)
                return []
        st = self.detector.number(o.msisdn)
        tier = TIER_NAMES[st.tier] if st is not None and st.tier >= 0 else "none"
        if self.metrics:
            self.metrics.outcomes.labels(tier, o.outcome).inc()
        events = self.detector.on_outcome(o)
        if events:
            self.observe_events(events)
        return events

    def publish_metrics(self) -> None:
        """Bring the per-record metrics up to date: the daemon calls this after every polled batch."""
        m = self.metrics
        if m and self._ok_unpublished:
            m.records.labels("ok").inc(self._ok_unpublished)
            m.last_event_ts.set(self._last_ts / 1000)
            self._ok_unpublished = 0
            if self._scores:
                m.score.observe_many(self._scores)
                self._scores.clear()

    def refresh_gauges(self) -> None:
        m = self.metrics
        if not m:
            return
        self.publish_metrics()
        m.numbers_tracked.set(self.detector.numbers_tracked())
        m.storm_breaker.set(1 if self.detector.breaker.tripped else 0)
        suspended: Counter = Counter()
        for eng in self.detector.engines.values():
            suspended.update(eng.suspended_by_tier())
        for name in TIER_NAMES:
            m.suspended_lines.labels(name).set(suspended.get(name, 0))
