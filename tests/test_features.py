"""detector/features.py (and the cross-number Enricher of core.py): small cases computed by hand."""
from __future__ import annotations

import gc
import mmap
import random
import weakref

import numpy as np
import orjson
import pytest

from conftest import DAY, HOUR, MINUTE, T0, Stream, load_cfg
from detector import features as F
from detector import kernel as K
from detector import state
from detector.shared import Enricher, SharedFacts
from detector.features import (
    CONTACTS,
    PROVINCE_RING,
    FeatureConfig,
    NumberState,
    callback_share,
    province_spread,
    update_mo,
    update_mt,
)

HOME_PROVINCE = "GD"
ME = "13800000001"


@pytest.fixture
def fc() -> FeatureConfig:
    return FeatureConfig(load_cfg()["features"])


def mo(st: NumberState, fc: FeatureConfig, s: Stream, **fields) -> None:
    fields.setdefault("ts", st.last_ts)
    update_mo(st, s.rec(msisdn=ME, direction="MO", **fields), HOME_PROVINCE, fc)


def mt(st: NumberState, s: Stream, **fields) -> None:
    fields.setdefault("ts", st.last_ts)
    update_mt(st, s.rec(msisdn=ME, direction="MT", **fields))


def reference_shares(flags: list[float], window: float) -> list[float]:
    """The documented rule: a plain mean over the first `window` calls, then an EWMA with 1/window."""
    out, s = [], 0.0
    for n, x in enumerate(flags, 1):
        if n <= window:
            s = sum(flags[:n]) / n
        else:
            s = s + (x - s) / window
        out.append(s)
    return out


# -- per-call shares -------------------------------------------------------------------------------
def test_new_peer_share_is_a_plain_mean_over_the_first_calls(fc):
    st, s = NumberState(T0), Stream()
    seen = []
    for peer in ["13900000001", "13900000001", "13900000002", "13900000001"]:
        mo(st, fc, s, peer=peer)
        seen.append(st.shares[F.S_NEW_PEER])
    # new, repeat, new, repeat -> running means 1/1, 1/2, 2/3, 2/4
    assert seen == pytest.approx([1.0, 0.5, 2 / 3, 0.5], abs=1e-15)


def test_new_peer_share_after_n_calls_to_new_numbers_then_repeats(fc):
    st, s = NumberState(T0), Stream()
    for i in range(8):
        mo(st, fc, s, peer=f"1390000{i:04d}")
    assert st.shares[F.S_NEW_PEER] == 1.0
    for _ in range(3):  # past the 8-call window: EWMA with alpha 1/8, each repeat multiplies by 7/8
        mo(st, fc, s, peer="13900000007")
    assert st.shares[F.S_NEW_PEER] == pytest.approx((7 / 8) ** 3, abs=1e-15)
    mo(st, fc, s, peer="13911111111")  # a new one moves 1/8 of the way to 1
    assert st.shares[F.S_NEW_PEER] == pytest.approx((7 / 8) ** 3 + (1 - (7 / 8) ** 3) / 8, abs=1e-15)


@pytest.mark.parametrize("window", [4, 8, 16])
def test_new_peer_share_follows_mean_then_ewma_formula(window):
    fc = FeatureConfig(load_cfg(**{"features.share_window_calls": window})["features"])
    st, s = NumberState(T0), Stream()
    peers = [f"139{i % 5 if i % 3 else i + 100:08d}" for i in range(40)]
    flags, known = [], set()
    got = []
    for p in peers:
        flags.append(0.0 if p in known else 1.0)
        known.add(p)
        mo(st, fc, s, peer=p)
        got.append(st.shares[F.S_NEW_PEER])
    assert got == pytest.approx(reference_shares(flags, window), abs=1e-12)


def test_other_shares_of_one_call_each(fc):
    st, s = NumberState(T0), Stream()
    mo(st, fc, s, peer_region="GD-GZ", answered=True, duration_s=2)  # same province, short answered
    assert st.shares[F.S_OUT_OF_PROVINCE] == 0.0 and st.shares[F.S_SHORT] == 1.0
    mo(st, fc, s, peer_region="SC", answered=False, duration_s=0)  # other province, unanswered
    assert st.shares[F.S_OUT_OF_PROVINCE] == 0.5
    assert st.shares[F.S_UNANSWERED] == 0.5
    assert st.shares[F.S_SHORT] == 0.5  # an unanswered call is not a short answered one
    mo(st, fc, s, peer_region="INTL-44", duration_s=300)  # international, not premium
    mo(st, fc, s, peer_region="INTL-882", duration_s=300)  # premium-rate destination
    assert st.shares[F.S_INTL] == 0.5
    assert st.shares[F.S_PREMIUM] == 0.25
    assert st.shares[F.S_OUT_OF_PROVINCE] == 0.75
    assert st.decayed[F.D_PREMIUM_DAY] == 1.0


def test_night_share_uses_local_time(fc):
    st, s = NumberState(T0), Stream()
    # T0 is 10:00 local (UTC+8); T0 + 16 h is 02:00 local, inside [0, 6)
    mo(st, fc, s, ts=T0)
    mo(st, fc, s, ts=T0 + 16 * HOUR)
    assert st.shares[F.S_NIGHT] == 0.5
    fc_utc = FeatureConfig(load_cfg(**{"features.utc_offset_hours": 0})["features"])
    st2, s2 = NumberState(T0), Stream()
    mo(st2, fc_utc, s2, ts=T0 + 16 * HOUR)  # 18:00 UTC: not night in UTC
    assert st2.shares[F.S_NIGHT] == 0.0


def test_sms_do_not_move_voice_only_shares_once_warm(fc):
    st, s = NumberState(T0), Stream()
    for i in range(10):
        mo(st, fc, s, answered=i % 2 == 0, duration_s=60 if i % 2 == 0 else 0)
    before = st.shares[F.S_UNANSWERED], st.shares[F.S_SHORT]
    mo(st, fc, s, service="sms", duration_s=0, answered=True)
    assert (st.shares[F.S_UNANSWERED], st.shares[F.S_SHORT]) == before


def test_voice_only_shares_are_a_mean_over_voice_calls_when_sms_come_first(fc):
    """BUG: the warm-up step a = 1/n_mo counts SMS, but the unanswered/short shares only move on
    voice calls. A line that sends 4 SMS and then places 4 voice calls, none answered, reports an
    unanswered share of 0.5 (4 SMS weigh as if they were answered calls), and the reason text
    tells the customer "50% of its recent calls went unanswered". The mean over its voice calls is
    1.0. Fix: keep a voice-call count and use max(alpha, 1/n_voice) for the voice-only shares (and
    that count as their support in RiskModel.raw_features)."""
    st, s = NumberState(T0), Stream()
    for _ in range(4):
        mo(st, fc, s, service="sms", duration_s=0, answered=True)
    for _ in range(4):
        mo(st, fc, s, service="voice", duration_s=0, answered=False)
    assert st.shares[F.S_UNANSWERED] == pytest.approx(1.0)


