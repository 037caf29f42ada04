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

import operator
import struct
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


def hash64(text: str) -> int:
    """A non-zero 64-bit hash (crc32 and adler32 side by side): no practical collisions."""
    b = text.encode()
    return ((zlib.crc32(b) << 32) | zlib.adler32(b)) or 1


# The packed form of a NumberState: what is held in memory between records and written to the
# changelog. Binary, because it is ~0.55 KB at most where the object form is ~1.5 KB and JSON
# ~0.9 KB. Version 3 stores each ring (contacts, provinces, record ids, contact flags) without its
# unused zero tail: a number seen a few times — most of those a carrier tracks on a given day — is
# packed in ~0.27 KB, a number with full rings in 555 bytes. Version 2 (fixed 551 bytes) is still read.
PACK_VERSION = 3
_SCALARS = ("first_ts", "last_ts", "decayed_ts", "last_pop_ts", "suspended_ts", "below_since", "applied_offset",
            "n_mo", "n_mt", "n_voice", "restores", "handset_lines", "cell_lines",
            "contact_pos", "province_pos", "recent_pos", "status", "fraud_confirmed", "tier",
            "imei_hash", "imei_changes", "peak_score", "cleared_score")
_HEAD = struct.Struct("<B7q6I5BbQ3d")  # version byte, then _SCALARS in order
_GET_SCALARS = operator.attrgetter(*_SCALARS)
_FIXED_AT = _HEAD.size  # decayed and shares: 12 doubles
_RINGS_AT = _FIXED_AT + 8 * (N_DECAYED + N_SHARES)
# the rings, in order: (slot, typecode, length); v3 stores how many leading items are kept of each
_RINGS = (("contacts", "I", CONTACTS), ("provinces", "I", PROVINCE_RING), ("recent_ids", "Q", RECENT_IDS),
          ("contact_flags", "B", CONTACTS))
_RING_COUNTS = struct.Struct("<4B")
_ITEM_SIZE = tuple(array(code).itemsize for _, code, _ in _RINGS)
assert _ITEM_SIZE == (4, 4, 8, 1)  # as `pack` cuts them
_FULL_RING_BYTES = tuple(size * n for size, (_, _, n) in zip(_ITEM_SIZE, _RINGS))
PACKED_SIZE_V2 = _RINGS_AT + sum(_FULL_RING_BYTES)  # 551
PACKED_MAX = PACKED_SIZE_V2 + _RING_COUNTS.size  # 555: a v3 state with every ring full
PACKED_MIN = _RINGS_AT + _RING_COUNTS.size
_SHARES_AT = _FIXED_AT + 8 * N_DECAYED
_FULL_CONTACTS, _FULL_PROVINCES, _FULL_IDS, _FULL_FLAGS = _FULL_RING_BYTES
_ZEROS = bytes(max(_FULL_RING_BYTES))  # the zero tails `pack` cut, to pad rings back
# read without unpacking, for sweeps and counts over every number (the head is the same in v2 and v3)
_PEEK_LAST_TS = struct.Struct("<9xq")  # after the version byte and first_ts
_PEEK_STATUS_TIER = struct.Struct("<84xBxb")  # after 1 + 7*8 + 6*4 + 3 bytes: status, fraud_confirmed, tier
_PEEK_LAST_TS_STATUS = struct.Struct("<9xq67xB")  # last_ts, status: what the idle sweep reads


def check_packed(blob: bytes) -> None:
    """Raise ValueError unless `blob` is a whole packed state of a known version."""
    if len(blob) >= PACKED_MIN and blob[0] == PACK_VERSION:
        nc, np_, ni, nf = _RING_COUNTS.unpack_from(blob, _RINGS_AT)  # the _RINGS, in order
        if (nc <= CONTACTS and np_ <= PROVINCE_RING and ni <= RECENT_IDS and nf <= CONTACTS
                and len(blob) == PACKED_MIN + 4 * nc + 4 * np_ + 8 * ni + nf):
            return
    elif len(blob) == PACKED_SIZE_V2 and blob[0] == 2:
        return
    raise ValueError(f"packed number state: unknown version {blob[:1]!r} or size {len(blob)}")


def packed_last_ts(blob: bytes) -> int:
    return _PEEK_LAST_TS.unpack_from(blob)[0]


def packed_status_tier(blob: bytes) -> tuple[int, int]:
    return _PEEK_STATUS_TIER.unpack_from(blob)


