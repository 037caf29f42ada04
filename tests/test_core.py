"""detector/core.py: tiers, hysteresis, restore, determinism and partitioning, through Engine and
Detector with synthetic records.

Expected decisions are derived from the configuration (thresholds, margins, modes, verification)
and from the scores the engine reports for each record (`last_score`), never copied from a run.
"""
from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest
from kafka.partitioner.default import DefaultPartitioner
from kafka.partitioner.default import murmur2 as kafka_murmur2

from conftest import (
    CONTRACT_EVENT_KEYS,
    DAY,
    HOUR,
    MINUTE,
    PROVINCES,
    T0,
    Stream,
    load_cfg,
    outcome,
    profile,
    warm_up,
)
from detector import features as F
from detector import kernel as K
from detector.config import TIER_NAMES, model_id
from detector.core import NO_FACTS, Detector, Engine, SharedFacts, murmur2, partition_of, public
from detector.model import FEATURE_NAMES

RING = ("13100000001", "13100000002", "13100000003")
RING_IMEI = "860000000055555"
RING_CELL = "c55555"


# -- scenarios -------------------------------------------------------------------------------------
def fraud_ring(s: Stream, start: int = T0, calls: int = 30, lines=RING) -> list:
    """Three lines on one handset and one cell, each blasting unanswered calls at new numbers in
    many provinces, no inbound at all: the shape of a scam call-centre or SIM-box group."""
    recs = []
    for k, m in enumerate(lines):
        recs += s.blast(m, start + k * 1000, calls, gap_ms=90_000, imei=RING_IMEI, cell_id=RING_CELL)
    return sorted(recs, key=lambda r: (r.ts, r.record_id))


def persona_records(s: Stream, start: int = T0, days: int = 3) -> dict[str, list]:
    """Legitimate subscribers with two-way traffic, heavy ones included."""
    out = {}
    out["13800000001"] = s.two_way("13800000001", start, days, [f"1390000{i:04d}" for i in range(10)])
    # calls family in another province every day; they call back
    out["13800000002"] = s.two_way("13800000002", start, days, [f"1330000{i:04d}" for i in range(3)],
                                   calls_per_day=5, inbound_per_day=3, peer_region="SC-CD", imei="860000000000861")
    # business line: big contact book across provinces, lots of inbound
    book = [f"1370000{i:04d}" for i in range(80)]
    bus = []
    for d in range(days):
        for i in range(30):
            bus.append(s.rec(msisdn="13800000003", ts=start + d * DAY + HOUR + i * 15 * MINUTE,
                             peer=book[(d * 30 + i) % 80], peer_region=PROVINCES[i % 7], duration_s=120,
                             imei="860000000000862"))
        for i in range(25):
            bus.append(s.rec(msisdn="13800000003", ts=start + d * DAY + HOUR + i * 17 * MINUTE + 5 * MINUTE,
                             direction="MT", peer=book[(d * 25 + i * 3) % 80], peer_region=PROVINCES[i % 7],
                             duration_s=100, imei="860000000000862"))
    out["13800000003"] = bus
    # courier: dozens of new local numbers a day, short answered calls, some customers call back
    cou = []
    for d in range(days):
        for i in range(30):
            peer = f"1561{d}{i:06d}"
            ts = start + d * DAY + HOUR + i * 20 * MINUTE
            cou.append(s.rec(msisdn="13800000004", ts=ts, peer=peer, peer_region="GD-SZ", duration_s=25 + i % 30,
                             answered=i % 9 != 0, imei="860000000000863"))
            if i % 3 == 0:
                cou.append(s.rec(msisdn="13800000004", ts=ts + 4 * MINUTE, direction="MT", peer=peer,
                                 peer_region="GD-SZ", duration_s=20, imei="860000000000863"))
    out["13800000004"] = cou
    return out


PERSONA_PROFILES = {
    "13800000001": {},
    "13800000002": {"plan": "prepaid"},
    "13800000003": {"segment": "business"},
    "13800000004": {"plan": "prepaid", "activated_ts": T0 - 200 * DAY},
}


def run(target, records, facts=None) -> list[dict]:
    out = []
    for r in records:
        out.extend(target.on_record(r, facts) if facts is not None else target.on_record(r))
    return out


def trace(target, records, facts=None) -> tuple[list[dict], list[tuple]]:
    """Events, and (record, score, events) for every record, the score as the engine reported it."""
    events, rows = [], []
    for r in records:
        ev = target.on_record(r, facts) if facts is not None else target.on_record(r)
        rows.append((r, target.last_score, ev))
        events.extend(ev)
    return events, rows


def tier_index(cfg: dict, score: float) -> int:
    idx = 0
    for i, name in enumerate(TIER_NAMES):
        if score >= cfg["tiers"][name]["threshold"]:
            idx = i
    return idx


def by_number(events: list[dict], msisdn: str) -> list[dict]:
    return [e for e in events if e["msisdn"] == msisdn]


