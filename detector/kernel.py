"""The per-number arithmetic of the core, compiled (numba), over numbers held as rows of one array.

Why: in CPython a record's feature update and scoring cost ~15 µs spread over dozens of small
calls on small objects; compiled, the same arithmetic costs well under a microsecond, and a
number held as one fixed row of a shared array costs no allocator overhead and no unpacking.

What lives here is only arithmetic over a row (`STATE`): decay, the contact and province rings,
the per-call shares, the record-id ring, raw features, evidence and the score. Strings are turned
into integers before (`features.py`), decisions are taken after (`core.py`), so the rules stay
in plain Python where they are read. The formulas are the same floating-point operations in the
same order as the Python they replaced, so the decisions are bit for bit the same.

A row's bytes are exactly a version-2 packed state (`features.PACKED_SIZE_V2`), so packing for
the changelog is a copy and a trim. Set NUMBA_DISABLE_JIT=1 to step through this in a debugger:
it then runs as Python (rows as record arrays, `_with_record_rows`) and takes the same decisions,
though a time-decayed count may differ in its last bit (numba's `pow` is not the C library's).
"""
from __future__ import annotations

import functools
import inspect
import logging
import math

import numba as nb
import numpy as np
from numba import types as T

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
CONTACTS = 32  # recent distinct peers remembered per number
PROVINCE_RING = 12  # provinces of the last outgoing calls
RECENT_IDS = 16  # record ids remembered per number, to drop repeated deliveries
FLAG_CALLED = 1  # we called them
FLAG_CALLED_US = 2  # they called us

# Indexes into a row's `shares` (per-call moving averages over outgoing calls).
S_NEW_PEER, S_UNANSWERED, S_OUT_OF_PROVINCE, S_INTL, S_PREMIUM, S_SHORT, S_NIGHT = range(7)
N_SHARES = 7
# Indexes into a row's `decayed` (time-decayed counts).
D_MO_HOUR, D_MO_DAY, D_MT_DAY, D_PREMIUM_DAY, D_INTL_MIN_DAY = range(5)
N_DECAYED = 5

# One number's state: the version-2 packed layout, field for field (little-endian, unaligned).
STATE = np.dtype([
    ("version", "u1"),
    ("first_ts", "<i8"), ("last_ts", "<i8"), ("decayed_ts", "<i8"), ("last_pop_ts", "<i8"),
    ("suspended_ts", "<i8"), ("below_since", "<i8"), ("applied_offset", "<i8"),
    ("n_mo", "<u4"), ("n_mt", "<u4"), ("n_voice", "<u4"), ("restores", "<u4"),
    ("handset_lines", "<u4"), ("cell_lines", "<u4"),
    ("contact_pos", "u1"), ("province_pos", "u1"), ("recent_pos", "u1"), ("status", "u1"),
    ("fraud_confirmed", "u1"), ("tier", "i1"),
    ("imei_hash", "<u8"), ("imei_changes", "<f8"), ("peak_score", "<f8"), ("cleared_score", "<f8"),
    ("decayed", "<f8", (N_DECAYED,)), ("shares", "<f8", (N_SHARES,)),
    ("contacts", "<u4", (CONTACTS,)), ("provinces", "<u4", (PROVINCE_RING,)),
    ("recent_ids", "<u8", (RECENT_IDS,)), ("contact_flags", "u1", (CONTACTS,)),
])
assert STATE.itemsize == 551

_ROWS = T.Array(nb.from_dtype(STATE), 1, "C")
_VEC = T.float64[::1]
_I = T.int64
_U = T.uint64
_F = T.float64
_B = T.boolean


def _probe():  # pragma: no cover - never called: decorated once, to see whether caching works
    return 0


def _jit_options() -> dict:
    """numba caches the machine code beside this file, else under NUMBA_CACHE_DIR or the user's
    cache directory; where it can write to none of them (a read-only install run by a user with no
    home) `cache=True` raises at import. There the kernel is compiled in memory at each start
    (~5 s) instead, and a warning says how to avoid it."""
    try:
        nb.njit(cache=True)(_probe)  # the cache's place is chosen (and checked) at decoration
        return dict(cache=True, nogil=True)
    except RuntimeError as err:
        logging.getLogger("cdr_detector").warning(
            "the compiled kernel cannot be cached (%s): compiling it at every start; set NUMBA_CACHE_DIR "
            "to a writable directory to avoid that", err)
        return dict(cache=False, nogil=True)


_JIT = _jit_options()