# -- callbacks and provinces -------------------------------------------------------------------------
def test_callback_share_after_a_calls_b_and_b_calls_a(fc):
    st, s = NumberState(T0), Stream()
    b, c, d = "13900000002", "13900000003", "13900000004"
    assert callback_share(st) == (0.0, 0)
    mo(st, fc, s, peer=b)
    assert callback_share(st) == (0.0, 1)
    mt(st, s, peer=b)
    assert callback_share(st) == (1.0, 1)
    mo(st, fc, s, peer=c)
    assert callback_share(st) == (0.5, 2)
    mt(st, s, peer=d)  # someone we never called: not in the denominator
    assert callback_share(st) == (0.5, 2)
    mo(st, fc, s, peer=d)  # calling back someone who called us first is not a new peer
    assert callback_share(st) == (2 / 3, 3)
    assert st.shares[F.S_NEW_PEER] == pytest.approx(2 / 3)  # b new, c new, d known


def test_callback_seen_from_the_callee_side(fc):
    st, s = NumberState(T0), Stream()
    mt(st, s, peer="13900000002")  # B is called by A ...
    mo(st, fc, s, peer="13900000002")  # ... and calls A back
    assert callback_share(st) == (1.0, 1)
    assert st.shares[F.S_NEW_PEER] == 0.0


def test_province_spread_over_a_known_sequence(fc):
    st, s = NumberState(T0), Stream()
    assert province_spread(st) == 0.0
    got = []
    for region in ["SC", "SC-CD", "HEN", "SC"]:
        mo(st, fc, s, peer_region=region)
        got.append(province_spread(st))
    assert got == pytest.approx([1 / 1, 1 / 2, 2 / 3, 2 / 4])
    for region in ["HUN", "HB", "JX", "AH", "FJ", "GX", "YN", "GZ"]:  # now 12 calls, 10 provinces
        mo(st, fc, s, peer_region=region)
    assert st.n_mo == PROVINCE_RING
    assert province_spread(st) == pytest.approx(10 / 12)
    for _ in range(PROVINCE_RING):  # the ring keeps the last 12 only
        mo(st, fc, s, peer_region="CQ")
    assert province_spread(st) == pytest.approx(1 / 12)
    mo(st, fc, s, peer_region="INTL-44")
    mo(st, fc, s, peer_region="INTL-1")  # each country is its own "province"
    assert province_spread(st) == pytest.approx(3 / 12)


def test_province_spread_counts_every_distinct_province():
    """BUG: provinces are stored in the ring as `crc32(code) % 255 + 1`, one byte, so distinct
    provinces collide: JS/ZJ (Jiangsu, Zhejiang), HEB/LN/JL and SD/NM share ids, and a line calling
    those 12 provinces shows a spread of 8/12 instead of 12/12 (the sample's own province codes
    collide like this). Fix: store a collision-free id — e.g. the full crc32 in an array("I"), or a
    fixed table of the province codes — with a number-state version bump."""
    fc = FeatureConfig(load_cfg()["features"])
    st, s = NumberState(T0), Stream()
    provinces = ["JS", "ZJ", "HEB", "LN", "JL", "SD", "NM", "SC", "HEN", "HUN", "AH", "FJ"]
    for p in provinces:
        mo(st, fc, s, peer_region=p)
    assert province_spread(st) == 1.0


# -- time-decayed counts ------------------------------------------------------------------------------
def test_hourly_count_halves_after_one_hour_daily_after_one_day(fc):
    st, s = NumberState(T0), Stream()
    mo(st, fc, s, ts=T0)
    assert st.decayed[F.D_MO_HOUR] == 1.0 and st.decayed[F.D_MO_DAY] == 1.0
    mo(st, fc, s, ts=T0 + HOUR)
    assert st.decayed[F.D_MO_HOUR] == pytest.approx(0.5 + 1.0, rel=1e-12)
    assert st.decayed[F.D_MO_DAY] == pytest.approx(2 ** (-1 / 24) + 1.0, rel=1e-12)
    mt(st, s, ts=T0 + 2 * HOUR)  # an MT record decays the outgoing counts too
    assert st.decayed[F.D_MO_HOUR] == pytest.approx(0.75, rel=1e-12)
    assert st.decayed[F.D_MT_DAY] == 1.0
    mt(st, s, ts=T0 + 2 * HOUR + DAY)
    assert st.decayed[F.D_MT_DAY] == pytest.approx(0.5 + 1.0, rel=1e-12)
    assert st.decayed[F.D_MO_DAY] == pytest.approx((2 ** (-1 / 24) + 1.0) * 2 ** (-25 / 24), rel=1e-12)


def test_premium_count_decays_with_a_day_half_life(fc):
    st, s = NumberState(T0), Stream()
    for _ in range(4):
        mo(st, fc, s, ts=T0, peer_region="INTL-882")
    assert st.decayed[F.D_PREMIUM_DAY] == 4.0
    mt(st, s, ts=T0 + DAY)
    assert st.decayed[F.D_PREMIUM_DAY] == pytest.approx(2.0, rel=1e-12)


def test_late_record_does_not_undecay_or_move_the_clock_back(fc):
    st, s = NumberState(T0), Stream()
    mo(st, fc, s, ts=T0 + HOUR)
    mo(st, fc, s, ts=T0)  # late by an hour
    assert st.last_ts == T0 + HOUR
    assert st.decayed_ts == T0 + HOUR
    assert st.decayed[F.D_MO_HOUR] == 2.0


def test_handset_change_is_counted_and_decays(fc):
    st, s = NumberState(T0), Stream()
    mo(st, fc, s, imei="860000000000001")
    assert st.imei_changes == 0.0  # the first handset is not a change
    mo(st, fc, s, imei="860000000000002")
    mt(st, s, imei="860000000000002")
    assert st.imei_changes == 1.0
    mt(st, s, ts=T0 + DAY, imei="860000000000002")
    assert st.imei_changes == pytest.approx(0.5)


# -- bounded state -------------------------------------------------------------------------------------
def test_contact_ring_is_bounded_and_forgets_the_oldest(fc):
    st, s = NumberState(T0), Stream()
    peers = [f"1390000{i:04d}" for i in range(CONTACTS + 10)]
    for p in peers:
        mo(st, fc, s, peer=p)
    assert len(st.contacts) == CONTACTS and len(st.contact_flags) == CONTACTS
    assert len(set(st.contacts)) == CONTACTS
    assert st.shares[F.S_NEW_PEER] == 1.0
    mo(st, fc, s, peer=peers[-1])  # recent: remembered, not new
    assert st.shares[F.S_NEW_PEER] == pytest.approx(7 / 8)
    mo(st, fc, s, peer=peers[0])  # pushed out of the ring long ago: new again
    assert st.shares[F.S_NEW_PEER] == pytest.approx(7 / 8 + (1 / 8) / 8)
    _, called = callback_share(st)
    assert called == CONTACTS


def _busy_state(fc, n: int) -> NumberState:
    st, s = NumberState(T0), Stream()
    for i in range(n):
        kind = i % 5
        fields = {"ts": T0 + i * 7 * MINUTE, "peer": f"15{i:09d}", "cell_id": f"c{i % 50}",
                  "imei": f"86{i // 300:013d}", "peer_region": ("SC", "GD-GZ", "INTL-882", "HEN", "BJ")[kind]}
        if kind == 4:
            mt(st, s, **fields)
        else:
            mo(st, fc, s, service="sms" if kind == 3 else "voice", answered=kind != 1, **fields)
    return st