def check_event(e: dict, cfg: dict) -> None:
    """The output contract, with verification and mode taken from the event's tier in config."""
    assert set(public(e)) == CONTRACT_EVENT_KEYS
    assert isinstance(e["event_id"], str) and len(e["event_id"]) >= 16
    assert e["action"] in ("suspend", "escalate", "restore")
    assert e["tier"] in TIER_NAMES
    tier = cfg["tiers"][e["tier"]]
    assert e["verification"] == tier["verification"]
    assert e["mode"] == tier["mode"]
    assert 0.0 <= e["score"] <= 1.0
    assert e["model"] == model_id(cfg)
    if e["action"] != "restore":
        assert 1 <= len(e["reasons"]) <= cfg["decisions"]["reasons"]
    for r in e["reasons"]:
        assert set(r) == {"code", "value", "typical", "text"}
        assert isinstance(r["text"], str) and r["text"].strip()
        assert isinstance(r["value"], (int, float)) and isinstance(r["typical"], (int, float))
        if e["action"] != "restore":
            assert r["code"] in FEATURE_NAMES


def fresh_detector(cfg: dict, partitions: int = 1) -> Detector:
    det = Detector(cfg, partitions)
    warm_up(det)
    return det


def fresh_engine(cfg: dict) -> Engine:
    eng = Engine(cfg)
    warm_up(eng)
    return eng


# -- legitimate traffic ------------------------------------------------------------------------------
def test_normal_two_way_traffic_is_never_suspended():
    cfg = load_cfg()
    s = Stream()
    det = fresh_detector(cfg)
    personas = persona_records(s)
    for m, extra in PERSONA_PROFILES.items():
        det.on_profile(profile(msisdn=m, **extra))
    recs = sorted((r for rs in personas.values() for r in rs), key=lambda r: (r.ts, r.record_id))
    events, rows = trace(det, recs)
    assert events == []
    scored = [score for _, score, _ in rows if score is not None]
    assert len(scored) > 100  # they were scored, not skipped
    assert max(scored) < cfg["tiers"]["low"]["threshold"]


def test_legitimate_lines_are_not_suspended_next_to_a_fraud_ring():
    cfg = load_cfg()
    s = Stream()
    det = fresh_detector(cfg)
    personas = persona_records(s)
    recs = sorted([r for rs in personas.values() for r in rs] + fraud_ring(s), key=lambda r: (r.ts, r.record_id))
    events = run(det, recs)
    assert {e["msisdn"] for e in events} == set(RING)


# -- suspension ----------------------------------------------------------------------------------------
def test_fraud_ring_line_is_suspended_with_reasons_tier_verification_and_mode_from_config():
    cfg = load_cfg()
    s = Stream()
    det = fresh_detector(cfg)  # no profiles: unknown subscribers are still scored
    events, rows = trace(det, fraud_ring(s))
    for m in RING:
        mine = by_number(events, m)
        assert mine, f"{m} was not suspended"
        first = mine[0]
        assert first["action"] == "suspend"
        trigger = next(r for r, _, ev in rows if first in ev)
        assert (first["ts"], first["msisdn"]) == (trigger.ts, m)
        assert first["tier"] == TIER_NAMES[tier_index(cfg, first["score"])]
        assert first["score"] >= cfg["tiers"]["low"]["threshold"]
        for e in mine:
            check_event(e, cfg)
        # the shared handset is what sets these lines apart: it must be named to the customer
        assert any(r["code"] == "handset_lines" for e in mine for r in e["reasons"])


def test_no_suspension_before_the_engine_says_the_score_crossed_the_threshold():
    cfg = load_cfg()
    s = Stream()
    det = fresh_detector(cfg)
    _, rows = trace(det, fraud_ring(s))
    low = cfg["tiers"]["low"]["threshold"]
    for m in RING:
        mine = [(score, ev) for r, score, ev in rows if r.msisdn == m]
        first = next(i for i, (_, ev) in enumerate(mine) if ev)
        assert all(score is None or score < low for score, _ in mine[:first])
        assert mine[first][0] >= low


@pytest.mark.parametrize("thresholds", [(0.5, 0.8, 0.97), (0.4, 0.6, 0.9), (0.6, 0.65, 0.7), (0.9, 0.95, 0.99)])
def test_tier_follows_the_configured_thresholds(thresholds):
    cfg = load_cfg({"tiers": {n: {"threshold": t} for n, t in zip(TIER_NAMES, thresholds)}},
                   **{"restore.below_score": 0.2})
    s = Stream()
    events = run(fresh_detector(cfg), fraud_ring(s))
    suspends = [e for e in events if e["action"] == "suspend"]
    assert len(suspends) == len(RING)
    for e in suspends:
        assert e["tier"] == TIER_NAMES[tier_index(cfg, e["score"])]
        check_event(e, cfg)


def test_changing_thresholds_changes_the_decision():
    """The scores of a line do not depend on the thresholds; where it is suspended does."""
    s = Stream()
    # one province, unanswered, new numbers, one a minute: a risk that builds up call by call
    recs = s.blast("13100000009", T0, 30, provinces=["SC"])
    _, rows = trace(fresh_engine(load_cfg()), recs, NO_FACTS)
    scores = [score for _, score, _ in rows]

    def first_suspend(cfg):
        events, r = trace(fresh_engine(cfg), recs, NO_FACTS)
        assert [sc for _, sc, _ in r] == scores
        idx = [i for i, (_, _, ev) in enumerate(r) if any(e["action"] == "suspend" for e in ev)]
        return idx[0] if idx else None

    def expected(threshold):
        return next((i for i, sc in enumerate(scores) if sc is not None and sc >= threshold), None)

    at_default = first_suspend(load_cfg())
    assert at_default is not None and at_default == expected(0.5)
    lower = load_cfg(**{"tiers.low.threshold": 0.3, "restore.below_score": 0.2})
    assert first_suspend(lower) == expected(0.3) < at_default
    top = max(sc for sc in scores if sc is not None)
    assert top < 0.93  # a moderate risk: one province, no shared handset
    higher = load_cfg(**{"tiers.low.threshold": 0.93, "tiers.high.threshold": 0.95,
                         "tiers.extreme.threshold": 0.99})
    assert first_suspend(higher) is None