class NumberState:
    """Everything the detector remembers about one number (bounded: ~0.5 KB)."""

    __slots__ = (
        "first_ts", "last_ts", "n_mo", "n_mt", "n_voice",
        "decayed", "decayed_ts", "shares",
        "contacts", "contact_flags", "contact_pos",
        "provinces", "province_pos",
        "imei_hash", "imei_changes", "last_pop_ts",
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
        self.imei_hash = 0  # hash64 of the last handset seen (0: none yet)
        self.imei_changes = 0.0
        self.last_pop_ts = -1
        self.status = 0  # 0 active, 1 suspended, 2 suspended only in shadow by the storm breaker
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

    # -- packed: how states are held at rest and written to the changelog --------------------
    def pack(self) -> bytes:
        # each ring without its zero tail, cut at a whole item (inline: called at every commit)
        contacts = self.contacts.tobytes()
        nc = (len(contacts.rstrip(b"\0")) + 3) >> 2
        provinces = self.provinces.tobytes()
        np_ = (len(provinces.rstrip(b"\0")) + 3) >> 2
        ids = self.recent_ids.tobytes()
        ni = (len(ids.rstrip(b"\0")) + 7) >> 3
        flags = bytes(self.contact_flags).rstrip(b"\0")
        return b"".join((_HEAD.pack(PACK_VERSION, *_GET_SCALARS(self)),
                         self.decayed.tobytes(), self.shares.tobytes(),
                         _RING_COUNTS.pack(nc, np_, ni, len(flags)),
                         contacts[:nc << 2], provinces[:np_ << 2], ids[:ni << 3], flags))

    @classmethod
    def unpack(cls, blob: bytes) -> "NumberState":
        check_packed(blob)
        s = object.__new__(cls)
        (_, s.first_ts, s.last_ts, s.decayed_ts, s.last_pop_ts, s.suspended_ts, s.below_since, s.applied_offset,
         s.n_mo, s.n_mt, s.n_voice, s.restores, s.handset_lines, s.cell_lines,
         s.contact_pos, s.province_pos, s.recent_pos, s.status, fraud, s.tier,
         s.imei_hash, s.imei_changes, s.peak_score, s.cleared_score) = _HEAD.unpack_from(blob)
        s.fraud_confirmed = bool(fraud)
        s.decayed = array("d", blob[_FIXED_AT:_SHARES_AT])
        s.shares = array("d", blob[_SHARES_AT:_RINGS_AT])
        if blob[0] == 2:  # fixed-size rings, no counts
            a = _RINGS_AT
            b = a + _FULL_CONTACTS
            c = b + _FULL_PROVINCES
            d = c + _FULL_IDS
            s.contacts = array("I", blob[a:b])
            s.provinces = array("I", blob[b:c])
            s.recent_ids = array("Q", blob[c:d])
            s.contact_flags = bytearray(blob[d:d + _FULL_FLAGS])
            return s
        # v3: each ring's leading items, padded back to its full length with zeros
        nc, np_, ni, nf = _RING_COUNTS.unpack_from(blob, _RINGS_AT)
        a = PACKED_MIN
        b = a + 4 * nc
        c = b + 4 * np_
        d = c + 8 * ni
        s.contacts = array("I", blob[a:b] + _ZEROS[:_FULL_CONTACTS - 4 * nc] if nc < CONTACTS else blob[a:b])
        s.provinces = array("I", blob[b:c] + _ZEROS[:_FULL_PROVINCES - 4 * np_] if np_ < PROVINCE_RING
                            else blob[b:c])
        s.recent_ids = array("Q", blob[c:d] + _ZEROS[:_FULL_IDS - 8 * ni] if ni < RECENT_IDS else blob[c:d])
        s.contact_flags = bytearray(blob[d:d + nf] + _ZEROS[:_FULL_FLAGS - nf] if nf < CONTACTS else blob[d:d + nf])
        return s

    # -- state as plain data, for tests and inspection ---------------------------------------
    def to_dict(self) -> dict:
        return {
            "v": PACK_VERSION,
            "first_ts": self.first_ts, "last_ts": self.last_ts, "n_mo": self.n_mo, "n_mt": self.n_mt,
            "n_voice": self.n_voice,
            "decayed": list(self.decayed), "decayed_ts": self.decayed_ts, "shares": list(self.shares),
            "contacts": list(self.contacts), "contact_flags": list(self.contact_flags),
            "contact_pos": self.contact_pos, "provinces": list(self.provinces),
            "province_pos": self.province_pos,
            "imei_hash": self.imei_hash, "imei_changes": self.imei_changes, "last_pop_ts": self.last_pop_ts,
            "status": self.status, "tier": self.tier, "suspended_ts": self.suspended_ts, "peak_score": self.peak_score,
            "cleared_score": self.cleared_score, "restores": self.restores,
            "fraud_confirmed": self.fraud_confirmed, "below_since": self.below_since,
            "recent_ids": list(self.recent_ids), "recent_pos": self.recent_pos,
            "applied_offset": self.applied_offset,
            "handset_lines": self.handset_lines, "cell_lines": self.cell_lines,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "NumberState":
        """A state from `to_dict` (v2), or from a version-1 JSON changelog record."""
        if d.get("v") == 1 and "imei" in d:
            d = dict(d, v=PACK_VERSION, imei_hash=hash64(d["imei"]) if d["imei"] else 0)
        if d.get("v") not in (2, PACK_VERSION) or type(d.get("v")) is not int:  # v2 and v3 dicts are alike
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
    h = hash64(record_id)
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


def _remember_contact(state: NumberState, h: int, flag: int) -> bool:
    """Mark a peer (crc32 of its number) as a contact; True when it was not a known contact."""
    if h in state.contacts:
        i = state.contacts.index(h)
        if state.contact_flags[i]:
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
    _remember_contact(state, zlib.crc32(rec.peer.encode()), FLAG_CALLED_US)
    _observe_imei(state, rec.imei)


def _observe_imei(state: NumberState, imei: str) -> None:
    h = hash64(imei) if imei else 0
    if h != state.imei_hash:
        if state.imei_hash:
            state.imei_changes += 1.0
        state.imei_hash = h


def update_mo(state: NumberState, rec: CDR, home_province: str, fc: FeatureConfig) -> None:
    """Fold one outgoing record into the number's state."""
    _decay_to(state, rec.ts)
    state.last_ts = max(state.last_ts, rec.ts)
    state.n_mo += 1
    d = state.decayed
    d[D_MO_HOUR] += 1.0
    d[D_MO_DAY] += 1.0
    _observe_imei(state, rec.imei)

    new_peer = _remember_contact(state, zlib.crc32(rec.peer.encode()), FLAG_CALLED)
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


class NumberStore:
    """msisdn → NumberState, held packed (0.3–0.55 KB a number) except the ones in use.

    A state taken with `get` is unpacked into the *hot* set and may be changed in place; `settle`
    packs the hot set back. Packing is lossless, so when it happens never changes a decision; the
    engine settles at record boundaries once the hot set reaches `hot_max`, and the daemon at
    every commit, where the packed bytes are exactly the changelog values."""

    def __init__(self, hot_max: int = 32_768):
        self.cold: dict[str, bytes] = {}
        self.hot: dict[str, NumberState] = {}
        self.hot_max = hot_max

    def get(self, msisdn: str, default=None):
        st = self.hot.get(msisdn)
        if st is None:
            blob = self.cold.pop(msisdn, None)
            if blob is None:
                return default
            st = self.hot[msisdn] = NumberState.unpack(blob)
        return st

    def __getitem__(self, msisdn: str) -> NumberState:
        st = self.get(msisdn)
        if st is None:
            raise KeyError(msisdn)
        return st

    def __setitem__(self, msisdn: str, st: NumberState) -> None:
        self.cold.pop(msisdn, None)
        self.hot[msisdn] = st

    def __delitem__(self, msisdn: str) -> None:
        if self.hot.pop(msisdn, None) is None:
            del self.cold[msisdn]

    def pop(self, msisdn: str, default=None):
        st = self.get(msisdn)
        if st is None:
            return default
        del self.hot[msisdn]
        return st

    def __contains__(self, msisdn: str) -> bool:
        return msisdn in self.hot or msisdn in self.cold

    def __len__(self) -> int:
        return len(self.hot) + len(self.cold)

    def __iter__(self):
        yield from list(self.hot)
        yield from list(self.cold)

    def items(self):
        """(msisdn, state) for every number: unpacks them all — for tests and tools, not hot paths."""
        for m in list(self):
            yield m, self.get(m)
        self.settle()

    def values(self):
        for _, st in self.items():
            yield st

    def put_packed(self, msisdn: str, blob: bytes) -> None:
        """Store a state as restored from the changelog (checked, not trusted)."""
        check_packed(blob)
        self.hot.pop(msisdn, None)
        self.cold[msisdn] = bytes(blob)

    def packed(self, msisdn: str) -> bytes | None:
        """The packed state (settling it first if it is in use), or None."""
        st = self.hot.pop(msisdn, None)
        if st is not None:
            blob = self.cold[msisdn] = st.pack()
            return blob
        return self.cold.get(msisdn)

    def settle(self) -> None:
        cold = self.cold
        for m, st in self.hot.items():
            cold[m] = st.pack()
        self.hot.clear()

    def maybe_settle(self) -> None:
        if len(self.hot) >= self.hot_max:
            self.settle()

    def idle(self, horizon: int) -> list[str]:
        """Numbers last seen before `horizon` and not suspended: what the idle sweep forgets.
        (`scan` does the same work at about twice the cost; this runs over every number hourly.)"""
        out = [m for m, st in self.hot.items() if st.last_ts < horizon and not st.status]
        peek = _PEEK_LAST_TS_STATUS.unpack_from
        for m, blob in self.cold.items():
            last_ts, status = peek(blob)
            if last_ts < horizon and not status:
                out.append(m)
        return out

    def scan(self):
        """(msisdn, last_ts, status, tier) for every number, without unpacking or settling any
        (settling here would make every number's next record unpack it again)."""
        for m, st in list(self.hot.items()):
            yield m, st.last_ts, st.status, st.tier
        for m, blob in list(self.cold.items()):
            status, tier = packed_status_tier(blob)
            yield m, packed_last_ts(blob), status, tier