@nb.njit(T.void(_ROWS, _I, _I), **_JIT)
def _decay_to(rows, i, ts):
    r = rows[i]
    dt = ts - r.decayed_ts
    if dt <= 0:
        return
    d = r.decayed
    fh = 0.5 ** (dt / HOUR_MS)
    fd = 0.5 ** (dt / DAY_MS)
    d[D_MO_HOUR] *= fh
    d[D_MO_DAY] *= fd
    d[D_MT_DAY] *= fd
    d[D_PREMIUM_DAY] *= fd
    d[D_INTL_MIN_DAY] *= fd
    r.imei_changes *= fd
    r.decayed_ts = ts


@nb.njit(_B(_ROWS, _I, _U, _I), **_JIT)
def _remember_contact(rows, i, h, flag):
    """Mark a peer (crc32 of its number) as a contact; True when it was not a known contact."""
    r = rows[i]
    contacts = r.contacts
    flags = r.contact_flags
    for k in range(CONTACTS):
        if contacts[k] == h:  # the first slot holding it, as `array.index` finds it
            if flags[k]:
                flags[k] |= flag
                return False
            break
    pos = r.contact_pos
    contacts[pos] = h
    flags[pos] = flag
    r.contact_pos = (pos + 1) % CONTACTS
    return True


@nb.njit(T.void(_ROWS, _I, _U), **_JIT)
def _observe_imei(rows, i, h):
    r = rows[i]
    if h != r.imei_hash:
        if r.imei_hash:
            r.imei_changes += 1.0
        r.imei_hash = h


@nb.njit(_B(_ROWS, _I, _U), **_JIT)
def seen_before(rows, i, h):
    """True if this record-id hash is among the number's recent ones; else remember it."""
    r = rows[i]
    ids = r.recent_ids
    for k in range(RECENT_IDS):
        if ids[k] == h:
            return True
    pos = r.recent_pos
    ids[pos] = h
    r.recent_pos = (pos + 1) % RECENT_IDS
    return False


@nb.njit(T.void(_ROWS, _I, _I, _U, _U), **_JIT)
def update_mt(rows, i, ts, peer_h, imei_h):
    """Fold one incoming record into row i."""
    _decay_to(rows, i, ts)
    r = rows[i]
    if ts > r.last_ts:
        r.last_ts = ts
    r.n_mt += 1
    r.decayed[D_MT_DAY] += 1.0
    _remember_contact(rows, i, peer_h, FLAG_CALLED_US)
    _observe_imei(rows, i, imei_h)


@nb.njit(T.void(_ROWS, _I, _I, _U, _U, T.uint32, _B, _B, _B, _B, _B, _I, _B, _F, _I), **_JIT)
def update_mo(rows, i, ts, peer_h, imei_h, province_id, out_of_province, intl, premium, voice, answered,
              duration_s, night, alpha, short_call_s):
    """Fold one outgoing record into row i (the strings already turned into numbers and flags)."""
    _decay_to(rows, i, ts)
    r = rows[i]
    if ts > r.last_ts:
        r.last_ts = ts
    r.n_mo += 1
    d = r.decayed
    d[D_MO_HOUR] += 1.0
    d[D_MO_DAY] += 1.0
    _observe_imei(rows, i, imei_h)
    new_peer = 1.0 if _remember_contact(rows, i, peer_h, FLAG_CALLED) else 0.0

    # Per-call shares warm up as a plain mean over the first calls, then move as an EWMA.
    a = 1.0 / r.n_mo
    if alpha >= a:
        a = alpha
    s = r.shares
    s[S_NEW_PEER] += a * (new_peer - s[S_NEW_PEER])
    s[S_OUT_OF_PROVINCE] += a * ((1.0 if out_of_province else 0.0) - s[S_OUT_OF_PROVINCE])
    s[S_INTL] += a * ((1.0 if intl else 0.0) - s[S_INTL])
    s[S_PREMIUM] += a * ((1.0 if premium else 0.0) - s[S_PREMIUM])
    if premium:
        d[D_PREMIUM_DAY] += 1.0
    if intl and voice:
        d[D_INTL_MIN_DAY] += duration_s / 60.0
    s[S_NIGHT] += a * ((1.0 if night else 0.0) - s[S_NIGHT])
    if voice:
        r.n_voice += 1
        av = 1.0 / r.n_voice
        if alpha >= av:
            av = alpha
        s[S_UNANSWERED] += av * ((0.0 if answered else 1.0) - s[S_UNANSWERED])
        short = answered and duration_s < short_call_s
        s[S_SHORT] += av * ((1.0 if short else 0.0) - s[S_SHORT])

    pos = r.province_pos
    r.provinces[pos] = province_id
    r.province_pos = (pos + 1) % PROVINCE_RING


@nb.njit(T.Tuple((_F, _I))(_ROWS, _I), **_JIT)
def callback_share(rows, i):
    """Of the recent peers this number called, the share that also called it, and how many."""
    called = 0
    both = 0
    flags = rows[i].contact_flags
    for k in range(CONTACTS):
        f = flags[k]
        if f & FLAG_CALLED:
            called += 1
            if f & FLAG_CALLED_US:
                both += 1
    return (both / called if called else 0.0), called


