"""The core: (state, record) → (state, decisions). No I/O, no clock, no randomness.

The daemon, the backtest and the demo all feed records through `Engine`, so a backtest decides
exactly what production would. State is mutated in place (a copy per record would cost more than
the detector itself); everything it holds is plain data that `snapshot()` can serialise.
"""
from __future__ import annotations

import bisect
import hashlib
import struct
from dataclasses import dataclass

import numpy as np

from . import features as F
from . import kernel as K
from .config import TIER_NAMES, model_id
from .contract import CDR, Outcome, Profile, province
from .features import FeatureConfig, NumberState, NumberStore, hash64
from .model import N_FEATURES, RiskModel
from .profiles import ProfileTable
from .reasons import describe, restore_reason
from .shared import NO_FACTS, Enricher, SharedFacts


@dataclass(frozen=True)
class Tier:
    name: str
    threshold: float
    verification: str
    mode: str
    auto_restore: bool


class Engine:
    """All detector state for the numbers it owns, and the rules that turn scores into actions."""

    def __init__(self, cfg: dict, track_changes: bool = False):
        self.cfg = cfg
        self.track_changes = track_changes  # the daemon persists changed numbers; a backtest need not
        self.model_id = model_id(cfg)
        self.fc = FeatureConfig(cfg["features"])
        self.model = RiskModel(cfg["model"], self.fc.share_calls, watch_bias=float(cfg["restore"]["watch_bias"]))
        self._buf = np.zeros((3, N_FEATURES))  # raw values, support, evidence of the record in hand
        self.tiers = tuple(Tier(n, float(cfg["tiers"][n]["threshold"]), str(cfg["tiers"][n]["verification"]),
                                str(cfg["tiers"][n]["mode"]), bool(cfg["tiers"][n].get("auto_restore", False)))
                           for n in TIER_NAMES)
        dc = cfg["decisions"]
        self.min_calls = int(dc["min_outgoing_calls"])
        self.escalate_margin = float(dc["escalate_margin"])
        self.n_reasons = int(dc["reasons"])
        rc = cfg["restore"]
        self.restore_enabled = bool(rc["enabled"])
        self.restore_below = float(rc["below_score"])
        self.restore_after_ms = int(float(rc["for_hours"]) * F.HOUR_MS)
        self.cleared_margin = float(rc["cleared_margin"])
        self.cleared_memory_ms = int(float(rc.get("cleared_memory_days", 30)) * F.DAY_MS)
        self.idle_expiry_ms = int(float(cfg["state"]["idle_expiry_days"]) * F.DAY_MS)
        self.rest_after_ms = int(float(cfg["state"].get("rest_after_hours", 24)) * F.HOUR_MS)

        self.numbers = NumberStore()
        self.profiles = ProfileTable()  # msisdn → Profile, one packed int each
        self.dirty: set[str] = set()  # numbers changed since the state was last persisted
        self.clock = 0  # largest event time seen
        self.start_ts = 0  # event time of the first record ever processed (cold start)
        self.next_sweep = 0
        self.last_score: float | None = None
        self.current: NumberState | None = None
        self.duplicates = 0
        self._suspended = [0] * len(self.tiers)  # lines suspended now, by tier, kept as decisions happen
        self.suspended_stale = False  # set when states are loaded from outside (a restore): recount

    # -- inputs ------------------------------------------------------------------------------
    def on_profile(self, profile: Profile) -> None:
        self.profiles.put(profile)

    def on_record(self, rec: CDR, facts: "SharedFacts" = None, st: NumberState | None = None,
                  id_hash: int = 0, offset: int = -1) -> list[dict]:
        """Fold one CDR into the state; return the suspension events it causes (usually none).

        `facts` are what other numbers' records say about this one (lines sharing its handset or
        its cell), computed by `Enricher` — in-process here, or behind a repartition topic. `st` is
        the number's state when the caller has already taken it from `numbers`. `id_hash` and
        `offset` are what the state remembers of the record once folded in, for `Detector`'s
        dedupe (0 and -1: nothing).
        """
        self.last_score = None
        if rec.ts > self.clock:
            if not self.start_ts:
                self.start_ts = rec.ts
            self.clock = rec.ts
            if rec.ts >= self.next_sweep:
                self._sweep(rec.ts)  # may forget this very number: take its state afresh
                st = None

        if st is None:
            st = self.numbers.get(rec.msisdn)
        if st is None:
            st = self.numbers.new(rec.msisdn, rec.ts)
        self.current = st  # the state this record went to (for the Detector: a sweep may replace it)
        if self.track_changes:
            self.dirty.add(rec.msisdn)
        handset_lines, cell_lines = facts if facts is not None else NO_FACTS
        rows, i = st._rows, st._i

        if rec.direction == "MT":
            if K.mt_step_call(rows, i, *F.mt_inputs(rec), handset_lines, cell_lines, id_hash, offset):
                # a suspended line keeps being scored, so it can be restored
                return self._review_suspended(st, rec, self.profiles.get(rec.msisdn), handset_lines, cell_lines)
            return []  # (the profile is not looked up: in a large table that is a cache miss)

        home, pin = self.profiles.home_and_inputs(rec.msisdn)
        if home is None:  # no profile: the record's own region stands for home
            home = province(rec.cell_region)
        model = self.model
        kmodel = model.kernel_model()
        buf = self._buf
        answer, score = K.mo_step_call(
            rows, i, *F.mo_inputs(rec, home, self.fc), handset_lines, cell_lines, *pin, rec.ts - self.start_ts,
            self.min_calls, model.population_min_calls, model.population_interval_ms, self.cleared_memory_ms,
            buf, kmodel, id_hash, offset)
        if answer == K.NOTHING:
            return []  # nothing reads this line's features yet: they were not computed
        if answer == K.POPULATION:
            model.observe_population(buf[0])
            st.last_pop_ts = rec.ts  # (a line feeds the baseline only while it is not suspended)
            if st.n_mo < self.min_calls:
                return []
            # scored with the typical values as they are now that this line has fed them
            score = K.score_active_call(rows, i, rec.ts, self.cleared_memory_ms, buf, model.kernel_model())
        if answer == K.SUSPENDED:
            return self._review_suspended(st, rec, None, handset_lines, cell_lines,
                                          (buf[0], buf[1], _tenure_days(pin, rec.ts)))
        self.last_score = score
        bar = self.tiers[0].threshold
        if score < bar:
            return []  # (the bar below is never lower)
        if st.cleared_score:
            bar = max(bar, min(0.999, st.cleared_score + self.cleared_margin))
        if score < bar:
            return []
        ev, raw = buf[2].copy(), buf[0].copy()
        tenure = _tenure_days(pin, rec.ts)
        tier = self._tier_of(score)
        if st.cleared_score:  # cleared before and risen clearly beyond it: a heavier check
            tier = min(len(self.tiers) - 1, max(tier, st.tier + 1))
        resuspension = st.restores > 0
        st.status = 1
        st.tier = tier
        self._suspended[tier] += 1
        st.suspended_ts = rec.ts
        st.below_since = 0
        st.peak_score = score
        return [self._event("suspend", rec, tier, score, self._reasons(ev, raw, tenure), resuspension=resuspension)]

    def on_outcome(self, outcome: Outcome) -> list[dict]:
        """An operator's verdict: `cleared` restores at once; both verdicts teach the model."""
        st = self.numbers.get(outcome.msisdn)
        if st is None:
            return []
        ev = self._current_evidence(st, outcome.msisdn, outcome.ts)
        self.model.learn(ev, outcome.outcome == "confirmed_fraud")
        if self.track_changes:
            self.dirty.add(outcome.msisdn)
        if outcome.outcome == "confirmed_fraud":
            st.fraud_confirmed = True
            return []
        if not st.status:
            return []
        st.cleared_score = max(st.peak_score, self.tiers[0].threshold)
        return [self._restore(st, outcome.msisdn, outcome.ts, f"o:{outcome.ts}", "cleared",
                              [restore_reason("cleared", st.peak_score, self.tiers[0].threshold)])]

    # -- decisions on a suspended line ------------------------------------------------------
    def _review_suspended(self, st: NumberState, rec: CDR, profile: Profile | None, handset_lines: int,
                          cell_lines: int, features: tuple | None = None) -> list[dict]:
        """`features` is `raw_vector`'s answer for this record when the caller has it already."""
        if features is None:
            features = self.model.raw_vector(st, profile, rec.ts, handset_lines, cell_lines, rec.ts - self.start_ts)
        raw, support, tenure = features
        score, ev = self._score(st, raw, support)
        self.last_score = score
        if score > st.peak_score:
            st.peak_score = score
        nxt = st.tier + 1
        if rec.direction == "MO" and nxt < len(self.tiers) and score >= self.tiers[nxt].threshold + self.escalate_margin:
            self._suspended[st.tier] -= 1
            st.tier = self._tier_of(score - self.escalate_margin)
            self._suspended[st.tier] += 1
            st.below_since = 0
            return [self._event("escalate", rec, st.tier, score, self._reasons(ev, raw, tenure))]
        if not (self.restore_enabled and self.tiers[st.tier].auto_restore and not st.fraud_confirmed):
            return []
        if score >= self.restore_below:
            st.below_since = 0
            return []
        if not st.below_since:
            st.below_since = rec.ts
            return []
        if rec.ts - st.below_since < self.restore_after_ms:
            return []
        reason = restore_reason("risk_normal", score, self.restore_below,
                                hours=(rec.ts - st.below_since) / F.HOUR_MS)
        return [self._restore(st, rec.msisdn, rec.ts, rec.record_id, "automatic", [reason], score)]

    def lift_suspension(self, st: NumberState) -> None:
        """Take back a suspension that was never enforced (the storm breaker shadowed it), so the
        line's next record is decided as for an active line — and enforced if still warranted."""
        self._suspended[st.tier] -= 1
        st.status = 0
        st.tier = -1
        st.below_since = 0

    def _restore(self, st: NumberState, msisdn: str, ts: int, cause_id: str, cause: str,
                 reasons: list[dict], score: float | None = None) -> dict:
        tier = self.tiers[st.tier]
        event = self._make_event(msisdn, ts, cause_id, "restore", tier,
                                 st.peak_score if score is None else score, reasons)
        event["_cause"] = cause
        event["_suspended_ms"] = ts - st.suspended_ts
        st.status = 0
        self._suspended[st.tier] -= 1
        st.restores += 1
        st.below_since = 0
        return event

    # -- helpers -----------------------------------------------------------------------------
    def suspended_by_tier(self) -> dict[str, int]:
        """Lines suspended now, by tier name (counted as decisions happen, not by a scan)."""
        if self.suspended_stale:
            self._suspended = self.count_suspended()
            self.suspended_stale = False
        return {t.name: n for t, n in zip(self.tiers, self._suspended) if n}

    def count_suspended(self) -> list[int]:
        """By a scan over every number's packed state: the check on `suspended_by_tier`."""
        counts = [0] * len(self.tiers)
        for _, _, status, tier in self.numbers.scan():
            if status:
                counts[tier] += 1
        return counts

    def _score(self, st: NumberState, raw, support) -> tuple[float, np.ndarray]:
        """The score of a line from its raw values and their support, and the evidence (a line with
        confirmed fraud behind it is watched more closely: `kernel.score_row`)."""
        buf = self._buf
        buf[0], buf[1] = raw, support  # (where the per-record step left them already, a no-op)
        score = K.score_row(st._rows, st._i, buf, self.model.kernel_model())
        return score, buf[2].copy()

    def _tier_of(self, score: float) -> int:
        tier = 0
        for i, t in enumerate(self.tiers):
            if score >= t.threshold:
                tier = i
        return tier

    def _current_evidence(self, st: NumberState, msisdn: str, ts: int) -> dict:
        raw, support, tenure = self.model.raw_vector(st, self.profiles.get(msisdn), ts, st.handset_lines,
                                                     st.cell_lines, ts - self.start_ts)
        return self.model.as_dicts(raw, self.model.evidence_vector(raw, support), tenure)[1]

    def _reasons(self, ev: list[float], raw: list[float], tenure: float | None) -> list[dict]:
        raw_named, ev_named = self.model.as_dicts(raw, ev, tenure)
        typical = self.model.typical()
        return [describe(name, raw_named, typical)
                for name, _ in self.model.contributions(ev_named)[: self.n_reasons]]

    def _event(self, action: str, rec: CDR, tier: int, score: float, reasons: list[dict],
               resuspension: bool = False) -> dict:
        event = self._make_event(rec.msisdn, rec.ts, rec.record_id, action, self.tiers[tier], score, reasons)
        if resuspension:
            event["_resuspension"] = True
        return event

    def _make_event(self, msisdn: str, ts: int, cause_id: str, action: str, tier: Tier, score: float,
                    reasons: list[dict]) -> dict:
        key = f"{msisdn}|{cause_id}|{action}|{tier.name}|{self.model_id}".encode()
        return {
            "event_id": hashlib.sha256(key).hexdigest()[:32],
            "ts": ts,
            "msisdn": msisdn,
            "action": action,
            "tier": tier.name,
            "verification": tier.verification,
            "score": round(min(1.0, max(0.0, score)), 4),
            "reasons": reasons,
            "mode": tier.mode,
            "model": self.model_id,
        }

    def _sweep(self, now: int) -> None:
        """Hourly in event time: forget numbers idle past the expiry, and hold the ones quiet for
        `state.rest_after_hours` packed until their next record."""
        self.next_sweep = now + F.HOUR_MS
        horizon = now - self.idle_expiry_ms
        for msisdn in self.numbers.idle(horizon):
            del self.numbers[msisdn]
            if self.track_changes:
                self.dirty.add(msisdn)  # persisted as a tombstone
        self.numbers.rest(now - self.rest_after_ms)