@pytest.mark.parametrize("min_calls", [1, 3, 6])
def test_min_outgoing_calls_is_respected(min_calls):
    cfg = load_cfg(**{"decisions.min_outgoing_calls": min_calls})
    eng = fresh_engine(cfg)
    m = "13100000005"
    eng.on_profile(profile(msisdn=m, plan="prepaid", id_verified=False, activated_ts=T0 - DAY))
    s = Stream()
    recs = []
    for i in range(8):  # MT records in between do not count as outgoing calls
        recs.append(s.rec(msisdn=m, ts=T0 + i * MINUTE, direction="MT", answered=True, duration_s=30))
        recs.append(s.rec(msisdn=m, ts=T0 + i * MINUTE + 1, direction="MO", answered=False, duration_s=0,
                          peer_region=PROVINCES[i]))
    # a new unverified prepaid line whose handset and cell carry many other lines: risky from call one
    events, rows = trace(eng, recs, SharedFacts(handset_lines=12, cell_bypass_lines=12))
    suspend_at = [r for r, _, ev in rows if any(e["action"] == "suspend" for e in ev)]
    assert len(suspend_at) == 1
    mo_before = [r for r, _, _ in rows if r.direction == "MO" and r.ts <= suspend_at[0].ts]
    assert len(mo_before) == min_calls
    assert suspend_at[0].direction == "MO"


def test_mode_comes_from_config_per_tier():
    cfg = load_cfg(**{"tiers.low.mode": "shadow", "tiers.high.mode": "shadow"})
    events = run(fresh_detector(cfg), fraud_ring(Stream()))
    assert events
    for e in events:
        assert e["mode"] == ("shadow" if e["tier"] in ("low", "high") else "enforce")
        check_event(e, cfg)
    assert any(e["mode"] == "shadow" for e in events) and any(e["mode"] == "enforce" for e in events)
    everything_shadow = load_cfg({"tiers": {n: {"mode": "shadow"} for n in TIER_NAMES}})
    events = run(fresh_detector(everything_shadow), fraud_ring(Stream()))
    assert events and {e["mode"] for e in events} == {"shadow"}


def test_mode_set_by_environment_reaches_the_events():
    from detector import config
    cfg = config.load(environ={"CDR_DETECTOR__TIERS__HIGH__MODE": "shadow"})
    events = run(fresh_detector(cfg), fraud_ring(Stream()))
    high = [e for e in events if e["tier"] == "high"]
    assert high and all(e["mode"] == "shadow" for e in high)


def test_verification_comes_from_config():
    cfg = load_cfg({"tiers": {"low": {"verification": "sms_code"}, "high": {"verification": "video_call"},
                              "extreme": {"verification": "branch_visit"}}})
    events = run(fresh_detector(cfg), fraud_ring(Stream()))
    expected = {"low": "sms_code", "high": "video_call", "extreme": "branch_visit"}
    assert events
    for e in events:
        assert e["verification"] == expected[e["tier"]]


# -- hysteresis ----------------------------------------------------------------------------------------
def test_suspended_line_is_not_suspended_twice_and_escalates_only_upwards():
    cfg = load_cfg()
    margin = cfg["decisions"]["escalate_margin"]
    det = fresh_detector(cfg)
    events, rows = trace(det, fraud_ring(Stream(), calls=40))
    for m in RING:
        mine = by_number(events, m)
        assert [e["action"] for e in mine].count("suspend") == 1 and mine[0]["action"] == "suspend"
        assert all(e["action"] == "escalate" for e in mine[1:])
        tiers = [TIER_NAMES.index(e["tier"]) for e in mine]
        assert tiers == sorted(set(tiers)), "tiers must strictly rise"
        for e in mine[1:]:  # past the next threshold by the margin (score is rounded to 4 places)
            assert e["score"] + 5e-5 >= cfg["tiers"][e["tier"]]["threshold"] + margin
        # an escalation happens on the first record whose score clears the next threshold + margin
        suspended_tier = tiers[0]
        for r, score, ev in rows:
            if r.msisdn != m or not ev or ev[0]["action"] != "escalate":
                continue
            assert score >= cfg["tiers"][TIER_NAMES[suspended_tier + 1]]["threshold"] + margin
            suspended_tier = TIER_NAMES.index(ev[0]["tier"])
    assert any(len(by_number(events, m)) > 1 for m in RING), "the ring should escalate"


def test_escalation_can_skip_a_tier():
    cfg = load_cfg()
    margin = cfg["decisions"]["escalate_margin"]
    eng = fresh_engine(cfg)
    s = Stream()
    m = "13100000007"
    first = run(eng, _moderate_line(s, m, T0, 10), NO_FACTS)
    assert [e["tier"] for e in first] == ["low"]
    # suddenly on a handset and a cell full of other lines: far past the top threshold
    jump, rows = trace(eng, _moderate_line(s, m, T0 + 20 * MINUTE, 2), SharedFacts(20, 20))
    score = next(sc for _, sc, ev in rows if ev)
    assert [e["action"] for e in jump] == ["escalate"]
    assert jump[0]["tier"] == TIER_NAMES[tier_index(cfg, score - margin)] == "extreme"