def test_recent_record_ids_are_a_bounded_ring():
    st = NumberState(T0)
    ids = [f"r{i:07d}" for i in range(F.RECENT_IDS + 4)]
    assert [F.seen_before(st, r) for r in ids] == [False] * len(ids)
    assert F.seen_before(st, ids[-1]) and F.seen_before(st, ids[-F.RECENT_IDS])
    assert not F.seen_before(st, ids[0])  # pushed out: remembered again as new
    assert len(st.recent_ids) == F.RECENT_IDS


def test_state_size_stays_bounded_after_thousands_of_records(fc):
    small, big = _busy_state(fc, 200), _busy_state(fc, 5000)
    assert big.n_mo + big.n_mt == 5000
    d_small, d_big = small.to_dict(), big.to_dict()
    for key, value in d_big.items():
        if isinstance(value, list):
            assert len(value) == len(d_small[key]), key  # no container grows with traffic
        else:
            assert isinstance(value, (int, float, str, bool)), key
    assert len(big.contacts) == CONTACTS and len(big.provinces) == PROVINCE_RING
    assert len(orjson.dumps(d_big)) < 4096


# -- snapshots -----------------------------------------------------------------------------------------
def _suspended_busy_state(fc):
    st = _busy_state(fc, 137)
    st.status, st.tier, st.suspended_ts, st.peak_score = 1, 1, T0 + 5 * HOUR, 0.8731
    st.cleared_score, st.restores, st.fraud_confirmed, st.below_since = 0.61, 2, True, T0 + 6 * HOUR
    st.applied_offset = 2**40 + 3
    return st


def _next_record(st):
    return Stream("z").rec(msisdn=ME, ts=st.last_ts + HOUR, peer="13999999999", peer_region="HEN",
                           answered=False, duration_s=0)


def test_to_dict_from_dict_round_trips_exactly(fc):
    st = _suspended_busy_state(fc)
    d = st.to_dict()
    assert d["v"] == F.PACK_VERSION
    assert set(d) == set(F.STATE_FIELDS) | {"v"}
    back = NumberState.from_dict(d)
    assert back.to_dict() == d
    via_json = NumberState.from_dict(orjson.loads(orjson.dumps(d)))
    assert orjson.dumps(via_json.to_dict()) == orjson.dumps(d)
    for name in F.STATE_FIELDS:
        assert type(getattr(via_json, name)) is type(getattr(st, name)), name
    # and the restored state evolves exactly like the original
    nxt = _next_record(st)
    update_mo(st, nxt, HOME_PROVINCE, fc)
    update_mo(via_json, nxt, HOME_PROVINCE, fc)
    assert via_json.to_dict() == st.to_dict()


def test_pack_unpack_round_trips_exactly_and_is_small(fc):
    st = _suspended_busy_state(fc)
    st.tier = -1  # signed
    blob = st.pack()
    assert len(blob) <= F.PACKED_MAX < 600 and blob[0] == F.PACK_VERSION
    back = NumberState.unpack(blob)
    assert back.to_dict() == st.to_dict()
    for name in F.STATE_FIELDS:
        assert type(getattr(back, name)) is type(getattr(st, name)), name
    assert back.pack() == blob
    assert F.packed_last_ts(blob) == st.last_ts and F.packed_status_tier(blob) == (1, -1)
    nxt = _next_record(st)
    update_mo(st, nxt, HOME_PROVINCE, fc)
    update_mo(back, nxt, HOME_PROVINCE, fc)
    assert back.to_dict() == st.to_dict()


def _pack_v2(st):
    """A state as version 2 wrote it: fixed 551 bytes, every ring whole."""
    return b"".join((F._HEAD.pack(2, *F._GET_SCALARS(st)), st.decayed.tobytes(), st.shares.tobytes(),
                     st.contacts.tobytes(), st.provinces.tobytes(), st.recent_ids.tobytes(), bytes(st.contact_flags)))


@pytest.mark.parametrize("calls", [0, 1, 3, 20, 137])
def test_packing_drops_only_zero_ring_tails_and_reads_version_2(fc, calls):
    st = _busy_state(fc, calls) if calls else NumberState(T0)
    blob = st.pack()
    full = _pack_v2(st)
    assert len(full) == F.PACKED_SIZE_V2 == 551
    if calls < 3:
        assert len(blob) < 300  # a number seen a few times is packed small
    assert len(blob) <= F.PACKED_MAX
    for packed in (blob, full):
        back = NumberState.unpack(packed)
        assert back.to_dict() == st.to_dict()
        assert back.pack() == blob
        assert F.packed_last_ts(packed) == st.last_ts


def test_packing_keeps_zero_items_inside_a_ring(fc):
    st = _busy_state(fc, 5)
    st.contacts[0] = 0  # a peer whose hash is 0, before others: must survive
    st.recent_ids[F.RECENT_IDS - 1] = 1 << 63  # only the high byte of the last item is set
    st.provinces[1] = 0
    back = NumberState.unpack(st.pack())
    assert back.to_dict() == st.to_dict()


@pytest.mark.parametrize("blob", [b"", b"\x01" + bytes(F.PACKED_SIZE_V2 - 1), bytes(F.PACKED_SIZE_V2 + 1),
                                  b"\x03" + bytes(F.PACKED_MIN - 1) + b"\x00",  # counts say 0, one byte over
                                  b"\x03" + bytes(F._RINGS_AT - 1) + bytes([40, 0, 0, 0])])  # 40 contacts of 32
def test_unpack_rejects_unknown_version_or_size(blob):
    with pytest.raises(ValueError, match="version"):
        NumberState.unpack(blob)


def test_version_1_json_state_is_still_read(fc):
    """Changelogs written before the packed format hold JSON v1 values with the IMEI itself."""
    st = _suspended_busy_state(fc)
    v1 = st.to_dict() | {"v": 1, "imei": "356000000000001"}
    del v1["imei_hash"]
    back = NumberState.from_dict(v1)
    assert back.imei_hash == F.hash64("356000000000001")
    assert {k: v for k, v in back.to_dict().items() if k != "imei_hash"} == {
        k: v for k, v in st.to_dict().items() if k != "imei_hash"}