def _tenure_days(pin: tuple, ts: int) -> float | None:
    """A line's age in days (None: no profile), from its profile as `ProfileTable.home_and_inputs` gives it."""
    return max(0.0, (ts - pin[1]) / F.DAY_MS) if pin[0] else None


SHADOWED_BY_BREAKER = 2  # NumberState.status of a line whose suspension the breaker turned to shadow


def public(event: dict) -> dict:
    """The event as the contract defines it (internal `_` annotations dropped)."""
    return {k: v for k, v in event.items() if not k.startswith("_")}


class StormBreaker:
    """Stops a broken feed or a bad model from suspending thousands of customers at once.

    Counts enforced suspensions per minute of event time; past `max_suspensions_per_minute` it
    trips: from then on every decision is recorded in shadow mode (scored, never enforced) until
    an operator re-arms it. Event time, not wall time, so a backtest trips exactly where the
    daemon would.
    """

    def __init__(self, cfg: dict):
        self.enabled = bool(cfg.get("enabled", True))
        self.bound = int(cfg.get("max_suspensions_per_minute", 50))
        self.window_ms = 60_000
        self.recent: list[int] = []  # enforced suspensions' event times, sorted
        self.latest = 0
        self.tripped = False
        self.tripped_ts = 0
        self.trips = 0

    def filter(self, events: list[dict]) -> list[dict]:
        if not self.enabled:
            return events
        for e in events:
            if e["action"] not in ("suspend", "escalate") or e["mode"] != "enforce":
                continue
            if not self.tripped:
                ts = e["ts"]
                bisect.insort(self.recent, ts)
                self.latest = max(self.latest, ts)
                # keep two hours: later than that a record is set aside as late anyway; at most
                # ~120 × bound entries, since no more than that is ever enforced
                while self.recent and self.recent[0] < self.latest - 120 * self.window_ms:
                    del self.recent[0]
                # any one-minute window that holds this event (events may come out of order)
                lo = bisect.bisect_right(self.recent, ts - self.window_ms)
                hi = bisect.bisect_left(self.recent, ts + self.window_ms)
                if hi - lo <= self.bound:
                    continue
                self.tripped = True
                self.tripped_ts = e["ts"]
                self.trips += 1
            e["mode"] = "shadow"
            e["_breaker"] = True
        return events

    def rearm(self) -> None:
        self.tripped = False
        self.recent.clear()

    def to_dict(self) -> dict:
        return {"tripped": self.tripped, "tripped_ts": self.tripped_ts, "trips": self.trips}

    def load_dict(self, d: dict) -> None:
        self.tripped = bool(d.get("tripped", False))
        self.tripped_ts = int(d.get("tripped_ts", 0))
        self.trips = int(d.get("trips", 0))


