"""Per-number rolling features: small, bounded state updated one record at a time.

Each number keeps a few decayed counters, per-call moving shares, and a short ring of recent
contacts; nothing grows with the number's traffic. Numbers that share a handset or a cell are
counted by `shared.Enricher`, keyed by the shared thing, not by number.

Two kinds of memory, on purpose:
- *time-decayed counts* (half-lives of an hour and a day) answer "how much, how fast";
- *per-call moving shares* (an exponential average over the last ~N outgoing calls) answer "what
  kind of calls", and react within a handful of calls even on a line with a long quiet history.
"""
from __future__ import annotations

import zlib
from array import array

from .contract import CDR, Profile, province

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# Indexes into NumberState.shares (per-call moving averages over outgoing calls).
S_NEW_PEER, S_UNANSWERED, S_OUT_OF_PROVINCE, S_INTL, S_PREMIUM, S_SHORT, S_NIGHT = range(7)
N_SHARES = 7
# Indexes into NumberState.decayed (time-decayed counts).
D_MO_HOUR, D_MO_DAY, D_MT_DAY, D_PREMIUM_DAY, D_INTL_MIN_DAY = range(5)
N_DECAYED = 5

CONTACTS = 32  # recent distinct peers remembered per number
PROVINCE_RING = 12  # provinces of the last outgoing calls
RECENT_IDS = 16  # record ids remembered per number, to drop repeated deliveries

FLAG_CALLED = 1  # we called them
FLAG_CALLED_US = 2  # they called us

_province_ids: dict[str, int] = {}


def _province_id(prov: str) -> int:
    """Stable non-zero id of a province code (crc32: no collisions among region codes)."""
    pid = _province_ids.get(prov)
    if pid is None:
        pid = zlib.crc32(prov.encode()) or 1
        _province_ids[prov] = pid
    return pid


def peer_hash(peer: str) -> int:
    return zlib.crc32(peer.encode())