def test_number_store_holds_states_in_rows_or_at_rest_and_reuses_freed_rows(fc):
    class Store(F.NumberStore):
        CHUNK = 2  # so that a third number in use needs a second chunk

    store = Store()
    a, b = _suspended_busy_state(fc), _busy_state(fc, 20)
    store["a"], store["b"] = a, b  # copied in, at rest (packed), as a restore puts them
    assert len(store) == 2 and "a" in store and "c" not in store and set(store.cold) == {"a", "b"}
    got = store.get("a")  # taken into a row
    assert "a" in store.rows and "a" not in store.cold and got.to_dict() == a.to_dict()
    got.n_mo += 1  # changed in place, through any view of the row
    assert store["a"].n_mo == a.n_mo + 1 and a.n_mo == a.to_dict()["n_mo"]
    assert NumberState.unpack(store.packed("a")).to_dict() == store["a"].to_dict()
    assert store["b"].to_dict() == b.to_dict()
    c = store.new("c", T0 + 10 * DAY)
    assert c.to_dict() == NumberState(T0 + 10 * DAY).to_dict() and len(store._chunks) == 2
    assert sorted((m, s) for m, _, s, _ in store.scan()) == [("a", 1), ("b", 0), ("c", 0)]
    assert sorted(store.idle(T0 + 10 * DAY + 1)) == ["b", "c"]  # suspended "a" is never idle
    want = {m: store[m].to_dict() for m in "abc"}
    assert store.rest(T0 + 10 * DAY) == 2 and set(store.cold) == {"a", "b"} and set(store.rows) == {"c"}
    assert store.rows == {"c": 0} and len(store._chunks) == 1  # compacted: the second chunk is gone
    assert store["c"].to_dict() == want["c"]
    assert sorted(store.idle(T0 + 10 * DAY + 1)) == ["b", "c"]  # in rows or at rest alike
    assert sorted((m, s) for m, _, s, _ in store.scan()) == [("a", 1), ("b", 0), ("c", 0)]
    assert {m: store[m].to_dict() for m in "abc"} == want  # lossless, back in rows
    assert store.pop("b").to_dict() == want["b"] and len(store) == 2
    rows_taken = len(store._owner)
    d = store.new("d", T0 + 7)  # takes a freed row, and nothing of its last number with it
    assert d.to_dict() == NumberState(T0 + 7).to_dict() and len(store._owner) == rows_taken
    del store["a"]
    store.rest(T0 + 11 * DAY)
    del store["c"]  # at rest
    assert len(store) == 1 and store.get("a") is None and store.packed("c") is None
    assert [m for m, *_ in store.scan()] == ["d"]


def test_a_dropped_chunk_gives_its_memory_back_to_the_system(fc):
    """Each chunk is an anonymous mapping of its own, unmapped when compact drops it, so a
    peak of numbers in use leaves no resident hole in the heap (docs/benchmarks.md, 10 M)."""
    class Store(F.NumberStore):
        CHUNK = 3

    store = Store()
    for k in range(7):
        store.new(f"n{k}", T0 + k)
    assert len(store._chunks) == 3
    mappings = [weakref.ref(rows.base.obj) for rows in store._chunks]
    assert all(isinstance(m(), mmap.mmap) for m in mappings)
    assert all(rows.flags.writeable and (rows["version"] == 2).all() for rows in store._chunks)
    store.new("n0", T0 + DAY)  # the one number still in use after the sweep below
    want = store["n0"].to_dict()
    assert store.rest(T0 + 10) == 6 and len(store._chunks) == 1
    gc.collect()
    assert mappings[0]() is not None and mappings[1]() is None and mappings[2]() is None
    assert store["n0"].to_dict() == want and store["n5"].to_dict() == NumberState(T0 + 5).to_dict()


def _rest_form_size(blob: bytes) -> int:
    """The rest form's length, worked out here from the layout: its head, a bit for each byte of
    the packed head and ring counts, those of them that are not zero (first_ts and decayed_ts
    taken xor last_ts, last_pop_ts and applied_offset plus one; last_ts, status and tier are in
    the form's head), then the rings as they are."""
    first, last, decayed, last_pop, applied = (int.from_bytes(blob[k:k + 8], "little") for k in (1, 9, 17, 25, 49))
    elided = bytearray(blob[:F.PACKED_MIN])
    for at, v in ((1, first ^ last), (17, decayed ^ last), (25, (last_pop + 1) % 2**64), (49, (applied + 1) % 2**64)):
        elided[at:at + 8] = v.to_bytes(8, "little")
    for at in (*range(9, 17), 84, 86):
        elided[at] = 0
    return K.REST_HEAD + (len(elided) + 7) // 8 + len(elided) - elided.count(0) + len(blob) - len(elided)


@pytest.mark.parametrize("calls", [0, 1, 3, 20, 137])
def test_a_number_at_rest_is_held_without_its_zero_bytes_and_given_back_exactly(fc, calls):
    st = _busy_state(fc, calls) if calls else NumberState(T0)
    st.status, st.tier = 1, -1  # read from the rest form's head by the sweeps
    store = F.NumberStore()
    for name, blob in (("v3", st.pack()), ("v2", _pack_v2(st))):
        store.put_packed(name, blob)
        assert store.packed(name) == blob  # exactly what was put to rest, whatever its version
        form = store.cold[name]
        assert len(form) == _rest_form_size(blob)  # no zero byte of the head is held
        if calls <= 3 and name == "v3":
            assert len(form) < 0.8 * len(blob)  # a number seen a few times: mostly zeros
        assert store.get(name).to_dict() == st.to_dict()
    assert sorted(store.scan()) == [("v2", st.last_ts, 1, -1), ("v3", st.last_ts, 1, -1)]
    store.rest(st.last_ts + 1)  # from rows back to rest
    assert {m: store.packed(m) for m in ("v2", "v3")} == {"v2": st.pack(), "v3": st.pack()}
    assert store.idle(st.last_ts + 1) == []  # suspended
    store["v3"].status = 0
    store.rest(st.last_ts + 1)
    assert store.idle(st.last_ts + 1) == ["v3"] and store.idle(st.last_ts) == []


def test_the_rest_form_round_trips_any_bytes():
    rng = np.random.default_rng(5)
    buf, out = np.zeros(K.REST_MAX, np.uint8), np.zeros(K.PACKED_MAX_V3, np.uint8)
    for n in (F.PACKED_MIN, 300, F.PACKED_SIZE_V2, F.PACKED_MAX):
        for density in (0.0, 0.1, 0.5, 1.0):
            src = (rng.integers(1, 256, n) * (rng.random(n) < density)).astype(np.uint8)
            for given in (src.tobytes(), src):  # a packed state, or a row packed into a buffer
                m = K.to_rest(given, n, buf)
                assert m <= K.REST_MAX
                assert K.from_rest(buf[:m].tobytes(), out) == n
                assert out[:n].tobytes() == src.tobytes()


@pytest.mark.parametrize("version", [4, 0, None, "3"])
def test_from_dict_rejects_unknown_version(fc, version):
    d = NumberState(T0).to_dict()
    if version is None:
        del d["v"]
    else:
        d["v"] = version
    with pytest.raises(ValueError, match="version"):
        NumberState.from_dict(d)


# -- Enricher: facts across numbers, as of the last completed time bucket ------------------------------
BUCKET = 5 * MINUTE  # features.shared_bucket_minutes


def test_handset_count_for_three_numbers_on_one_imei_is_two_other_lines():
    enr = Enricher(load_cfg())
    s = Stream()
    imei = "860000000012345"
    got = [enr.facts(s.rec(msisdn=m, ts=T0 + i * MINUTE, imei=imei)).handset_lines
           for i, m in enumerate(["13800000001", "13800000002", "13800000003"])]
    assert got == [0, 0, 0]  # the bucket they share has not ended yet
    assert enr.facts(s.rec(msisdn="13800000001", ts=T0 + BUCKET, imei=imei)).handset_lines == 2
    assert enr.facts(s.rec(msisdn="13800000009", ts=T0 + BUCKET + 1, imei="860000000099999")).handset_lines == 0
    # the others expire after features.shared_window_hours (72 h by default)
    later = T0 + 72 * HOUR + 2 * BUCKET
    assert enr.facts(s.rec(msisdn="13800000001", ts=later, imei=imei)).handset_lines == 0