_M = 0x5BD1E995
_M32 = 0xFFFFFFFF
_WORDS = [struct.Struct(f"<{i}I") for i in range(64)]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (as `kafka.partitioner.default.murmur2`, tested equal), about twice as fast:
    the words are read with one struct call. The reference for `kernel.key_partition`, which
    `partition_of` calls (tested equal on every length)."""
    n = len(data)
    h = 0x9747B28C ^ n
    n4 = n & ~3
    if n4:
        words = _WORDS[n >> 2].unpack_from(data) if n < 256 else struct.unpack_from(f"<{n >> 2}I", data)
        for k in words:
            k = (k * _M) & _M32
            h = ((h * _M) & _M32) ^ (((k ^ (k >> 24)) * _M) & _M32)
    extra = n & 3
    if extra:
        if extra == 3:
            h ^= data[n4 + 2] << 16
        if extra >= 2:
            h ^= data[n4 + 1] << 8
        h = ((h ^ data[n4]) * _M) & _M32
    h ^= h >> 13
    h = (h * _M) & _M32
    return h ^ (h >> 15)


def partition_of(msisdn: str, partitions: int) -> int:
    """The Kafka partition of a key under the default partitioner (murmur2, as the Java client):
    `(murmur2(key) & 0x7FFFFFFF) % partitions`, compiled (`kernel.key_partition`)."""
    return K.key_partition_call(msisdn.encode(), partitions)


class Detector:
    """One `Engine` per input partition (state partitioned like the input) plus the `Enricher`.

    The backtest builds all partitions at once; the daemon builds the ones it is assigned. Because
    each partition's engine sees only its own numbers, in the same order, both decide alike.
    """

    def __init__(self, cfg: dict, partitions: int | None = None, track_changes: bool = False):
        self.cfg = cfg
        self.track_changes = track_changes
        self.partitions = int(partitions or cfg["kafka"]["partitions"])
        self.engines: dict[int, Engine] = {}
        self.enricher = Enricher(cfg, track_changes)
        self.model_id = model_id(cfg)
        self.last_score: float | None = None
        self.last_result = "ok"  # ok | duplicate | late, for the record just processed
        self.late = 0
        self.lateness_ms = int(float(cfg["state"].get("allowed_lateness_minutes", 60)) * 60_000)
        self.breaker = StormBreaker(cfg.get("storm", {}))

    def partition(self, msisdn: str) -> int:
        """The number's input partition, hashed afresh each time (compiled, ~0.3 µs with the call).

        Not remembered: a carrier's numbers outnumber any cache worth its memory. A cache of
        262,144 numbers (before) missed on 48% of the records of 1 M subscribers, which made it
        dearer than no cache (~0.7 against ~0.4 µs a record); with 100 k it saved ~60 ns."""
        return partition_of(msisdn, self.partitions)

    def engine(self, msisdn: str) -> Engine:
        p = self.partition(msisdn)
        eng = self.engines.get(p)
        if eng is None:
            eng = self.engines[p] = Engine(self.cfg, self.track_changes)
        return eng

    def on_profile(self, profile: Profile) -> None:
        self.engine(profile.msisdn).on_profile(profile)

    def on_record(self, rec: CDR, facts: SharedFacts | None = None, offset: int = -1) -> list[dict]:
        """`offset` is the record's input offset when it has one: a record at or below the offset
        a number's state already holds (replayed after a crash) is skipped, not applied twice."""
        msisdn = rec.msisdn
        partition = partition_of(msisdn, self.partitions)
        eng = self.engines.get(partition) or self.engine(msisdn)
        st = eng.numbers.get(msisdn)
        self.last_score = None
        id_hash = hash64(rec.record_id)
        if st is not None:
            verdict, status = K.admit_call(st._rows, st._i, offset, rec.ts, self.lateness_ms, id_hash)
            if verdict == K.DUPLICATE_OFFSET or verdict == K.DUPLICATE_ID:
                # replayed after a crash (already folded in), or a repeat that must not count twice
                # on the shared indexes either
                eng.duplicates += 1
                self.last_result = "duplicate"
                return []
            if verdict == K.LATE:
                self.late += 1  # too late to fold into rolling features: set aside, counted
                self.last_result = "late"
                if offset >= 0 and eng.track_changes:  # the daemon dead-letters it once, not again after a restart
                    eng.dirty.add(msisdn)
                return []
            if status == SHADOWED_BY_BREAKER and not self.breaker.tripped:
                eng.lift_suspension(st)  # never enforced; the breaker is re-armed: decide afresh
        self.last_result = "ok"
        if facts is None:
            facts = self.enricher.facts(rec, partition)
        events = eng.on_record(rec, facts, st, id_hash, offset)
        if events:
            events = self.breaker.filter(events)
            if any(e.get("_breaker") and e["action"] == "suspend" for e in events):
                eng.current.status = SHADOWED_BY_BREAKER  # (not `st`: the engine's sweep may have replaced it)
        self.last_score = eng.last_score
        return events

    def on_outcome(self, outcome: Outcome) -> list[dict]:
        return self.breaker.filter(self.engine(outcome.msisdn).on_outcome(outcome))

    @property
    def duplicates(self) -> int:
        return sum(e.duplicates for e in self.engines.values())

    def number(self, msisdn: str) -> NumberState | None:
        return self.engine(msisdn).numbers.get(msisdn)

    def numbers_tracked(self) -> int:
        return sum(len(e.numbers) for e in self.engines.values())