class NumberState:
    """Everything the detector remembers about one number (bounded: ~0.5 KB)."""

    __slots__ = (
        "first_ts", "last_ts", "n_mo", "n_mt", "n_voice",
        "decayed", "decayed_ts", "shares",
        "contacts", "contact_flags", "contact_pos",
        "provinces", "province_pos",
        "imei", "imei_changes", "last_pop_ts",
        # decision state, kept with the features so it moves with the number's partition
        "status", "tier", "suspended_ts", "peak_score", "cleared_score", "restores", "fraud_confirmed",
        "below_since", "recent_ids", "recent_pos", "applied_offset", "handset_lines", "cell_lines",
    )

    def __init__(self, ts: int):
        self.first_ts = ts
        self.last_ts = ts
        self.n_mo = 0
        self.n_mt = 0
        self.n_voice = 0  # outgoing voice calls (the support of answer-based shares)
        self.decayed = array("d", bytes(8 * N_DECAYED))
        self.decayed_ts = ts
        self.shares = array("d", bytes(8 * N_SHARES))
        self.contacts = array("I", bytes(4 * CONTACTS))
        self.contact_flags = bytearray(CONTACTS)
        self.contact_pos = 0
        self.provinces = array("I", bytes(4 * PROVINCE_RING))
        self.province_pos = 0
        self.imei = ""
        self.imei_changes = 0.0
        self.last_pop_ts = -1
        self.status = 0  # 0 active, 1 suspended
        self.tier = -1  # index into TIERS when suspended
        self.suspended_ts = 0
        self.peak_score = 0.0
        self.cleared_score = 0.0  # score at which an operator last cleared this line
        self.restores = 0
        self.fraud_confirmed = False
        self.below_since = 0
        self.recent_ids = array("Q", bytes(8 * RECENT_IDS))
        self.recent_pos = 0
        self.applied_offset = -1  # input offset of the last record folded in (-1: none/offline)
        self.handset_lines = 0  # the last cross-number facts seen, for scoring between records
        self.cell_lines = 0

    # -- state as plain data, for snapshots and the changelog -------------------------------
    def to_dict(self) -> dict:
        return {
            "v": 1,
            "first_ts": self.first_ts, "last_ts": self.last_ts, "n_mo": self.n_mo, "n_mt": self.n_mt,
            "n_voice": self.n_voice,
            "decayed": list(self.decayed), "decayed_ts": self.decayed_ts, "shares": list(self.shares),
            "contacts": list(self.contacts), "contact_flags": list(self.contact_flags),
            "contact_pos": self.contact_pos, "provinces": list(self.provinces),
            "province_pos": self.province_pos,
            "imei": self.imei, "imei_changes": self.imei_changes, "last_pop_ts": self.last_pop_ts,
            "status": self.status, "tier": self.tier, "suspended_ts": self.suspended_ts, "peak_score": self.peak_score,
            "cleared_score": self.cleared_score, "restores": self.restores,
            "fraud_confirmed": self.fraud_confirmed, "below_since": self.below_since,
            "recent_ids": list(self.recent_ids), "recent_pos": self.recent_pos,
            "applied_offset": self.applied_offset,
            "handset_lines": self.handset_lines, "cell_lines": self.cell_lines,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "NumberState":
        if d.get("v") != 1:
            raise ValueError(f"unknown number-state version {d.get('v')!r}")
        missing = [name for name in cls.__slots__ if name not in d]
        if missing:
            raise ValueError(f"number state v1 lacks fields {missing}")
        s = cls(d["first_ts"])
        for name in cls.__slots__:
            value = d[name]
            current = getattr(s, name)
            if isinstance(current, array):
                value = array(current.typecode, value)
            elif isinstance(current, bytearray):
                value = bytearray(value)
            setattr(s, name, value)
        return s


def seen_before(state: NumberState, record_id: str) -> bool:
    """True if this record id is among the number's recent ones; else remember it."""
    b = record_id.encode()
    h = ((zlib.crc32(b) << 32) | zlib.adler32(b)) or 1  # 64 bits: no practical collisions
    ids = state.recent_ids
    if h in ids:
        return True
    pos = state.recent_pos
    ids[pos] = h
    state.recent_pos = (pos + 1) % RECENT_IDS
    return False


def _decay_to(state: NumberState, ts: int) -> None:
    dt = ts - state.decayed_ts
    if dt <= 0:
        return
    d = state.decayed
    fh = 0.5 ** (dt / HOUR_MS)
    fd = 0.5 ** (dt / DAY_MS)
    d[D_MO_HOUR] *= fh
    d[D_MO_DAY] *= fd
    d[D_MT_DAY] *= fd
    d[D_PREMIUM_DAY] *= fd
    d[D_INTL_MIN_DAY] *= fd
    state.imei_changes *= fd
    state.decayed_ts = ts


def _contact_index(state: NumberState, h: int) -> int:
    try:
        return state.contacts.index(h)
    except ValueError:
        return -1


def _remember_contact(state: NumberState, h: int, flag: int) -> bool:
    """Mark a peer as a contact; returns True when the peer was not a known contact."""
    i = _contact_index(state, h)
    if i >= 0 and state.contact_flags[i]:
        state.contact_flags[i] |= flag
        return False
    pos = state.contact_pos
    state.contacts[pos] = h
    state.contact_flags[pos] = flag
    state.contact_pos = (pos + 1) % CONTACTS
    return True


class FeatureConfig:
    """The knobs of feature extraction (from config `features:`)."""

    def __init__(self, cfg: dict):
        self.share_calls = float(cfg.get("share_window_calls", 8))
        self.alpha = 1.0 / self.share_calls
        self.premium_destinations = frozenset(cfg.get("premium_destinations", ()))
        self.short_call_s = int(cfg.get("short_call_seconds", 5))
        self.night_hours = tuple(cfg.get("night_hours_local", (0, 6)))
        self.utc_offset_h = float(cfg.get("utc_offset_hours", 8))
        self.shared_window_ms = int(float(cfg.get("shared_window_hours", 72)) * HOUR_MS)
        self.cell_window_ms = int(float(cfg.get("cell_window_hours", 24)) * HOUR_MS)
        self.bypass_min_calls = int(cfg.get("bypass_min_calls", 3))


def update_mt(state: NumberState, rec: CDR) -> None:
    _decay_to(state, rec.ts)
    state.last_ts = max(state.last_ts, rec.ts)
    state.n_mt += 1
    state.decayed[D_MT_DAY] += 1.0
    _remember_contact(state, peer_hash(rec.peer), FLAG_CALLED_US)
    _observe_imei(state, rec.imei)


def _observe_imei(state: NumberState, imei: str) -> None:
    if imei != state.imei:
        if state.imei:
            state.imei_changes += 1.0
        state.imei = imei


def update_mo(state: NumberState, rec: CDR, home_province: str, fc: FeatureConfig) -> None:
    """Fold one outgoing record into the number's state."""
    _decay_to(state, rec.ts)
    state.last_ts = max(state.last_ts, rec.ts)
    state.n_mo += 1
    d = state.decayed
    d[D_MO_HOUR] += 1.0
    d[D_MO_DAY] += 1.0
    _observe_imei(state, rec.imei)

    new_peer = _remember_contact(state, peer_hash(rec.peer), FLAG_CALLED)
    prov = province(rec.peer_region)
    intl = prov.startswith("INTL-")
    voice = rec.service == "voice"
    hour = ((rec.ts / HOUR_MS) + fc.utc_offset_h) % 24
    lo, hi = fc.night_hours
    night = lo <= hour < hi

    # Per-call shares warm up as a plain mean over the first calls, then move as an EWMA.
    a = max(fc.alpha, 1.0 / state.n_mo)
    s = state.shares
    s[S_NEW_PEER] += a * (new_peer - s[S_NEW_PEER])
    s[S_OUT_OF_PROVINCE] += a * ((prov != home_province) - s[S_OUT_OF_PROVINCE])
    s[S_INTL] += a * (intl - s[S_INTL])
    premium = intl and prov[5:] in fc.premium_destinations
    s[S_PREMIUM] += a * (premium - s[S_PREMIUM])
    if premium:
        d[D_PREMIUM_DAY] += 1.0
    if intl and voice:
        d[D_INTL_MIN_DAY] += rec.duration_s / 60.0
    s[S_NIGHT] += a * (night - s[S_NIGHT])
    if voice:
        state.n_voice += 1
        av = max(fc.alpha, 1.0 / state.n_voice)
        s[S_UNANSWERED] += av * ((not rec.answered) - s[S_UNANSWERED])
        s[S_SHORT] += av * ((rec.answered and rec.duration_s < fc.short_call_s) - s[S_SHORT])

    pos = state.province_pos
    state.provinces[pos] = _province_id(prov)
    state.province_pos = (pos + 1) % PROVINCE_RING


def callback_share(state: NumberState) -> tuple[float, int]:
    """Of the recent peers this number called, the share that also called it."""
    called = both = 0
    for f in state.contact_flags:
        if f & FLAG_CALLED:
            called += 1
            if f & FLAG_CALLED_US:
                both += 1
    return (both / called if called else 0.0), called


def province_spread(state: NumberState) -> float:
    """Distinct provinces among the last outgoing calls, per call (1.0: every call elsewhere)."""
    n = min(state.n_mo, PROVINCE_RING)
    if n == 0:
        return 0.0
    ring = state.provinces if n == PROVINCE_RING else state.provinces[:n]
    return len(set(ring)) / n


def tenure_days(profile: Profile | None, ts: int) -> float | None:
    if profile is None:
        return None
    return max(0.0, (ts - profile.activated_ts) / DAY_MS)