def test_facts_do_not_depend_on_the_order_of_other_numbers_records():
    """The point of bucket masks: one process or many, any interleaving, the same answer."""
    s = Stream()
    imei = "860000000012345"
    early = [s.rec(msisdn=f"1380000000{i}", ts=T0 + i * 37_000, imei=imei, cell_id="c9") for i in range(6)]
    probe = s.rec(msisdn="13800000001", ts=T0 + 3 * BUCKET, imei=imei, cell_id="c9")
    answers = set()
    for order in (early, early[::-1], early[3:] + early[:3]):
        enr = Enricher(load_cfg())
        for r in order:
            enr.facts(r)
        answers.add(enr.facts(probe))
    assert answers == {SharedFacts(5, 0)}


def test_merging_another_writers_pairs_equals_seeing_the_records():
    s = Stream()
    recs = [s.rec(msisdn=f"1380000000{i % 3}", ts=T0 + i * MINUTE, imei="860000000012345", cell_id="c1")
            for i in range(30)]
    whole = Enricher(load_cfg())
    for r in recs:
        whole.facts(r)
    a, b = Enricher(load_cfg(), track_changes=True), Enricher(load_cfg(), track_changes=True)
    for r in recs:
        (a if r.msisdn.endswith("0") else b).facts(r)
    for kind, key, m, entry, _ in b.drain_changes():
        a.merge(kind, key, m, entry)
    assert a.handsets == whole.handsets and a.cells == whole.cells


def test_each_pair_holds_exactly_the_buckets_its_line_was_seen_in():
    """The per-record observation is written out for speed (no pack/unpack helpers on the usual
    paths): whatever the order — late records, repeats in a bucket, a line's first record on a
    thing, the MO mask widening under the MT one — every pair must be the packed form of the
    buckets its line was seen in, by direction, based at the earliest; and merging the published
    pairs into an empty index must give the same index."""
    from detector.shared import _M32, _cell_unpack

    rng = random.Random(5)
    s = Stream()
    lines = [f"1390000{i:04d}" for i in range(12)]
    handsets = [f"86{i:013d}" for i in range(5)]
    cells = [f"c{i}" for i in range(4)]
    enr = Enricher(load_cfg(), track_changes=True)
    seen_h: dict[tuple[str, str], set[int]] = {}
    seen_c: dict[tuple[str, str], tuple[set[int], set[int]]] = {}
    ts = T0 + 10 * HOUR
    for _ in range(3000):  # ~21 h: no sweep drops a bucket yet (cells keep a day and more)
        ts += rng.randrange(0, 50_000)
        at = ts - rng.choice([0, 0, 0, 0, rng.randrange(0, 50 * MINUTE)])  # some records late
        m, imei, cell = rng.choice(lines), rng.choice(handsets), rng.choice(cells)
        d = rng.choice(["MO", "MO", "MT"])
        enr.facts(s.rec(msisdn=m, ts=at, imei=imei, cell_id=cell, direction=d))
        q = at // BUCKET
        seen_h.setdefault((imei, m), set()).add(q)
        seen_c.setdefault((cell, m), (set(), set()))[d == "MT"].add(q)

    def mask(buckets: set[int], base: int) -> int:
        return sum(1 << (b - base) for b in buckets)

    assert {(imei, m) for imei in enr.handsets for m in enr._hs_lines(imei)} == set(seen_h)
    for (imei, m), qs in seen_h.items():
        p = enr._hs_get(imei, m)
        base = min(qs)
        assert (p & _M32, p >> 32) == (base, mask(qs, base))
    assert {(c, m) for c, ls in enr.cells.items() for m in ls} == set(seen_c)
    for (cell, m), (mo, mt) in seen_c.items():
        base = min(mo | mt)
        assert _cell_unpack(enr.cells[cell][m]) == (base, mask(mo, base), mask(mt, base))
    rebuilt = Enricher(load_cfg())
    for kind, key, m, entry, _ in enr.drain_changes():
        rebuilt.merge(kind, key, m, entry)
    assert rebuilt.handsets == enr.handsets and rebuilt.cells == enr.cells


def test_cell_index_counts_only_outgoing_only_lines():
    enr = Enricher(load_cfg())  # bypass_min_calls: 3 buckets with outgoing traffic
    s = Stream()
    cell = "c77777"

    def on_cell(msisdn, ts, direction="MO"):
        return enr.facts(s.rec(msisdn=msisdn, ts=ts, direction=direction, cell_id=cell, imei=f"86{msisdn}"))

    for k in range(3):  # three buckets of outgoing calls each
        t = T0 + k * BUCKET
        on_cell("13800000001", t)
        on_cell("13800000002", t)
        on_cell("13800000003", t)
        on_cell("13800000004", t)
    on_cell("13800000004", T0 + BUCKET + 1, "MT")  # has inbound on this cell: not bypass-like
    on_cell("13800000005", T0)
    on_cell("13800000005", T0 + 1)  # two calls in one bucket: not enough
    t = T0 + 4 * BUCKET
    assert on_cell("13800000003", t).cell_bypass_lines == 2  # counts 1 and 2, not 4 or 5
    assert on_cell("13800000004", t).cell_bypass_lines == 0  # a line with inbound gets no count
    assert on_cell("13800000005", t).cell_bypass_lines == 0  # itself not bypass-like


def test_cell_bypass_lines_expire_after_the_cell_window():
    enr = Enricher(load_cfg())  # cell_window_hours: 24
    s = Stream()
    for i in range(3):
        enr.facts(s.rec(msisdn="13800000001", ts=T0 + i * BUCKET, cell_id="c1", imei="861"))
    facts = [enr.facts(s.rec(msisdn="13800000002", ts=T0 + 25 * HOUR + i * BUCKET, cell_id="c1", imei="862"))
             for i in range(4)]
    assert [f.cell_bypass_lines for f in facts] == [0, 0, 0, 0]


def test_late_inbound_record_still_makes_the_line_two_way_on_its_cell():
    enr = Enricher(load_cfg())
    s = Stream()
    for i in range(3):
        enr.facts(s.rec(msisdn="13800000001", ts=T0 + 2 * BUCKET + i * BUCKET, cell_id="c1", imei="861"))
    enr.facts(s.rec(msisdn="13800000001", ts=T0 + BUCKET, direction="MT", cell_id="c1", imei="861"))
    facts = [enr.facts(s.rec(msisdn="13800000002", ts=T0 + 6 * BUCKET + i * BUCKET, cell_id="c1", imei="862"))
             for i in range(4)]
    assert facts[-1].cell_bypass_lines == 0


def test_lines_without_a_known_handset_do_not_share_one():
    enr = Enricher(load_cfg())
    s = Stream()
    got = [enr.facts(s.rec(msisdn=f"1380000000{i}", ts=T0 + i * BUCKET, imei=imei)).handset_lines
           for i, imei in enumerate(["", "", "000000000000000", "unknown", ""])]
    assert got == [0] * 5