@nb.njit(_F(_ROWS, _I), **_JIT)
def province_spread(rows, i):
    """Distinct provinces among the last outgoing calls, per call (1.0: every call elsewhere)."""
    r = rows[i]
    n = r.n_mo if r.n_mo < PROVINCE_RING else PROVINCE_RING
    if n == 0:
        return 0.0
    ring = r.provinces
    distinct = 0
    for k in range(n):
        first = True
        for j in range(k):
            if ring[j] == ring[k]:
                first = False
                break
        if first:
            distinct += 1
    return distinct / n


@nb.njit(_F(_ROWS, _I, _VEC, _VEC, _I, _B, _I, _B, _B, _B, _I, _I, _F, _F, _F, _F, _F), **_JIT)
def raw_vector(rows, i, raw, support, ts, has_profile, activated_ts, prepaid, id_verified, business_plan,
               handset_lines, cell_lines, premium_calls, known, share_calls, new_line_days, long_tenure_days):
    """Raw feature values and the support of each share into `raw` and `support` (model.FEATURES
    order); returns the tenure in days (-1.0: no profile). `business_plan`: a postpaid business
    account. See `model.RiskModel.raw_vector`."""
    r = rows[i]
    s = r.shares
    d = r.decayed
    n_calls = float(r.n_mo)
    if n_calls > share_calls:
        n_calls = share_calls
    n_voice = float(r.n_voice)
    if n_voice > share_calls:
        n_voice = share_calls
    cb, called = callback_share(rows, i)
    traffic = d[D_MO_DAY] + d[D_MT_DAY]
    tenure = -1.0
    prepaid_f = 0.0
    unverified = 0.0
    business = 0.0
    new_line = 0.0
    long_tenure = 0.0
    if has_profile:
        tenure = (ts - activated_ts) / DAY_MS
        if not tenure > 0.0:
            tenure = 0.0
        prepaid_f = 1.0 if prepaid else 0.0
        unverified = 0.0 if id_verified else 1.0
        if business_plan and id_verified:
            business = tenure / 365.0
            if not business < 1.0:
                business = 1.0
        new_line = math.exp(-tenure / new_line_days)
        long_tenure = tenure / long_tenure_days
        if not long_tenure < 1.0:
            long_tenure = 1.0
    raw[0] = d[D_MO_HOUR]  # calls_last_hour
    raw[1] = s[S_NEW_PEER]  # new_peer_share
    raw[2] = s[S_UNANSWERED]  # unanswered_share
    raw[3] = s[S_SHORT]  # short_call_share
    raw[4] = s[S_OUT_OF_PROVINCE]  # out_of_province_share
    raw[5] = province_spread(rows, i)  # province_spread
    raw[6] = s[S_INTL]  # intl_share
    raw[7] = premium_calls  # premium_calls
    raw[8] = d[D_INTL_MIN_DAY]  # intl_minutes
    raw[9] = s[S_NIGHT]  # night_share
    raw[10] = (d[D_MT_DAY] / traffic) if traffic > 0 else 0.0  # inbound_share
    raw[11] = cb  # callback_share
    raw[12] = float(handset_lines)  # handset_lines
    raw[13] = float(cell_lines)  # cell_bypass_lines
    raw[14] = 1.0 if r.imei_changes >= 0.5 else 0.0  # handset_change
    raw[15] = new_line  # new_line
    raw[16] = prepaid_f  # prepaid
    raw[17] = unverified  # unverified
    raw[18] = business  # business_account
    raw[19] = long_tenure  # long_tenure
    n_mo = float(r.n_mo)
    support[:] = 0.0
    support[1] = n_calls * known
    support[2] = n_voice
    support[3] = n_voice
    support[4] = n_calls
    support[5] = n_mo if n_mo < PROVINCE_RING else float(PROVINCE_RING)
    support[6] = n_calls
    support[9] = n_calls
    support[10] = traffic * known
    support[11] = float(called) * known
    return tenure


@nb.njit(_F(_F), **_JIT)
def _clip01(x):
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


# The model as the kernel reads it: one array of shape (N_MODEL_ROWS, number of features), built by
# `model.RiskModel.kernel_model` from the typical values, the weights and a few constants.
M_KIND, M_T, M_MT, M_ROOM, M_WEIGHT, M_PARAM = range(6)
N_MODEL_ROWS = 6
KIND_FLAG, KIND_COUNT, KIND_HIGH, KIND_LOW = range(4)  # M_KIND; M_T holds t + 1 for counts
# M_PARAM's columns
P_PRIOR_CALLS, P_INTERCEPT, P_WATCH_BIAS, P_WARMUP_MS, P_SHARE_CALLS, P_NEW_LINE_DAYS, P_LONG_TENURE_DAYS = range(7)
_MODEL = T.float64[:, ::1]