def test_escalate_margin_from_config_holds_escalation_back():
    cfg = load_cfg(**{"decisions.escalate_margin": 0.15})
    events = run(fresh_detector(cfg), fraud_ring(Stream(), calls=40))
    assert events
    for e in events:
        if e["action"] == "escalate":
            assert e["score"] + 5e-5 >= cfg["tiers"][e["tier"]]["threshold"] + 0.15
    assert not any(e["tier"] == "extreme" for e in events)  # 0.97 + 0.15 > 1: unreachable


def test_suspended_line_never_de_escalates_when_the_risk_falls():
    cfg = load_cfg(**{"restore.enabled": False})  # only the tier is under test here, not restore
    det = fresh_detector(cfg)
    s = Stream()
    m = RING[0]
    events = run(det, fraud_ring(s, calls=40))
    top = max(TIER_NAMES.index(e["tier"]) for e in by_number(events, m))
    assert det.number(m).status == 1
    # then the line calms down: answered calls to and from a few contacts for a day
    calm = s.two_way(m, T0 + 2 * HOUR, 1, [f"1390000{i:04d}" for i in range(5)], imei=RING_IMEI, cell_id=RING_CELL)
    later, rows = trace(det, calm)
    scores = [sc for _, sc, _ in rows if sc is not None]
    assert min(scores) < cfg["tiers"][TIER_NAMES[top]]["threshold"]  # the risk did fall below the tier
    assert later == []
    assert det.number(m).tier == top and det.number(m).status == 1


# -- restore: operator verdicts --------------------------------------------------------------------------
def _moderate_line(s: Stream, m: str, start: int, n: int) -> list:
    return s.blast(m, start, n, provinces=["SC"])


def test_cleared_outcome_restores_and_the_same_pattern_does_not_resuspend():
    cfg = load_cfg()
    eng = fresh_engine(cfg)
    s = Stream()
    m = "13100000007"
    events, rows = trace(eng, _moderate_line(s, m, T0, 30), NO_FACTS)
    assert [e["action"] for e in events][:1] == ["suspend"]
    tier = events[-1]["tier"]
    peak = max(sc for _, sc, _ in rows if sc is not None)
    t_clear = T0 + 40 * MINUTE
    restored = eng.on_outcome(outcome(msisdn=m, ts=t_clear, outcome="cleared"))
    assert len(restored) == 1
    e = restored[0]
    check_event(e, cfg)
    assert (e["action"], e["tier"], e["ts"], e["msisdn"]) == ("restore", tier, t_clear, m)
    assert e["score"] == round(peak, 4)
    assert [r["code"] for r in e["reasons"]] == ["cleared"]
    assert eng.numbers[m].status == 0
    # the same behaviour goes on: it was judged legitimate, so it must not be suspended again ...
    bar = min(0.999, max(peak, cfg["tiers"]["low"]["threshold"]) + cfg["restore"]["cleared_margin"])
    again, rows2 = trace(eng, _moderate_line(s, m, t_clear + MINUTE, 30), NO_FACTS)
    assert again == []
    assert max(sc for _, sc, _ in rows2 if sc is not None) < bar
    # ... unless it turns clearly riskier than when it was cleared: then a heavier check than before
    worse, rows3 = trace(eng, _moderate_line(s, m, t_clear + HOUR, 10), SharedFacts(3, 3))
    assert [x["action"] for x in worse][:1] == ["suspend"]
    trigger_score = next(sc for _, sc, ev in rows3 if ev)
    assert trigger_score >= bar
    assert all(sc < bar for _, sc, ev in rows3[: [i for i, (_, _, ev) in enumerate(rows3) if ev][0]])
    assert TIER_NAMES.index(worse[0]["tier"]) >= min(len(TIER_NAMES) - 1, TIER_NAMES.index(tier) + 1)
    assert worse[0].get("_resuspension") is True


def test_resuspension_after_cleared_asks_for_a_heavier_check_even_within_the_same_score_tier():
    # a wide "low" band, so the second suspension's score alone would still say "low"
    cfg = load_cfg(**{"tiers.high.threshold": 0.95, "tiers.extreme.threshold": 0.99})
    eng = fresh_engine(cfg)
    s = Stream()
    m = "13100000007"
    first = run(eng, _moderate_line(s, m, T0, 30), NO_FACTS)
    assert [e["tier"] for e in first] == ["low"]
    eng.on_outcome(outcome(msisdn=m, ts=T0 + 40 * MINUTE, outcome="cleared"))
    # now it shares its handset with one other line: clearly riskier than when it was cleared
    worse, rows = trace(eng, _moderate_line(s, m, T0 + HOUR, 10), SharedFacts(1, 0))
    assert worse and worse[0]["action"] == "suspend"
    score = next(sc for _, sc, ev in rows if ev)
    assert tier_index(cfg, score) == 0, "scenario: the score by itself should sit in the low tier"
    assert worse[0]["tier"] == "high"


def test_cleared_outcome_on_an_active_or_unknown_line_emits_nothing():
    cfg = load_cfg()
    eng = fresh_engine(cfg)
    s = Stream()
    run(eng, s.two_way("13800000001", T0, 1, ["13900000001", "13900000002"]), NO_FACTS)
    assert eng.on_outcome(outcome(msisdn="13800000001", ts=T0 + DAY)) == []
    assert eng.on_outcome(outcome(msisdn="13899999999", ts=T0 + DAY)) == []