def test_sweep_drops_buckets_no_query_can_reach():
    cfg = load_cfg()
    enr = Enricher(cfg)
    s = Stream()
    enr.facts(s.rec(msisdn="13800000001", ts=T0, imei="861", cell_id="c1"))
    enr.sweep((T0 + 100 * HOUR) // BUCKET)
    assert enr.handsets == {} and enr.cells == {}


def test_sweep_keeps_cell_pairs_for_the_cell_window_and_handset_pairs_for_the_handset_window():
    """Cells are read over 24 h, handsets over 72 h: a cell pair is not held for three days."""
    cfg = load_cfg()
    enr = Enricher(cfg)
    s = Stream()
    enr.facts(s.rec(msisdn="13800000001", ts=T0, imei="861", cell_id="c1"))
    enr.sweep((T0 + 30 * HOUR) // BUCKET)  # past 24 h + lateness (60 min), within 72 h
    assert enr.cells == {} and list(enr.handsets) == ["861"]
    enr.sweep((T0 + 24 * HOUR) // BUCKET)  # (an earlier sweep changes nothing)
    assert list(enr.handsets) == ["861"]
    enr.sweep((T0 + 74 * HOUR) // BUCKET)
    assert enr.handsets == {}


def test_sweep_publishes_removals_only_and_stale_values_answer_the_same():
    """A sweep that only trims old buckets sends nothing (every reader trims the same buckets);
    a pair left with no bucket is published as a tombstone. A reader that merges a value published
    before the writer's sweep still gives the writer's answers."""
    s = Stream()
    imei = "860000000012345"
    early = [s.rec(msisdn=f"1380000000{i}", ts=T0 + i * 7 * MINUTE, imei=imei, cell_id="c1") for i in range(3)]
    late = [s.rec(msisdn="13800000000", ts=T0 + 70 * HOUR + i * BUCKET, imei=imei, cell_id="c1") for i in range(3)]
    writer = Enricher(load_cfg(), track_changes=True)
    writer.next_sweep = late[-1].ts + 1  # no sweep until the one below
    for r in early + late:
        writer.facts(r)
    before_sweep = writer.drain_changes()
    assert before_sweep and all(entry is not None for _, _, _, entry, _ in before_sweep)
    writer.sweep((T0 + 80 * HOUR) // BUCKET)  # trims line 0's early buckets, drops lines 1 and 2
    gone = writer.drain_changes()
    assert gone and all(entry is None for _, _, _, entry, _ in gone)
    assert {m for _, _, m, _, _ in gone} == {"13800000001", "13800000002"}
    probe = s.rec(msisdn="13800000009", ts=T0 + 80 * HOUR + BUCKET, imei=imei, cell_id="c1")
    want = writer.facts(probe)
    assert want.handset_lines == 1  # line 0, seen at 70 h; lines 1 and 2 are out of the window
    for own_sweep in (True, False):
        reader = Enricher(load_cfg())
        if not own_sweep:  # stale buckets kept: they must still not count
            reader.next_sweep = probe.ts + 1
        for kind, key, m, entry, _ in before_sweep + gone:
            reader.merge(kind, key, m, entry)
        assert reader.facts(probe) == want


class SweepAtOnce(Enricher):
    """The sweep as it was before it was spread over records: every pair at the 6-hourly mark."""

    def _begin_sweep(self, q: int) -> None:
        super()._begin_sweep(q)
        self._sweep_some(-1)


def test_a_sweep_spread_over_records_answers_as_one_done_at_once_and_drops_the_same_pairs():
    """Sweeping every pair at once stalls a daemon for seconds per million lines; spread over
    records, the answers must not change (no query reads what a sweep drops), and once a round
    is done the same pairs must be gone, their last publication a tombstone. (A pair the round
    reaches after its line came back is not tombstoned first: its value is simply published.)"""
    rng = random.Random(11)
    s = Stream()
    spread, at_once = Enricher(load_cfg(), track_changes=True), SweepAtOnce(load_cfg(), track_changes=True)
    lines = [f"139{i:08d}" for i in range(400)]
    handsets = [f"86{i:013d}" for i in range(150)]  # shared by several lines, so answers are not 0
    cells = [f"cell-{i}" for i in range(40)]
    ts = T0
    last = {id(spread): {}, id(at_once): {}}  # (kind, key, line) → last published entry is a tombstone
    answers_differ = 0
    swept_over_records = False
    for n in range(12_000):  # ~100 h: sixteen 6-hourly rounds, lines coming and going
        ts += rng.randrange(0, 60_000)
        m = rng.choice(lines[: 100 + (n // 40) % 300])
        rec = s.rec(msisdn=m, ts=ts, imei=rng.choice(handsets), cell_id=rng.choice(cells),
                    direction=rng.choice(["MO", "MO", "MT"]))
        a, b = spread.facts(rec), at_once.facts(rec)
        answers_differ += a != b
        swept_over_records |= spread._sweeping
        if n % 500 == 0:
            for enr in (spread, at_once):
                last[id(enr)].update(((k, key, mm), entry is None) for k, key, mm, entry, _ in enr.drain_changes())
    assert answers_differ == 0
    assert swept_over_records, "no round was ever left for the records to finish"
    q = ts // BUCKET
    spread._sweep_some(-1)  # finish the round under way (the next mark would)
    for enr in (spread, at_once):
        last[id(enr)].update(((k, key, mm), entry is None) for k, key, mm, entry, _ in enr.drain_changes())
    gone = [{pair for pair, tomb in last[id(enr)].items() if tomb} for enr in (spread, at_once)]
    assert gone[0] and gone[0] == gone[1]
    spread.sweep(q)
    at_once.sweep(q)
    assert spread.handsets == at_once.handsets and spread.cells == at_once.cells


def test_what_the_daemon_publishes_is_each_pairs_last_state_and_rebuilds_the_index():
    """Changed pairs are published as they were kept when they changed (no lookup at publishing
    time), through the sweep's rebases and removals: `state.shared_changes` must publish exactly
    `encode_pair` of what `drain_changes` reports, and a reader applying it must end with the
    writer's index."""
    from detector.core import Detector

    rng = random.Random(23)
    s = Stream()
    twins = [Detector(load_cfg(), track_changes=True) for _ in range(2)]
    reader = Enricher(load_cfg())
    lines = [f"139{i:08d}" for i in range(300)]
    handsets = [f"86{i:013d}" for i in range(120)]
    cells = [f"cell-{i}" for i in range(30)]
    ts = T0
    published = tombstones = 0
    topic: dict[bytes, bytes | None] = {}
    for n in range(9000):  # ~75 h: 6-hourly sweeps rebase and remove pairs between publications
        ts += rng.randrange(0, 60_000)
        rec = s.rec(msisdn=rng.choice(lines[: 60 + (n // 30) % 240]), ts=ts, imei=rng.choice(handsets),
                    cell_id=rng.choice(cells), direction=rng.choice(["MO", "MO", "MT"]))
        for det in twins:
            det.on_record(rec)
        if n % 700 == 699 or n == 8999:
            got = state.shared_changes(twins[0])
            want = [(p if p >= 0 else twins[1].partition(m), f"{k}|{key}|{m}".encode(), state.encode_pair(entry))
                    for k, key, m, entry, p in twins[1].enricher.drain_changes()]
            assert sorted(got, key=lambda x: x[1]) == sorted(want, key=lambda x: x[1])
            for _, key, value in got:
                state.apply_shared(reader, key, value)
                topic[key] = value  # compacted: the last value of each key
            published += len(got)
            tombstones += sum(v is None for _, _, v in got)
    assert published and tombstones
    q = ts // BUCKET
    writer = twins[0].enricher
    writer.sweep(q)
    topic.update((key, value) for _, key, value in state.shared_changes(twins[0]))
    reader.sweep(q)
    assert reader.handsets == writer.handsets and reader.cells == writer.cells
    # what compaction keeps is the writer's index: every pair gone has a tombstone last
    live = {f"h|{imei}|{m}".encode() for imei in writer.handsets for m in writer._hs_lines(imei)}
    live |= {f"c|{cell}|{m}".encode() for cell, ls in writer.cells.items() for m in ls}
    assert {key for key, value in topic.items() if value is not None} == live


def test_shared_pair_encoding_is_the_json_the_contract_describes():
    """`encode_pair` formats bytes directly; it must write exactly the JSON orjson would, and
    `decode_pair` must read it back, for handset ([base, mask]) and cell ([base, mo, mt]) entries
    with masks from empty to wider than a day of buckets."""
    rng = random.Random(5)
    for _ in range(2000):
        widths = rng.choice([(0,), (1,), (64,), (900,), (0, 0), (3, 300), (288, 1), (65, 64)])
        entry = [rng.randrange(1 << 32)] + [rng.getrandbits(w) if w else 0 for w in widths]
        want = orjson.dumps({"v": state.STATE_VERSION, "b": entry[0], "m": [format(x, "x") for x in entry[1:]]})
        assert state.encode_pair(entry) == want
        assert state.decode_pair(state.encode_pair(entry)) == entry
    assert state.encode_pair(None) is None
    # any other spelling of the same JSON reads the same (the written form has a fast path)
    entry = [123456, 0xABCDEF, 5]
    assert state.decode_pair(b'{ "m": ["ABCDEF", "5"], "b": 123456, "v": 1 }') == entry
    assert state.decode_pair(orjson.dumps({"v": 1, "b": 123456, "m": ["abcdef", "5"]}, option=orjson.OPT_INDENT_2)) == entry


@pytest.mark.parametrize("key, value", [
    (b"c|cell-1|13800000001", b"this is not json {"),
    (b"c|cell-1|13800000001", b'{"v":99,"b":1,"m":["1","0"]}'),  # an unknown version
    (b"c|cell-1|13800000001", b'{"v":1,"b":1,"m":["1"]}'),  # a cell pair needs two masks
    (b"h|8600000|13800000001", b'{"v":1,"b":1,"m":["1","2"]}'),  # a handset pair one
    (b"h|8600000|13800000001", b'{"v":1,"b":-4,"m":["1"]}'),
    (b"h|8600000|13800000001", b'{"v":1,"b":4294967296,"m":["1"]}'),  # a base wider than 32 bits
    (b"h|8600000|13800000001", b'{"v":1,"b":1,"m":["-1"]}'),
    (b"h|8600000|13800000001", b'{"v":1,"b":1,"m":"ff"}'),
    (b"h|8600000|13800000001", b'{"v":1,"b":"1","m":["1"]}'),
    (b"h|8600000|13800000001", b'{"v":1,"b":1,"m":["xyz"]}'),
    (b"h|8600000|13800000001", b'[1, 2]'),
    (b"h|8600000|13800000001", b'{"v":1,"b":1}'),
    (b"x|8600000|13800000001", b'{"v":1,"b":1,"m":["1"]}'),  # an unknown kind
    (b"h|13800000001", b'{"v":1,"b":1,"m":["1"]}'),  # no handset
    (b"\xff\xfe|a|b", b'{"v":1,"b":1,"m":["1"]}'),
    (None, b'{"v":1,"b":1,"m":["1"]}'),
    (b"w|x", b'{"wm": 5}'),
    (b"w|0", b'{"mark": 5}'),
    (b"w|0", b"[5]"),
    (b"w|0", b"not json"),
])
def test_a_shared_record_no_daemon_writes_is_refused_and_changes_nothing(key, value):
    """The shared topic is compacted and every daemon reads all of it from the start: a record it
    cannot read is refused with ValueError (the daemon counts and skips it), never half applied."""
    s = Stream()
    enr = Enricher(load_cfg())
    enr.facts(s.rec(msisdn="13800000001", ts=T0, imei="8600000", cell_id="cell-1"))
    before = (dict(enr.handsets), {k: dict(v) for k, v in enr.cells.items()})
    with pytest.raises(ValueError):
        state.apply_shared(enr, key, value)
    assert (enr.handsets, enr.cells) == before


def test_applying_every_published_record_gives_the_writers_tables():
    """What a second daemon does with the first one's shared topic (`apply_shared` on every
    record, watermarks included) leaves it the tables the writer has, and the watermarks."""
    rng = random.Random(3)
    s = Stream()
    writer = Enricher(load_cfg(), track_changes=True)
    reader = Enricher(load_cfg())
    for i in range(3000):
        ts = T0 + i * 20_000 + rng.randrange(-30_000, 30_000)
        writer.facts(s.rec(msisdn=f"1380000{rng.randrange(40):04d}", ts=ts, direction=rng.choice(["MO", "MT"]),
                           imei=f"86000{rng.randrange(25):04d}", cell_id=f"c{rng.randrange(6)}"))
        if i % 250 == 249:  # a commit: the changed pairs, then the partition's watermark
            for kind, key, m, entry, _ in writer.drain_changes():
                assert state.apply_shared(reader, f"{kind}|{key}|{m}".encode(), state.encode_pair(entry)) is None
            assert state.apply_shared(reader, b"w|2", orjson.dumps({"v": 1, "wm": ts})) == (2, ts)
    assert reader.handsets == writer.handsets and reader.cells == writer.cells
    assert state.apply_shared(reader, b"w|2", None) is None  # a watermark's tombstone: nothing to do


def test_a_pair_value_read_before_is_checked_against_its_key_every_time():
    """`apply_shared` keeps values it decoded lately: one read under a cell key, where it holds two
    masks, is still refused under a handset key, and a refused value is never kept."""
    enr = Enricher(load_cfg())
    two_masks = b'{"v":1,"b":7,"m":["1","2"]}'
    assert state.apply_shared(enr, b"c|cell-1|13800000001", two_masks) is None
    assert two_masks in state._PAIRS_READ
    with pytest.raises(ValueError):
        state.apply_shared(enr, b"h|8600000|13800000001", two_masks)
    assert "8600000" not in enr.handsets
    with pytest.raises(ValueError):
        state.apply_shared(enr, b"h|8600000|13800000001", b'{"v":1,"b":1,"m":["xyz"]}')
    assert b'{"v":1,"b":1,"m":["xyz"]}' not in state._PAIRS_READ
    with pytest.raises(ValueError):
        state.apply_shared(enr, b"h|8600000|13800000001", bytearray(b'{"v":1,"b":1,"m":["1"]}'))


def test_the_pair_values_kept_stay_bounded_and_merge_as_decoded():
    """However many distinct values stream past, at most `_PAIRS_READ_MAX` are kept, and a reader
    fed the same values twice over (the second time mostly from what was kept) ends as a reader
    fed them once: merging is an OR, and a kept entry is the one `decode_pair` gives."""
    rng = random.Random(11)
    records = [(f"h|86{rng.randrange(50):05d}|1380000{rng.randrange(300):04d}".encode(),
                state.encode_pair([rng.randrange(1000, 1100), rng.randrange(1, 1 << 40)]))
               for _ in range(state._PAIRS_READ_MAX + 500)]
    once, twice = Enricher(load_cfg()), Enricher(load_cfg())
    for key, value in records:
        state.apply_shared(once, key, value)
        assert len(state._PAIRS_READ) <= state._PAIRS_READ_MAX
    for key, value in records + records:
        state.apply_shared(twice, key, value)
    assert twice.handsets == once.handsets
    for value, entry in state._PAIRS_READ.items():
        assert list(entry) == state.decode_pair(value)


# -- a record as the kernel takes it ---------------------------------------------------------------
def test_mo_inputs_reads_each_field_of_the_record_by_its_name(fc):
    """Each value `mo_inputs` (and `mt_inputs`) hands the kernel comes from the CDR field it is
    named after: the kernel takes them positionally, so a mix-up would go unnoticed otherwise."""
    import zlib
    from detector.contract import CDR, province

    night_hour_utc = (fc.night_lo - fc.utc_offset_h) % 24 + 0.5  # inside the night, local time
    ts = T0 - T0 % DAY + int(night_hour_utc * HOUR)
    rec = CDR(record_id="r-1", ts=ts, msisdn=ME, direction="MO", peer="8613900000002", service="voice",
              duration_s=37, answered=False, cell_id="c-9", cell_region="BJ-01", peer_region="INTL-44",
              imei="356000000000001")
    got = F.mo_inputs(rec, HOME_PROVINCE, fc)
    prov = province("INTL-44")
    assert got == (ts, zlib.crc32(b"8613900000002"), F.hash64("356000000000001"), F.province_id(prov), True, True,
                   "44" in fc.premium_destinations, True, False, 37, True, fc.alpha, fc.short_call_s)
    day = rec._replace(ts=ts + 12 * HOUR, service="sms", answered=True, imei="", peer_region="GD-SZ")
    got = F.mo_inputs(day, HOME_PROVINCE, fc)
    assert got[:3] == (ts + 12 * HOUR, zlib.crc32(b"8613900000002"), 0)
    assert got[3:11] == (F.province_id("GD"), False, False, False, False, True, 37, False)
    assert F.mt_inputs(rec._replace(direction="MT")) == (ts, zlib.crc32(b"8613900000002"),
                                                          F.hash64("356000000000001"))


def _random_rows(rng, n: int) -> np.ndarray:
    """Rows of random bytes, each ring cut to a random length (a zero tail) with zero items left
    inside some: what `pack_v3` trims and what coming back from rest must restore."""
    rows = F._new_rows(n)
    u8 = rows.view(np.uint8).reshape(n, -1)
    u8[:, 1:] = rng.integers(0, 256, (n, u8.shape[1] - 1)) * (rng.random((n, u8.shape[1] - 1)) < 0.7)
    for name, size in (("contacts", CONTACTS), ("provinces", PROVINCE_RING), ("recent_ids", K.RECENT_IDS),
                       ("contact_flags", CONTACTS)):
        for r in range(n):
            rows[name][r][rng.integers(0, size + 1):] = 0
    return rows


def test_a_number_back_from_rest_is_written_into_its_row_exactly_as_unpacked_step_by_step():
    rng = np.random.default_rng(11)
    rows = _random_rows(rng, 300)
    src = rows.view(np.uint8)
    packed, rest = np.zeros(K.PACKED_MAX_V3, np.uint8), np.zeros(K.REST_MAX, np.uint8)
    target = F._new_rows(4)
    u8 = target.view(np.uint8)
    for r in range(len(rows)):
        v2 = src[r * F.PACKED_SIZE_V2:(r + 1) * F.PACKED_SIZE_V2].tobytes()
        for blob in (packed[:K.pack_v3(src, r, packed)].tobytes(), v2):  # version 3 (rings cut), version 2
            form = rest[:K.to_rest(blob, len(blob), rest)].tobytes()
            target[2] = rows[(r + 1) % len(rows)]  # whatever the row held before
            others = target[[0, 1, 3]].tobytes()
            assert K.rest_into_row(form, u8, 2)
            assert target[2].tobytes() == F._to_v2(F._from_rest(form)) == v2
            assert target[[0, 1, 3]].tobytes() == others  # no other row touched


def test_a_rest_form_that_holds_no_whole_state_is_refused_and_the_row_left_alone(fc):
    good = _busy_state(fc, 20).pack()
    rest = np.zeros(K.REST_MAX, np.uint8)

    def form_of(blob: bytes) -> bytes:
        return rest[:K.to_rest(blob, len(blob), rest)].tobytes()

    nc_at = F._RINGS_AT
    too_many = bytearray(good)
    too_many[nc_at] = CONTACTS + 1  # more contacts than the ring holds
    wrong_total = bytearray(good)
    wrong_total[nc_at + 1] ^= 1  # ring counts that do not add up to the length
    bad_version = bytearray(good)
    bad_version[0] = 7
    target = F._new_rows(2)
    target[1] = NumberState(T0)._rows[0]
    before = target.tobytes()
    for form in (form_of(bytes(too_many)), form_of(bytes(wrong_total)), form_of(bytes(bad_version)),
                 form_of(good[:-1]), form_of(good)[:K.REST_HEAD - 1],
                 form_of(good)[:10] + (K.PACKED_MAX_V3 + 1).to_bytes(2, "little") + form_of(good)[12:]):
        assert not K.rest_into_row(form, target.view(np.uint8), 1)
        assert target.tobytes() == before
    store = F.NumberStore()
    store.cold["x"] = form_of(bytes(too_many))
    with pytest.raises(ValueError, match="not a whole packed state"):
        store.get("x")
    assert store.cold["x"] == form_of(bytes(too_many)) and "x" not in store.rows and store._free == [0]
    store.cold["y"] = form_of(good)
    assert store.get("y").to_dict() == NumberState.unpack(good).to_dict() and store.rows == {"y": 0}


def test_a_row_put_to_rest_is_the_rest_form_of_its_packed_state_and_is_left_blank():
    rng = np.random.default_rng(13)
    rows = _random_rows(rng, 300)
    u8 = rows.view(np.uint8)
    packed, by_steps, form = (np.zeros(K.REST_MAX, np.uint8) for _ in range(3))
    blank = F._new_rows(1).tobytes()
    for r in range(len(rows)):
        m = K.to_rest(packed, K.pack_v3(u8, r, packed), by_steps)
        others, held = np.delete(rows, r).tobytes(), rows[r].tobytes()
        assert K.row_to_rest(u8, r, form) == m
        assert form[:m].tobytes() == by_steps[:m].tobytes()
        assert rows[r].tobytes() == blank and np.delete(rows, r).tobytes() == others  # only this row blanked
        assert K.rest_into_row(form[:m].tobytes(), u8, r) and rows[r].tobytes() == held  # and back, exactly