@nb.njit(T.void(_VEC, _VEC, _VEC, _MODEL), **_JIT)
def evidence_vector(raw, support, ev, model):
    """How far each feature sits on the suspicious side of typical, into `ev` (see
    `model.RiskModel.evidence_vector`)."""
    m = model[M_PARAM, P_PRIOR_CALLS]
    for j in range(raw.shape[0]):
        kind = model[M_KIND, j]
        if kind == KIND_COUNT:
            ev[j] = _clip01(math.log2((raw[j] + 1.0) / model[M_T, j]) / 3.0)
        elif kind == KIND_HIGH:
            n = support[j]
            room = model[M_ROOM, j]
            ev[j] = _clip01(((n * raw[j] + model[M_MT, j]) / (n + m) - model[M_T, j]) / room) if room else 0.0
        elif kind == KIND_LOW:
            n = support[j]
            ev[j] = _clip01((model[M_T, j] - (n * raw[j] + model[M_MT, j]) / (n + m)) / model[M_ROOM, j])
        else:
            ev[j] = raw[j]


@nb.njit(_F(_VEC, _MODEL), **_JIT)
def score_vector(ev, model):
    z = model[M_PARAM, P_INTERCEPT]
    weights = model[M_WEIGHT]
    for k in range(ev.shape[0]):
        e = ev[k]
        if e:
            z += weights[k] * e
    if z < -30:
        return 0.0
    return 1.0 / (1.0 + math.exp(-z))


@nb.njit(_F(_I, _F), **_JIT)
def known_share(watched_ms, warmup_ms):
    """How much of a line's contacts the detector can know after watching the stream this long."""
    if not warmup_ms > 0:
        return 1.0
    k = watched_ms / warmup_ms
    return k if k < 1.0 else 1.0


# -- the packed form (version 3): what the changelog stores ---------------------------------------
# The head of a row as it is (after the version byte), a count per ring, then each ring without
# its zero tail, cut at a whole item. `features._from_v2` is the same in Python (checked equal).
PACK_V3 = 3
V2_RINGS_AT = STATE.fields["contacts"][1]  # the rings follow the head: contacts, provinces, ids, flags
_RING_LAYOUT = np.array([(STATE.fields[name][1], STATE.fields[name][0].base.itemsize, STATE.fields[name][0].shape[0])
                         for name in ("contacts", "provinces", "recent_ids", "contact_flags")], dtype=np.int64)
assert all(_RING_LAYOUT[k, 0] + _RING_LAYOUT[k, 1] * _RING_LAYOUT[k, 2] == _RING_LAYOUT[k + 1, 0] for k in range(3))
assert _RING_LAYOUT[0, 0] == V2_RINGS_AT and _RING_LAYOUT[3, 0] + _RING_LAYOUT[3, 2] == STATE.itemsize
PACKED_MAX_V3 = STATE.itemsize + 4
_ROW_BYTES = STATE.itemsize


@nb.njit(_I(T.uint8[::1], _I, T.uint8[::1], T.int64[:, ::1]), **_JIT)
def _pack_v3(u8, i, out, layout):
    base = i * _ROW_BYTES
    out[0] = PACK_V3
    for k in range(1, V2_RINGS_AT):
        out[k] = u8[base + k]
    pos = V2_RINGS_AT + 4
    for r in range(4):
        off = base + layout[r, 0]
        item = layout[r, 1]
        end = item * layout[r, 2]
        while end > 0 and u8[off + end - 1] == 0:
            end -= 1
        n = (end + item - 1) // item
        out[V2_RINGS_AT + r] = n
        for k in range(n * item):
            out[pos + k] = u8[off + k]
        pos += n * item
    return pos


def pack_v3(u8, i, out) -> int:
    """Row i (of the rows `u8` views as bytes) packed into `out` (at least PACKED_MAX_V3 bytes);
    returns the length. One call per changed number at each commit, instead of ~2 µs of slicing."""
    return _pack_v3_call(u8, i, out, _RING_LAYOUT)