def test_outcomes_teach_the_model_in_the_right_direction():
    cfg = load_cfg()
    s = Stream()
    recs = _moderate_line(s, "13100000007", T0, 12)
    weights = {}
    for verdict in ("cleared", "confirmed_fraud"):
        eng = fresh_engine(cfg)
        run(eng, recs, NO_FACTS)
        before = eng.model.weights()
        eng.on_outcome(outcome(msisdn="13100000007", ts=T0 + HOUR, outcome=verdict))
        weights[verdict] = (before, eng.model.weights())
    # Outcomes come only from suspended lines (a selected sample): the weights learn, the
    # intercept (base rate) must not.
    b, a = weights["cleared"]
    assert a["unanswered_share"] < b["unanswered_share"] and a["_bias"] == b["_bias"]
    b, a = weights["confirmed_fraud"]
    assert a["unanswered_share"] > b["unanswered_share"] and a["_bias"] == b["_bias"]


def test_outcome_teaches_the_evidence_that_drove_the_decision():
    """BUG: `Engine.on_outcome` learns from `_current_evidence`, which recomputes the evidence with
    no profile and no shared facts (handset_lines=0, cell_bypass_lines=0). A line suspended because
    it shares a handset and is a day-old line gets `confirmed_fraud`, and the weights of
    handset_lines and new_line — the reasons printed on its suspension — do not move; a `cleared`
    family dual-SIM line likewise never teaches the model that its handset sharing was benign.
    Fix: learn from the evidence the decision used, e.g. keep the last facts (handset, cell) in
    NumberState and pass `self.profiles.get(msisdn)` to raw_features (or store the decision's
    evidence with the suspension)."""
    cfg = load_cfg()
    eng = fresh_engine(cfg)
    s = Stream()
    m = "13100000001"
    eng.on_profile(profile(msisdn=m, plan="prepaid", id_verified=False, activated_ts=T0 - DAY))
    recs = s.blast(m, T0, 6, provinces=["GD-GZ"], answered=True, duration_s=60)  # local, answered calls
    events = run(eng, recs, SharedFacts(4, 0))
    assert events and events[0]["action"] == "suspend"
    drivers = [r["code"] for r in events[0]["reasons"]]
    assert "handset_lines" in drivers
    before = eng.model.weights()
    eng.on_outcome(outcome(msisdn=m, ts=T0 + HOUR, outcome="confirmed_fraud"))
    after = eng.model.weights()
    assert {c for c in drivers if after[c] <= before[c]} == set()


def test_share_window_from_config_sets_the_support_of_shares():
    """BUG: `RiskModel.raw_features` caps the support of the per-call shares at `1 / _alpha` with
    `_alpha = 1/8` hard-coded, ignoring `features.share_window_calls`. With a window of 16, a line's
    unanswered share after 12 calls is a plain mean over 12 calls, yet it is shrunk as if it rested
    on 8. Fix: give RiskModel the features' share window (e.g. `RiskModel(cfg["model"],
    share_calls=fc.share_calls)`)."""
    from detector import features as F
    for window, calls in ((8, 12), (16, 12)):
        cfg = load_cfg(**{"features.share_window_calls": window})
        eng = Engine(cfg)
        st = F.NumberState(T0)
        for r in Stream().blast("13100000001", T0, calls):
            F.update_mo(st, r, "GD", eng.fc)
        _, support = eng.model.raw_features(st, None, st.last_ts, 0, 0, 2 * DAY)
        assert support["unanswered_share"] == min(calls, window), window


def test_confirmed_fraud_keeps_the_line_suspended():
    cfg = load_cfg()
    eng = fresh_engine(cfg)
    s = Stream()
    m = "13100000001"
    events = run(eng, s.blast(m, T0, 6), SharedFacts(2, 0))
    assert events and eng.numbers[m].status == 1
    assert eng.on_outcome(outcome(msisdn=m, ts=T0 + HOUR, outcome="confirmed_fraud")) == []
    later = run(eng, s.two_way(m, T0 + 2 * HOUR, 3, [f"1390000{i:04d}" for i in range(12)]), NO_FACTS)
    assert later == [] and eng.numbers[m].status == 1


# -- restore: automatic ----------------------------------------------------------------------------------
def _suspend_then_calm(eng: Engine, s: Stream, m: str) -> tuple[list[dict], list[tuple]]:
    """Suspended while it shared a handset and blasted calls; then a day and a half of ordinary,
    answered two-way traffic with a few contacts, no shared handset."""
    first = run(eng, s.blast(m, T0, 6), SharedFacts(2, 0))
    assert first and first[0]["action"] == "suspend"
    friends = [f"1370000{i:04d}" for i in range(12)]
    calm = []
    t = T0 + HOUR
    for step in range(110):
        t += 20 * MINUTE
        calm.append(s.rec(msisdn=m, ts=t, direction="MT" if step % 2 == 0 else "MO", peer=friends[step % 12],
                          answered=True, duration_s=120, peer_region="GD-SZ"))
    later, rows = trace(eng, calm, NO_FACTS)
    return first + later, rows


def _expected_restore_ts(rows, below: float, after_ms: int) -> int | None:
    """First record at which the score has stayed below `below` for `after_ms` of event time."""
    since = None
    for r, score, _ in rows:
        if score is None or score >= below:
            since = None
            continue
        if since is None:
            since = r.ts
        elif r.ts - since >= after_ms:
            return r.ts
    return None