# -- the rest form: a number at rest, held in memory with its zero bytes left out ---------------
# A packed state is about half zero bytes (counters not yet used, rings not full, the high bytes of
# small integers). At rest, where a carrier holds most of its numbers, a state is kept as a head
# (what the sweeps read: last_ts, status, tier, and the packed length), then a bitmap of which
# bytes of the packed head and ring counts are not zero, then those bytes, then the rings as they
# are (trimmed already, and hardly ever zero inside): ~0.2 KB instead of ~0.3. Before that, the
# timestamps that are usually last_ts or near it are kept as their difference in bits from it
# (xor), and the fields whose "none" is -1 as the value plus one, so that more of their bytes
# are zero. It is never written anywhere: the changelog and every reader still get the packed
# bytes, restored exactly.
REST_HEAD = 12  # last_ts <i8, status u1, tier i1, the packed length <u2
_LAST_TS_AT = STATE.fields["last_ts"][1]
_STATUS_AT = STATE.fields["status"][1]
_TIER_AT = STATE.fields["tier"][1]
_NEAR_LAST_TS = (STATE.fields["first_ts"][1], STATE.fields["decayed_ts"][1])  # kept xor last_ts
_NONE_IS_MINUS_ONE = (STATE.fields["last_pop_ts"][1], STATE.fields["applied_offset"][1])  # kept + 1
_ELIDED = V2_RINGS_AT + 4  # the head and the ring counts: where the zero bytes are
REST_MAX = REST_HEAD + (_ELIDED + 7) // 8 + PACKED_MAX_V3
_BYTES = T.Bytes(T.uint8, 1, "C", readonly=True)  # a bytes object, passed as it is
_MURMUR_M = 0x5BD1E995


@nb.njit(inline="always")
def _u64_at(a, off):
    v = np.uint64(0)
    for k in range(8):
        v |= np.uint64(a[off + k]) << np.uint64(8 * k)
    return v


@nb.njit(inline="always")
def _u64_put(a, off, v):
    for k in range(8):
        a[off + k] = (v >> np.uint64(8 * k)) & np.uint64(0xFF)


@nb.njit(inline="always")
def _in_rest_head(k):
    return _LAST_TS_AT <= k < _LAST_TS_AT + 8 or k == _STATUS_AT or k == _TIER_AT


@nb.njit([_I(_BYTES, _I, T.uint8[::1], T.uint8[::1]), _I(T.uint8[::1], _I, T.uint8[::1], T.uint8[::1])], **_JIT)
def _to_rest(src, n, out, tmp):
    for k in range(n):
        tmp[k] = src[k]
    last_ts = _u64_at(src, _LAST_TS_AT)
    for off in _NEAR_LAST_TS:
        _u64_put(tmp, off, _u64_at(tmp, off) ^ last_ts)
    for off in _NONE_IS_MINUS_ONE:
        _u64_put(tmp, off, _u64_at(tmp, off) + np.uint64(1))
    for k in range(8):
        out[k] = src[_LAST_TS_AT + k]
    out[8] = src[_STATUS_AT]
    out[9] = src[_TIER_AT]
    out[10] = n & 0xFF
    out[11] = n >> 8
    bits = REST_HEAD
    m = min(n, _ELIDED)
    pos = bits + (m + 7) // 8
    for k in range(bits, pos):
        out[k] = 0
    for k in range(m):
        b = tmp[k]
        if b != 0 and not _in_rest_head(k):  # (the head's own bytes are kept once, in the head)
            out[bits + (k >> 3)] |= 1 << (k & 7)
            out[pos] = b
            pos += 1
    for k in range(m, n):
        out[pos] = tmp[k]
        pos += 1
    return pos


_REST_TMP = np.zeros(PACKED_MAX_V3, dtype=np.uint8)  # (one thread puts numbers to rest)


def to_rest(src, n, out) -> int:
    """The packed state src[:n] (version 2 or 3: the head is the same) in the rest form, into
    `out` (at least REST_MAX bytes); returns its length."""
    return _to_rest(src, n, out, _REST_TMP)


@nb.njit(_I(T.uint8[::1], _I, T.uint8[::1], T.uint8[::1], T.uint8[::1], T.int64[:, ::1]), **_JIT)
def _row_to_rest(u8, i, out, packed, tmp, layout):
    n = _pack_v3(u8, i, packed, layout)
    m = _to_rest(packed, n, out, tmp)
    base = i * _ROW_BYTES
    u8[base] = 2  # the row blanked: a freed row holds nothing of the number it held
    for k in range(1, _ROW_BYTES):
        u8[base + k] = 0
    return m


_ROW_TO_REST_PACKED = np.zeros(PACKED_MAX_V3, dtype=np.uint8)


def row_to_rest(u8, i, out) -> int:
    """Row i (of the rows `u8` views as bytes) packed, in the rest form into `out` (at least
    REST_MAX bytes), and the row blanked (all zeros, version byte 2); returns the form's length.
    One compiled call per number the hourly sweep puts to rest, where packing, the rest form and
    the blanking took ~4.4 µs between them (the sweep holds up the record that triggers it)."""
    return _row_to_rest_call(u8, i, out, _ROW_TO_REST_PACKED, _REST_TMP, _RING_LAYOUT)