@pytest.mark.parametrize("for_hours", [12, 6])
def test_automatic_restore_after_the_score_stays_low_for_the_configured_hours(for_hours):
    cfg = load_cfg(**{"restore.for_hours": for_hours})
    eng = fresh_engine(cfg)
    m = "13100000001"
    events, rows = _suspend_then_calm(eng, Stream(), m)
    tier = [e["tier"] for e in events if e["action"] != "restore"][-1]
    assert cfg["tiers"][tier]["auto_restore"]
    want = _expected_restore_ts(rows, cfg["restore"]["below_score"], for_hours * HOUR)
    assert want is not None, "the calm traffic should bring the score down"
    restores = [e for e in events if e["action"] == "restore"]
    assert len(restores) == 1
    e = restores[0]
    check_event(e, cfg)
    assert e["ts"] == want and e["tier"] == tier
    assert e["score"] < cfg["restore"]["below_score"]
    assert [r["code"] for r in e["reasons"]] == ["risk_normal"]
    assert e["_suspended_ms"] == want - events[0]["ts"]
    assert eng.numbers[m].status == 0
    assert all(x["action"] != "suspend" for x in events[1:])  # low risk after restore: stays restored


def test_no_automatic_restore_when_disabled():
    cfg = load_cfg(**{"restore.enabled": False})
    events, _ = _suspend_then_calm(fresh_engine(cfg), Stream(), "13100000001")
    assert not any(e["action"] == "restore" for e in events)


def test_no_automatic_restore_when_disabled_for_the_lines_tier():
    # find the tier the line ends up in, then switch automatic restore off for that tier only
    events, _ = _suspend_then_calm(fresh_engine(load_cfg()), Stream(), "13100000001")
    tier = [e["tier"] for e in events if e["action"] != "restore"][-1]
    cfg = load_cfg(**{f"tiers.{tier}.auto_restore": False})
    eng = fresh_engine(cfg)
    events, _ = _suspend_then_calm(eng, Stream(), "13100000001")
    assert not any(e["action"] == "restore" for e in events)
    assert eng.numbers["13100000001"].status == 1


# -- determinism ------------------------------------------------------------------------------------------
def _mixed_records() -> list:
    s = Stream()
    personas = persona_records(s, days=2)
    return sorted([r for rs in personas.values() for r in rs] + fraud_ring(s, calls=25),
                  key=lambda r: (r.ts, r.record_id))


def _run_mixed(cfg, records, partitions=1) -> list[dict]:
    det = fresh_detector(cfg, partitions)
    events = run(det, records)
    events += det.on_outcome(outcome(msisdn=RING[0], ts=records[-1].ts + MINUTE, outcome="cleared"))
    return events


@pytest.mark.parametrize("partitions", [1, 3])
def test_same_records_give_byte_identical_events(partitions):
    cfg = load_cfg()
    recs = _mixed_records()
    a = _run_mixed(cfg, recs, partitions)
    b = _run_mixed(load_cfg(), recs, partitions)
    assert any(e["action"] == "suspend" for e in a) and any(e["action"] == "restore" for e in a)
    assert orjson.dumps(a) == orjson.dumps(b)
    ids = [e["event_id"] for e in a]
    assert len(set(ids)) == len(ids)


def test_event_id_depends_on_the_triggering_record():
    cfg = load_cfg()
    recs = _mixed_records()
    a = _run_mixed(cfg, recs)
    first = next(e for e in a if e["action"] == "suspend")
    trigger = next(i for i, r in enumerate(recs) if r.msisdn == first["msisdn"] and r.ts == first["ts"])
    changed = list(recs)
    changed[trigger] = recs[trigger]._replace(record_id=recs[trigger].record_id + "x")
    b = _run_mixed(cfg, changed)
    first_b = next(e for e in b if e["action"] == "suspend")
    assert first_b["event_id"] != first["event_id"]
    assert {k: v for k, v in first_b.items() if k != "event_id"} == {k: v for k, v in first.items() if k != "event_id"}
    # an event from another record keeps its id
    assert [e["event_id"] for e in b[1:]] == [e["event_id"] for e in a[1:]]


def test_event_id_and_model_change_with_the_configuration():
    recs = _mixed_records()
    a = _run_mixed(load_cfg(), recs)
    b = _run_mixed(load_cfg(**{"decisions.escalate_margin": 0.021}), recs)
    assert a[0]["model"] != b[0]["model"]
    assert a[0]["event_id"] != b[0]["event_id"]


# -- partitioning ----------------------------------------------------------------------------------------
# Values of org.apache.kafka.common.utils.Utils.murmur2 from the Java client's own unit test.
JAVA_MURMUR2 = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
                b"a-little-bit-longer-string": -1486304829,
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}


def test_murmur2_matches_the_java_client():
    for data, signed in JAVA_MURMUR2.items():
        assert murmur2(data) & 0xFFFFFFFF == signed & 0xFFFFFFFF
        assert kafka_murmur2(data) & 0xFFFFFFFF == signed & 0xFFFFFFFF
        # Java: Utils.toPositive(murmur2(key)) % numPartitions
        for n in (1, 3, 12):
            assert partition_of(data.decode(), n) == (signed & 0x7FFFFFFF) % n


def test_fast_murmur2_equals_kafka_python_on_every_length():
    rng = random.Random(11)
    for n in list(range(0, 40)) + [255, 256, 257, 1000]:
        for _ in range(50):
            data = bytes(rng.randrange(256) for _ in range(n))
            assert murmur2(data) == kafka_murmur2(data), data