@nb.njit(_I(_BYTES, T.uint8[::1]), **_JIT)
def from_rest(src, out):
    """The packed state a rest form holds, into `out` (at least PACKED_MAX_V3 bytes, or the
    length a version-2 state has); returns its length."""
    n = src[10] | (np.int64(src[11]) << 8)
    bits = REST_HEAD
    m = min(n, _ELIDED)
    pos = bits + (m + 7) // 8
    for k in range(m):
        if src[bits + (k >> 3)] & (1 << (k & 7)):
            out[k] = src[pos]
            pos += 1
        else:
            out[k] = 0
    for k in range(m, n):
        out[k] = src[pos]
        pos += 1
    for k in range(8):
        out[_LAST_TS_AT + k] = src[k]
    out[_STATUS_AT] = src[8]
    out[_TIER_AT] = src[9]
    last_ts = _u64_at(out, _LAST_TS_AT)
    for off in _NEAR_LAST_TS:
        _u64_put(out, off, _u64_at(out, off) ^ last_ts)
    for off in _NONE_IS_MINUS_ONE:
        _u64_put(out, off, _u64_at(out, off) - np.uint64(1))
    return n


@nb.njit(_I(T.uint8[::1], _I, T.uint8[::1], _I, T.int64[:, ::1]), **_JIT)
def _packed_into_row(src, n, u8, i, layout):
    """The packed state src[:n] (version 2, or version 3 with its rings cut) written over row i
    of the rows `u8` views as bytes, as the row's version-2 bytes; 0, or -1 (row untouched) when
    src[:n] is not a whole packed state. `features.check_packed` and `features._to_v2` are the
    same in Python (checked equal in tests/test_features.py), as `_from_v2` is for `pack_v3`."""
    base = i * _ROW_BYTES
    if n == _ROW_BYTES and src[0] == 2:
        for k in range(_ROW_BYTES):
            u8[base + k] = src[k]
        return 0
    if n < V2_RINGS_AT + 4 or src[0] != PACK_V3:
        return -1
    total = V2_RINGS_AT + 4
    for r in range(4):
        count = src[V2_RINGS_AT + r]
        if count > layout[r, 2]:
            return -1
        total += count * layout[r, 1]
    if total != n:
        return -1
    u8[base] = 2
    for k in range(1, V2_RINGS_AT):
        u8[base + k] = src[k]
    pos = V2_RINGS_AT + 4
    for r in range(4):
        off = base + layout[r, 0]
        kept = src[V2_RINGS_AT + r] * layout[r, 1]
        for k in range(kept):
            u8[off + k] = src[pos + k]
        for k in range(kept, layout[r, 1] * layout[r, 2]):
            u8[off + k] = 0  # the zero tail `pack_v3` cut
        pos += kept
    return 0


@nb.njit(_I(_BYTES, T.uint8[::1], _I, T.uint8[::1], T.int64[:, ::1]), **_JIT)
def _rest_into_row(src, u8, i, tmp, layout):
    if len(src) < REST_HEAD:
        return -1
    n = src[10] | (np.int64(src[11]) << 8)  # the packed length, from the rest form's head
    if n > tmp.size:
        return -1
    return _packed_into_row(tmp, from_rest(src, tmp), u8, i, layout)


_REST_INTO_ROW_TMP = np.zeros(PACKED_MAX_V3, dtype=np.uint8)  # (one thread wakes numbers)


def rest_into_row(form, u8, i) -> bool:
    """A number's rest form written straight over row i of the rows `u8` views as bytes, as
    `features` had it before it went to rest: one compiled call where a number coming back from
    rest took three steps and two temporary bytes objects (~4.5 µs). False, and the row
    untouched, when the form does not hold a whole packed state."""
    return _rest_into_row_call(form, u8, i, _REST_INTO_ROW_TMP, _RING_LAYOUT) == 0


# -- one record, fused: what the engine calls per record ----------------------------------------
# (one call into compiled code per record instead of several; each step is the function above)

ADMIT, DUPLICATE_OFFSET, LATE, DUPLICATE_ID = range(4)  # admit's verdicts


@nb.njit(T.UniTuple(_I, 2)(_ROWS, _I, _I, _I, _I, _U), **_JIT)
def admit(rows, i, offset, ts, lateness_ms, id_hash):
    """Whether a record of a known number is folded in: (verdict, the number's status).

    DUPLICATE_OFFSET: at or below the input offset the state already holds (replayed after a
    crash); LATE: later than the allowed lateness (its offset is then taken as applied, so it is
    set aside once); DUPLICATE_ID: a record id seen among the last ones (else it is remembered)."""
    r = rows[i]
    if 0 <= offset <= r.applied_offset:
        return DUPLICATE_OFFSET, r.status
    if ts < r.last_ts - lateness_ms:
        if offset >= 0:
            r.applied_offset = offset
        return LATE, r.status
    if seen_before(rows, i, id_hash):
        return DUPLICATE_ID, r.status
    return ADMIT, r.status


@nb.njit(T.void(_ROWS, _I, _U, _I), **_JIT)
def admitted(rows, i, id_hash, offset):
    """After a record was folded in: a new number remembers its first record id (id_hash 0: no
    id to remember), and the state the input offset it now reflects (offset < 0: none)."""
    r = rows[i]
    if r.n_mo + r.n_mt == 1 and id_hash:
        seen_before(rows, i, id_hash)
    if offset >= 0:
        r.applied_offset = offset


@nb.njit(_I(_ROWS, _I, _I, _U, _U, _I, _I, _U, _I), **_JIT)
def mt_step(rows, i, ts, peer_h, imei_h, handset_lines, cell_lines, id_hash, offset):
    """An incoming record: the cross-number facts seen with it, the update, `admitted`; returns
    the status."""
    r = rows[i]
    r.handset_lines = handset_lines
    r.cell_lines = cell_lines
    update_mt(rows, i, ts, peer_h, imei_h)
    admitted(rows, i, id_hash, offset)
    return r.status


NOTHING, POPULATION, SUSPENDED, SCORED = range(4)  # mo_step's answers
_BUF = T.float64[:, ::1]  # raw values, support, evidence: one row each


@nb.njit(_F(_ROWS, _I, _BUF, _MODEL), **_JIT)
def score_row(rows, i, buf, model):
    """Evidence (into buf[2]) from the raw values and support in buf[0], buf[1], and the score; a
    line with confirmed fraud behind it is watched more closely (its log-odds raised)."""
    evidence_vector(buf[0], buf[1], buf[2], model)
    score = score_vector(buf[2], model)
    if rows[i].fraud_confirmed and 0.0 < score < 1.0:  # restored fraud lines often offend again
        z = math.log(score / (1.0 - score)) + model[M_PARAM, P_WATCH_BIAS]
        score = 1.0 / (1.0 + math.exp(-z))
    return score


@nb.njit(_F(_ROWS, _I, _I, _I, _BUF, _MODEL), **_JIT)
def score_active(rows, i, ts, cleared_memory_ms, buf, model):
    """`score_row` for a line that is not suspended; a clearance older than `cleared_memory_ms`
    is forgotten (a clearance is not a licence forever: lines change hands)."""
    score = score_row(rows, i, buf, model)
    r = rows[i]
    if r.cleared_score and ts - r.suspended_ts > cleared_memory_ms:
        r.cleared_score = 0.0
    return score


@nb.njit(_F(_ROWS, _I, _BUF, _I, _B, _I, _B, _B, _B, _I, _I, _I, _MODEL), **_JIT)
def raw_into(rows, i, buf, ts, has_profile, activated_ts, prepaid, id_verified, business_plan, handset_lines,
             cell_lines, watched_ms, model):
    """`raw_vector` into buf[0], buf[1] with the model's constants; returns the tenure (-1: none)."""
    p = model[M_PARAM]
    return raw_vector(rows, i, buf[0], buf[1], ts, has_profile, activated_ts, prepaid, id_verified, business_plan,
                      handset_lines, cell_lines, rows[i].decayed[D_PREMIUM_DAY],
                      known_share(watched_ms, p[P_WARMUP_MS]), p[P_SHARE_CALLS], p[P_NEW_LINE_DAYS],
                      p[P_LONG_TENURE_DAYS])


@nb.njit(T.Tuple((_I, _F))(_ROWS, _I, _I, _U, _U, T.uint32, _B, _B, _B, _B, _B, _I, _B, _F, _I, _I, _I,
                           _B, _I, _B, _B, _B, _I, _I, _I, _I, _I, _BUF, _MODEL, _U, _I), **_JIT)
def mo_step(rows, i, ts, peer_h, imei_h, province_id, out_of_province, intl, premium, voice, answered, duration_s,
            night, alpha, short_call_s, handset_lines, cell_lines,
            has_profile, activated_ts, prepaid, id_verified, business_plan,
            watched_ms, min_calls, population_min_calls, population_interval_ms, cleared_memory_ms, buf, model,
            id_hash, offset):
    """An outgoing record: the update, then as far towards a score as the rules need.

    NOTHING: nothing reads the line's features yet. Else its raw values and support are in
    buf[0], buf[1], and POPULATION: they are due to feed the population baseline (which may move
    the typical values the evidence needs: the caller feeds it, then scores with `score_active`);
    SUSPENDED: the caller reviews the suspended line; SCORED: the score, evidence in buf[2]. The
    record is `admitted` in every case."""
    r = rows[i]
    r.handset_lines = handset_lines
    r.cell_lines = cell_lines
    update_mo(rows, i, ts, peer_h, imei_h, province_id, out_of_province, intl, premium, voice, answered,
              duration_s, night, alpha, short_call_s)
    admitted(rows, i, id_hash, offset)
    status = r.status
    feeds = status == 0 and r.n_mo >= population_min_calls and ts - r.last_pop_ts >= population_interval_ms
    if not (feeds or status or r.n_mo >= min_calls):
        return NOTHING, 0.0
    raw_into(rows, i, buf, ts, has_profile, activated_ts, prepaid, id_verified, business_plan, handset_lines,
             cell_lines, watched_ms, model)
    if feeds:
        return POPULATION, 0.0
    if status:
        return SUSPENDED, 0.0
    return SCORED, score_active(rows, i, ts, cleared_memory_ms, buf, model)