def test_the_compiled_partition_of_a_key_equals_murmur2_on_every_length():
    """`kernel.key_partition` (what `partition_of` calls) against the Python reference, through
    numba's dispatcher and through the entry point the hot path calls, for bytes of every value."""
    rng = random.Random(12)
    for n in list(range(0, 40)) + [255, 256, 257, 1000]:
        for _ in range(40):
            data = bytes(rng.randrange(256) for _ in range(n))
            for partitions in (1, 2, 3, 7, 12, 1000):
                want = (murmur2(data) & 0x7FFFFFFF) % partitions
                assert K.key_partition(data, partitions) == K.key_partition_call(data, partitions) == want, data
    assert partition_of("13800000001", 12) == (murmur2(b"13800000001") & 0x7FFFFFFF) % 12


class _Cluster:
    def __init__(self, n):
        self.n = n

    def topics(self):
        return {"cdr.records"}

    def partitions_for_topic(self, topic):
        return set(range(self.n))

    def available_partitions_for_topic(self, topic):
        return set(range(self.n))


@pytest.mark.parametrize("partitions", [1, 2, 3, 7, 24])
def test_partition_of_agrees_with_kafka_python_default_partitioner(partitions):
    part = DefaultPartitioner()
    cluster = _Cluster(partitions)
    numbers = [f"1{(i * 7919) % 10**10:010d}" for i in range(2000)] + ["12345", "123456789012345"]
    for m in numbers:
        key = m.encode()
        assert partition_of(m, partitions) == part.partition("cdr.records", key, key, None, None, cluster)


def test_detector_keeps_each_numbers_state_in_its_kafka_partition():
    cfg = load_cfg()
    det = Detector(cfg, partitions=3)
    s = Stream()
    numbers = [f"138{i:08d}" for i in range(60)]
    for i, m in enumerate(numbers):
        det.on_record(s.rec(msisdn=m, ts=T0 + i * MINUTE))
    assert set(det.engines) == {0, 1, 2}
    for m in numbers:
        p = partition_of(m, 3)
        assert m in det.engines[p].numbers
        assert all(m not in e.numbers for q, e in det.engines.items() if q != p)
    assert det.numbers_tracked() == len(numbers)
    assert Detector(cfg).partitions == cfg["kafka"]["partitions"]


# -- duplicates and bounded engine state -------------------------------------------------------------------
def test_a_repeated_record_is_counted_once():
    cfg = load_cfg()
    det = Detector(cfg, 1)
    s = Stream()
    a = s.rec(msisdn="13800000001", ts=T0, imei="861")
    b = s.rec(msisdn="13800000002", ts=T0 + 1, imei="861")
    det.on_record(a)
    assert det.on_record(a) == [] and det.duplicates == 1
    assert det.number("13800000001").n_mo == 1
    det.on_record(b)
    det.on_record(b)
    assert det.duplicates == 2
    # the handset index saw each line once: a third line, once their bucket has ended, finds two others
    c = s.rec(msisdn="13800000003", ts=T0 + 5 * 60_000, imei="861")
    assert det.enricher.facts(c).handset_lines == 2


def test_records_at_or_below_the_applied_offset_are_skipped():
    det = Detector(load_cfg(), 1)
    s = Stream()
    m = "13800000001"
    det.on_record(s.rec(msisdn=m, ts=T0), offset=10)
    det.on_record(s.rec(msisdn=m, ts=T0 + 1), offset=11)
    det.on_record(s.rec(msisdn=m, ts=T0 + 2), offset=11)  # replayed position: skipped
    det.on_record(s.rec(msisdn=m, ts=T0 + 3), offset=12)
    assert det.number(m).n_mo == 3 and det.duplicates == 1


def test_idle_numbers_are_forgotten_suspended_ones_kept():
    cfg = load_cfg()
    eng = fresh_engine(cfg)
    s = Stream()
    run(eng, s.blast("13100000001", T0, 6), SharedFacts(2, 0))
    assert eng.numbers["13100000001"].status == 1
    eng.on_record(s.rec(msisdn="13800000001", ts=T0 + HOUR), NO_FACTS)
    later = T0 + (cfg["state"]["idle_expiry_days"] + 1) * DAY
    eng.on_record(s.rec(msisdn="13800000002", ts=later), NO_FACTS)
    assert "13800000001" not in eng.numbers
    assert "13100000001" in eng.numbers  # a suspended line is never forgotten silently
    assert "13800000002" in eng.numbers


def test_records_later_than_the_allowed_lateness_are_set_aside():
    cfg = load_cfg()
    lateness = cfg["state"]["allowed_lateness_minutes"] * MINUTE
    det = Detector(cfg, 1)
    s = Stream()
    m = "13800000001"
    det.on_record(s.rec(msisdn=m, ts=T0 + 3 * HOUR))
    det.on_record(s.rec(msisdn=m, ts=T0 + 3 * HOUR - lateness))  # exactly at the limit: folded in
    assert det.last_result == "ok" and det.number(m).n_mo == 2
    det.on_record(s.rec(msisdn=m, ts=T0 + 3 * HOUR - lateness - 1))
    assert det.last_result == "late" and det.late == 1
    assert det.number(m).n_mo == 2