@nb.njit(_I(_BYTES, _I), **_JIT)
def key_partition(key, partitions):
    """The Kafka partition of `key` under the default partitioner: murmur2 as the Java client
    computes it (`core.murmur2`, tested equal), made positive, modulo `partitions`.

    Why here: every record's number needs its partition (to find the engine holding its state),
    and a carrier tracks too many numbers to remember each one's; in Python this hash costs
    ~1.5 µs a number, compiled ~0.3 µs with the call. (Arithmetic in int64, masked to 32 bits
    after each product, as in the Python: numba would widen uint32 products to 64 bits.)"""
    w = 0xFFFFFFFF
    n = len(key)
    h = 0x9747B28C ^ n
    n4 = n & ~3
    for j in range(0, n4, 4):
        k = (np.int64(key[j]) | (np.int64(key[j + 1]) << 8) | (np.int64(key[j + 2]) << 16)
             | (np.int64(key[j + 3]) << 24))
        k = (k * _MURMUR_M) & w
        h = ((h * _MURMUR_M) & w) ^ (((k ^ (k >> 24)) * _MURMUR_M) & w)
    extra = n & 3
    if extra:
        if extra == 3:
            h ^= np.int64(key[n4 + 2]) << 16
        if extra >= 2:
            h ^= np.int64(key[n4 + 1]) << 8
        h = ((h ^ np.int64(key[n4])) * _MURMUR_M) & w
    h ^= h >> 13
    h = (h * _MURMUR_M) & w
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


# -- the hot calls, straight into the compiled code ---------------------------------------------
def entry_point(fn):
    """`fn`'s compiled code, called without numba's dispatcher; `fn` itself where there is none
    (NUMBA_DISABLE_JIT=1, or a function not compiled for exactly one signature).

    Every function here is compiled eagerly for one signature, so the dispatcher's work per call
    (typing each argument to pick an overload, ~0.3 µs for a row array alone) picks the same code
    every time; for the calls made once or twice per record it was ~10% of the core. The entry
    point still converts and checks each argument as the signature says (an array of another
    dtype or a string where an int belongs raises), but does not refuse what converts: a float
    for an int is truncated, and a strided array passes for a contiguous one. So it is for
    callers whose arguments are the store's own row chunks and ints, as `core.py` and
    `features.py` pass them."""
    overloads = getattr(fn, "overloads", None)
    if not overloads or len(overloads) != 1:
        return fn
    compiled = getattr(next(iter(overloads.values())), "entry_point", None)
    return compiled if callable(compiled) else fn


def _with_record_rows(fn):
    """`fn` taking its `rows` as a record array (the same memory), for NUMBA_DISABLE_JIT=1.

    numba reads a row's fields as attributes (`rows[i].decayed_ts`); run as plain Python, an
    element of a structured array (`np.void`) has no such attributes, an element of a record
    array (`np.record`) has them and writes through to the row."""
    @functools.wraps(fn)
    def call(rows, *args):
        if type(rows) is np.ndarray:
            rows = rows.view(np.recarray)
        return fn(rows, *args)

    return call


if nb.config.DISABLE_JIT:  # (compiled, numba reads the fields itself: nothing is wrapped)
    for _name, _fn in list(globals().items()):
        if (inspect.isfunction(_fn) and _fn.__module__ == __name__
                and next(iter(inspect.signature(_fn).parameters), None) == "rows"):
            globals()[_name] = _with_record_rows(_fn)
    del _name, _fn

admit_call = entry_point(admit)
key_partition_call = entry_point(key_partition)
mt_step_call = entry_point(mt_step)
mo_step_call = entry_point(mo_step)
score_active_call = entry_point(score_active)
_pack_v3_call = entry_point(_pack_v3)
from_rest_call = entry_point(from_rest)
_rest_into_row_call = entry_point(_rest_into_row)
_row_to_rest_call = entry_point(_row_to_rest)