def _storm(cfg, lines: int) -> list[dict]:
    det = fresh_detector(cfg)
    s = Stream()
    events = []
    for k in range(lines):
        m = f"131000001{k:02d}"
        det.on_profile(profile(msisdn=m, plan="prepaid", id_verified=False, activated_ts=T0 - DAY))
        for i in range(cfg["decisions"]["min_outgoing_calls"]):
            r = s.rec(msisdn=m, ts=T0 + k * 1000 + i * 100, answered=False, duration_s=0, peer_region=PROVINCES[i])
            events += det.on_record(r, SharedFacts(12, 12))
    return events


def test_storm_breaker_turns_decisions_to_shadow_past_the_configured_rate():
    cfg = load_cfg(**{"storm.max_suspensions_per_minute": 3})
    events = _storm(cfg, 6)
    assert [e["action"] for e in events] == ["suspend"] * 6
    assert [e["mode"] for e in events] == ["enforce"] * 3 + ["shadow"] * 3
    assert all(e.get("_breaker") for e in events[3:])
    off = _storm(load_cfg(**{"storm.max_suspensions_per_minute": 3, "storm.enabled": False}), 6)
    assert [e["mode"] for e in off] == ["enforce"] * 6


def test_suspended_lines_are_counted_as_decisions_happen_and_match_a_scan():
    """The suspended-lines gauge is kept by suspend/escalate/restore, not by scanning every number
    at each commit; a scan over the packed states must agree, also after a restore."""
    from detector.contract import Outcome, parse_cdr, parse_profile
    from detector.generator import GeneratorSpec, generate_profiles, generate_records

    cfg = load_cfg()
    cfg["tiers"]["low"]["threshold"] = 0.1  # many decisions, some of them wrong, to be cleared
    det = Detector(cfg)
    spec = GeneratorSpec(subscribers=400, hours=30, seed=11)
    for p in generate_profiles(spec):
        det.on_profile(parse_profile(p))
    actions = Counter()
    for r in generate_records(spec):
        rec = parse_cdr(r)
        for e in det.on_record(rec):
            actions[e["action"]] += 1
            if e["action"] == "suspend" and actions["suspend"] % 2:  # an operator clears every other one
                for e2 in det.on_outcome(Outcome(e["msisdn"], rec.ts + 1, "cleared")):
                    actions[e2["action"]] += 1
    assert actions["suspend"] >= 5 and actions["restore"] >= 2, actions
    total = Counter()
    for eng in det.engines.values():
        scanned = {t.name: n for t, n in zip(eng.tiers, eng.count_suspended()) if n}
        assert eng.suspended_by_tier() == scanned
        total.update(scanned)
    assert sum(total.values()) == actions["suspend"] - actions["restore"] > 0
    eng = next(e for e in det.engines.values() if e.suspended_by_tier())
    want = eng.suspended_by_tier()
    eng._suspended = [0] * len(eng.tiers)  # as after states were loaded from a changelog
    eng.suspended_stale = True
    assert eng.suspended_by_tier() == want


class _NeverReusedStore(F.NumberStore):
    """Reference: one chunk for everything, no number is ever put to rest (packed), and a
    forgotten number's row is never used again."""

    CHUNK = 1 << 16

    def __delitem__(self, msisdn: str) -> None:
        super().__delitem__(msisdn)
        self._free.pop()

    def rest(self, horizon: int) -> int:
        return 0


class _TinyChunkStore(F.NumberStore):
    CHUNK = 3


def test_where_a_state_is_held_never_changes_a_decision_or_a_state(monkeypatch):
    """States are rows of chunked arrays, numbers quiet for a while are packed and freed of their
    row until their next record, and a freed row is given to the next number that needs one:
    events and final states equal those of a store that never packs nor reuses a row, however
    small the chunks (a reused row that kept anything of its last number, a lossy pack, or a state
    taken before a sweep that went stale, would show here)."""
    from detector import core as core_mod
    from detector.contract import parse_cdr, parse_profile
    from detector.generator import GeneratorSpec, generate_profiles, generate_records

    cfg = load_cfg()
    cfg["tiers"]["low"]["threshold"] = 0.2  # decisions, so tiers and restores are exercised too
    cfg["state"]["idle_expiry_days"] = 0.25  # numbers are forgotten, and their rows reused
    cfg["state"]["rest_after_hours"] = 1  # numbers go to rest and come back often
    spec = GeneratorSpec(subscribers=300, hours=50, seed=4)
    profiles = [parse_profile(p) for p in generate_profiles(spec)]
    records = [parse_cdr(r) for r in generate_records(spec)]

    def run(store_cls):
        monkeypatch.setattr(core_mod, "NumberStore", store_cls)
        det = Detector(cfg)
        for p in profiles:
            det.on_profile(p)
        events = [e["event_id"] for r in records for e in det.on_record(r)]
        states = {m: st.to_dict() for eng in det.engines.values() for m, st in eng.numbers.items()}
        rows_taken = sum(len(eng.numbers._owner) for eng in det.engines.values())
        states = {m: st.to_dict() for eng in det.engines.values() for m, st in eng.numbers.items()}
        return events, states, rows_taken

    ref_events, ref_states, ref_rows = run(_NeverReusedStore)
    assert len(ref_events) >= 5 and len(ref_states) > 100
    for store_cls in (F.NumberStore, _TinyChunkStore):
        events, states, rows_taken = run(store_cls)
        assert rows_taken < ref_rows  # rows were given back and taken again
        assert events == ref_events
        assert states == ref_states
