"""Per-number rolling features: small, bounded state updated one record at a time.

Each number keeps a few decayed counters, per-call moving shares, and a short ring of recent
contacts; nothing grows with the number's traffic. Numbers that share a handset or a cell are
counted by `shared.Enricher`, keyed by the shared thing, not by number.

Two kinds of memory, on purpose:
- *time-decayed counts* (half-lives of an hour and a day) answer "how much, how fast";
- *per-call moving shares* (an exponential average over the last ~N outgoing calls) answer "what
  kind of calls", and react within a handful of calls even on a line with a long quiet history.

A number's state is one fixed row of a `NumberStore` (its bytes are the packed state), updated
by the compiled arithmetic of `kernel.py`; this module turns a record's strings into the numbers
the kernel takes, and keeps the rows.
"""
from __future__ import annotations

import mmap
import operator
import struct
import zlib
from array import array

import numpy as np

from . import kernel as K
from .contract import CDR, province
from .kernel import (  # noqa: F401  (the layout's names, re-exported for the engine and tests)
    CONTACTS,
    D_INTL_MIN_DAY,
    D_MO_DAY,
    D_MO_HOUR,
    D_MT_DAY,
    D_PREMIUM_DAY,
    DAY_MS,
    FLAG_CALLED,
    FLAG_CALLED_US,
    HOUR_MS,
    N_DECAYED,
    N_SHARES,
    PROVINCE_RING,
    RECENT_IDS,
    S_INTL,
    S_NEW_PEER,
    S_NIGHT,
    S_OUT_OF_PROVINCE,
    S_PREMIUM,
    S_SHORT,
    S_UNANSWERED,
)

_province_ids: dict[str, int] = {}


def province_id(prov: str) -> int:
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


# The packed form of a NumberState: what is written to the changelog and held for a number at
# rest (a row in use is the version-2 form, 551 bytes). Binary, because JSON is ~0.9 KB. Version 3
# stores each ring (contacts, provinces, record ids, contact flags) without its unused zero tail: a number seen a few times — most of those a carrier tracks on a given day — is
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


assert (K.V2_RINGS_AT, K.PACK_V3, K.PACKED_MAX_V3) == (_RINGS_AT, PACK_VERSION, PACKED_MAX)  # kernel.pack_v3 is `_from_v2`
_PACK_BUF = np.zeros(PACKED_MAX, dtype=np.uint8)  # (one thread packs)


def _pack_row(u8: np.ndarray, i: int) -> bytes:
    """Row i of the rows `u8` views as bytes, packed (version 3) by compiled code."""
    n = K.pack_v3(u8, i, _PACK_BUF)
    return _PACK_BUF[:n].tobytes()


_REST_BUF = np.zeros(K.REST_MAX, dtype=np.uint8)
_UNREST_BUF = np.zeros(PACKED_MAX, dtype=np.uint8)
_PEEK_REST = struct.Struct("<qBb")  # the rest form's head: last_ts, status, tier


def _at_rest(blob: bytes) -> bytes:
    """A checked packed state (v2 or v3) in the rest form."""
    return _REST_BUF[:K.to_rest(blob, len(blob), _REST_BUF)].tobytes()


def _from_rest(form: bytes) -> bytes:
    """The packed state, exactly as it was put to rest."""
    return _UNREST_BUF[:K.from_rest_call(form, _UNREST_BUF)].tobytes()
STATE_FIELDS = K.STATE.names[1:]  # every field of a row but the version byte
assert STATE_FIELDS[:len(_SCALARS)] == _SCALARS  # the row is the packed head, field for field
_SCALAR_FIELDS = tuple(n for n in STATE_FIELDS if K.STATE.fields[n][0].shape == ())
_ARRAY_FIELDS = tuple(n for n in STATE_FIELDS if K.STATE.fields[n][0].shape != ())
_ROW = K.STATE.itemsize  # = PACKED_SIZE_V2: a row's bytes are a version-2 packed state
assert _ROW == PACKED_SIZE_V2


def _to_v2(blob: bytes) -> bytes:
    """A checked packed state (v2 or v3) as the 551 bytes of a row (version byte 2)."""
    check_packed(blob)
    if blob[0] == 2:
        return blob
    nc, np_, ni, nf = _RING_COUNTS.unpack_from(blob, _RINGS_AT)
    a = PACKED_MIN
    b = a + 4 * nc
    c = b + 4 * np_
    d = c + 8 * ni
    return b"".join((b"\x02", blob[1:_RINGS_AT],
                     blob[a:b], _ZEROS[:_FULL_CONTACTS - 4 * nc],
                     blob[b:c], _ZEROS[:_FULL_PROVINCES - 4 * np_],
                     blob[c:d], _ZEROS[:_FULL_IDS - 8 * ni],
                     blob[d:d + nf], _ZEROS[:_FULL_FLAGS - nf]))


def _from_v2(row: bytes) -> bytes:
    """A row's 551 bytes as a version-3 packed state: each ring without its zero tail, cut at a
    whole item (a zero item inside a ring is kept)."""
    a = _RINGS_AT
    b = a + _FULL_CONTACTS
    c = b + _FULL_PROVINCES
    d = c + _FULL_IDS
    contacts = row[a:b].rstrip(b"\0")
    provinces = row[b:c].rstrip(b"\0")
    ids = row[c:d].rstrip(b"\0")
    flags = row[d:].rstrip(b"\0")
    nc = (len(contacts) + 3) >> 2
    np_ = (len(provinces) + 3) >> 2
    ni = (len(ids) + 7) >> 3
    return b"".join((b"\x03", row[1:a], _RING_COUNTS.pack(nc, np_, ni, len(flags)),
                     row[a:a + 4 * nc], row[b:b + 4 * np_], row[c:c + 8 * ni], flags))


def _new_rows(n: int) -> np.ndarray:
    rows = np.zeros(n, dtype=K.STATE)
    rows["version"] = 2
    return rows


def _new_chunk(n: int) -> np.ndarray:
    """Rows for a `NumberStore` chunk, in an anonymous mapping of their own (zeroed by the
    kernel) rather than from malloc: glibc raises its mmap threshold once it frees a large
    block, after which 9 MB chunks come from the heap, and a chunk dropped from the middle of
    the heap stays resident. A mapping of its own goes back to the system when the chunk does
    (measured at 10 M numbers: 4.5 GB of the heap was such free space; docs/benchmarks.md)."""
    rows = np.frombuffer(mmap.mmap(-1, n * K.STATE.itemsize, flags=mmap.MAP_PRIVATE), dtype=K.STATE)
    rows["version"] = 2
    return rows


class NumberState:
    """Everything the detector remembers about one number (bounded: 551 bytes), as a view of
    one row of a `NumberStore` (or of a row of its own, for a state not in any store).

    Attributes read and write the row: scalars as Python numbers, rings and counters as numpy
    arrays over the row's memory. The compiled kernel works on the row directly."""

    __slots__ = ("_rows", "_f", "_i")

    def __init__(self, ts: int | None):
        """A state of its own (not in a store), first seen at `ts` (None: all zeros, to load)."""
        self._rows = _new_rows(1)
        self._f = _field_views(self._rows)
        self._i = 0
        if ts is not None:
            _init_row(self._f, 0, ts)

    # -- packed: how states are written to the changelog --------------------------------------
    def row_bytes(self) -> bytes:
        """The row as it is: a version-2 packed state."""
        i = self._i * _ROW
        return self._f["_u8"][i:i + _ROW].tobytes()

    def pack(self) -> bytes:
        return _pack_row(self._f["_u8"], self._i)

    @classmethod
    def unpack(cls, blob: bytes) -> "NumberState":
        st = cls(None)
        st._load(_to_v2(blob))
        return st

    def _load(self, v2: bytes) -> None:
        i = self._i * _ROW
        self._f["_u8"][i:i + _ROW] = np.frombuffer(v2, dtype=np.uint8)

    # -- state as plain data, for tests and inspection ---------------------------------------
    def to_dict(self) -> dict:
        d = {"v": PACK_VERSION}
        for name in STATE_FIELDS:
            value = getattr(self, name)
            d[name] = value.tolist() if isinstance(value, np.ndarray) else value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NumberState":
        """A state from `to_dict` (v2, v3), or from a version-1 JSON changelog record."""
        if d.get("v") == 1 and "imei" in d:
            d = dict(d, v=PACK_VERSION, imei_hash=hash64(d["imei"]) if d["imei"] else 0)
        if d.get("v") not in (2, PACK_VERSION) or type(d.get("v")) is not int:  # v2 and v3 dicts are alike
            raise ValueError(f"unknown number-state version {d.get('v')!r}")
        missing = [name for name in STATE_FIELDS if name not in d]
        if missing:
            raise ValueError(f"number state v1 lacks fields {missing}")
        s = cls(d["first_ts"])
        for name in STATE_FIELDS:
            setattr(s, name, d[name])
        return s


def _field_views(rows: np.ndarray) -> dict:
    """Each field of `rows` as an array (for NumberState's attributes), and the rows as bytes."""
    views = {name: rows[name] for name in STATE_FIELDS}
    views["_u8"] = rows.view(np.uint8)
    return views


def _init_row(f: dict, i: int, ts: int) -> None:
    """A number's first state: seen at `ts`, nothing else known."""
    f["first_ts"][i] = f["last_ts"][i] = f["decayed_ts"][i] = ts
    f["last_pop_ts"][i] = -1
    f["tier"][i] = -1  # index into TIERS when suspended
    f["applied_offset"][i] = -1  # input offset of the last record folded in (-1: none/offline)


def _scalar_property(name: str):
    def get(self):
        return self._f[name].item(self._i)  # a Python int or float

    def put(self, value):
        self._f[name][self._i] = value

    return property(get, put)


def _array_property(name: str):
    def get(self):
        return self._f[name][self._i]

    def put(self, value):
        self._f[name][self._i] = value

    return property(get, put)


# status: 0 active, 1 suspended, 2 suspended only in shadow by the storm breaker; tier: index into
# TIERS when suspended; cleared_score: the score at which an operator last cleared this line;
# imei_hash: hash64 of the last handset seen (0: none yet); n_voice: outgoing voice calls (the
# support of answer-based shares); handset_lines, cell_lines: the last cross-number facts seen,
# for scoring between records.
for _name in _SCALAR_FIELDS:
    setattr(NumberState, _name, _scalar_property(_name))
for _name in _ARRAY_FIELDS:
    setattr(NumberState, _name, _array_property(_name))
del _name
NumberState.fraud_confirmed = property(lambda self: bool(self._f["fraud_confirmed"].item(self._i)),
                                       _scalar_property("fraud_confirmed").fset)


def seen_before(state: NumberState, record_id: str) -> bool:
    """True if this record id is among the number's recent ones; else remember it."""
    return K.seen_before(state._rows, state._i, hash64(record_id))


class FeatureConfig:
    """The knobs of feature extraction (from config `features:`)."""

    def __init__(self, cfg: dict):
        self.share_calls = float(cfg.get("share_window_calls", 8))
        self.alpha = 1.0 / self.share_calls
        self.premium_destinations = frozenset(cfg.get("premium_destinations", ()))
        self.short_call_s = int(cfg.get("short_call_seconds", 5))
        self.night_hours = tuple(cfg.get("night_hours_local", (0, 6)))
        self.night_lo, self.night_hi = self.night_hours
        self.utc_offset_h = float(cfg.get("utc_offset_hours", 8))
        self.shared_window_ms = int(float(cfg.get("shared_window_hours", 72)) * HOUR_MS)
        self.cell_window_ms = int(float(cfg.get("cell_window_hours", 24)) * HOUR_MS)
        self.bypass_min_calls = int(cfg.get("bypass_min_calls", 3))
        self.destinations: dict[str, tuple[str, int, bool, bool]] = {}  # see `destination`

    def destination(self, region: str) -> tuple[str, int, bool, bool]:
        """A called region as the kernel takes it: (province, province id, international, premium).
        Kept per region code (a few hundred; bounded against a feed of junk codes)."""
        d = self.destinations.get(region)
        if d is None:
            prov = province(region)
            intl = prov.startswith("INTL-")
            d = (prov, province_id(prov), intl, intl and prov[5:] in self.premium_destinations)
            if len(self.destinations) >= 65_536:
                self.destinations.clear()
            self.destinations[region] = d
        return d


def mt_inputs(rec: CDR) -> tuple:
    """An incoming record as `kernel.update_mt` takes it: time, peer and handset hashed."""
    return rec.ts, zlib.crc32(rec.peer.encode()), hash64(rec.imei) if rec.imei else 0


def mo_inputs(rec: CDR, home_province: str, fc: FeatureConfig) -> tuple:
    """An outgoing record as `kernel.update_mo` takes it: its strings turned into numbers and
    flags (peer and handset hashed, the destination's province, international, premium, night)."""
    prov, pid, intl, premium = fc.destination(rec.peer_region)
    ts = rec.ts
    hour = ((ts / HOUR_MS) + fc.utc_offset_h) % 24
    imei = rec.imei
    return (ts, zlib.crc32(rec.peer.encode()), hash64(imei) if imei else 0, pid, prov != home_province, intl,
            premium, rec.service == "voice", rec.answered, rec.duration_s, fc.night_lo <= hour < fc.night_hi,
            fc.alpha, fc.short_call_s)


def update_mt(state: NumberState, rec: CDR) -> None:
    """Fold one incoming record into the number's state."""
    K.update_mt(state._rows, state._i, *mt_inputs(rec))


def update_mo(state: NumberState, rec: CDR, home_province: str, fc: FeatureConfig) -> None:
    """Fold one outgoing record into the number's state."""
    K.update_mo(state._rows, state._i, *mo_inputs(rec, home_province, fc))


def callback_share(state: NumberState) -> tuple[float, int]:
    """Of the recent peers this number called, the share that also called it."""
    return K.callback_share(state._rows, state._i)


def province_spread(state: NumberState) -> float:
    """Distinct provinces among the last outgoing calls, per call (1.0: every call elsewhere)."""
    return K.province_spread(state._rows, state._i)


_new_object = object.__new__


class NumberStore:
    """msisdn → NumberState: a number in use is a row of a few large arrays (`kernel.STATE`, 551
    bytes), a number at rest is its packed bytes without their zero bytes (`kernel.to_rest`: ~0.2
    KB while its rings are not full).

    Rows live in chunks of `CHUNK` that never move, so a state taken with `get` stays valid until
    the number is forgotten or put to rest; a freed row goes to the next number that needs one.
    The engine puts numbers idle for a while to rest (`rest`, at its hourly sweep): a carrier
    tracks tens of millions of numbers, most of them silent at any hour, and only the active
    ones need a row. Their next record takes a row again (~1.5 µs, most of it one compiled call,
    `kernel.rest_into_row`). Packing is lossless, so where a state is held never changes a
    decision."""

    CHUNK = 1 << 14

    def __init__(self):
        self.rows: dict[str, int] = {}  # msisdn → row id (chunk * CHUNK + index), numbers in use
        self.cold: dict[str, bytes] = {}  # msisdn → packed state in the rest form, numbers at rest
        self._chunks: list[np.ndarray] = []
        self._views: list[dict] = []  # per chunk: each field as an array (NumberState's attributes)
        self._owner: list[str | None] = []  # row id → msisdn (None: free)
        self._free: list[int] = []

    def _allocate(self, msisdn: str) -> int:
        if self._free:
            r = self._free.pop()
            self._owner[r] = msisdn
        else:
            r = len(self._owner)
            if r == len(self._chunks) * self.CHUNK:
                rows = _new_chunk(self.CHUNK)
                self._chunks.append(rows)
                self._views.append(_field_views(rows))
            self._owner.append(msisdn)
        self.rows[msisdn] = r
        return r

    def _release(self, msisdn: str) -> None:
        c, i = divmod(self.rows[msisdn], self.CHUNK)
        self._chunks[c][i] = _BLANK  # a freed row holds nothing of the number it held
        self._free_row(msisdn)

    def _free_row(self, msisdn: str) -> None:
        """A number's row, blanked already, back to the free ones."""
        r = self.rows.pop(msisdn)
        self._owner[r] = None
        self._free.append(r)

    def _state(self, r: int) -> NumberState:  # (also written out in `get`)
        c, i = divmod(r, self.CHUNK)
        st = object.__new__(NumberState)
        st._rows = self._chunks[c]
        st._f = self._views[c]
        st._i = i
        return st

    def new(self, msisdn: str, ts: int) -> NumberState:
        """A number seen for the first time at `ts`."""
        if msisdn in self:
            del self[msisdn]
        st = self._state(self._allocate(msisdn))
        _init_row(st._f, st._i, ts)
        return st

    def get(self, msisdn: str, default=None):
        r = self.rows.get(msisdn)
        if r is not None:  # (`_state`, written out: this runs for every record)
            c, i = divmod(r, self.CHUNK)
            st = _new_object(NumberState)
            st._rows = self._chunks[c]
            st._f = self._views[c]
            st._i = i
            return st
        form = self.cold.pop(msisdn, None)
        if form is None:
            return default
        r = self._allocate(msisdn)  # back in use
        c, i = divmod(r, self.CHUNK)
        if not K.rest_into_row(form, self._views[c]["_u8"], i):
            self.cold[msisdn] = form  # (as it was: nothing of it is lost)
            self._release(msisdn)
            raise ValueError(f"number state at rest: not a whole packed state ({len(form)} bytes)")
        return self._state(r)

    def __getitem__(self, msisdn: str) -> NumberState:
        st = self.get(msisdn)
        if st is None:
            raise KeyError(msisdn)
        return st

    def __setitem__(self, msisdn: str, st: NumberState) -> None:
        """Store a copy of `st` (a state of its own, e.g. from `NumberState.from_dict`)."""
        self.put_packed(msisdn, st.pack())

    def __delitem__(self, msisdn: str) -> None:
        if msisdn in self.rows:
            self._release(msisdn)
        else:
            del self.cold[msisdn]

    def pop(self, msisdn: str, default=None):
        blob = self.packed(msisdn)
        if blob is None:
            return default
        del self[msisdn]
        return NumberState.unpack(blob)

    def __contains__(self, msisdn: str) -> bool:
        return msisdn in self.rows or msisdn in self.cold

    def __len__(self) -> int:
        return len(self.rows) + len(self.cold)

    def __iter__(self):
        yield from list(self.rows)
        yield from list(self.cold)

    def items(self):
        """(msisdn, state) for every number (each taken into a row) — for tests and tools."""
        for m in list(self):
            yield m, self.get(m)

    def values(self):
        for _, st in self.items():
            yield st

    def put_packed(self, msisdn: str, blob: bytes) -> None:
        """Store a state as restored from the changelog (checked, not trusted), at rest."""
        check_packed(blob)
        if msisdn in self.rows:
            self._release(msisdn)
        self.cold[msisdn] = _at_rest(blob)

    def packed(self, msisdn: str) -> bytes | None:
        """The packed state (version 3), or None."""
        r = self.rows.get(msisdn)
        if r is not None:
            c, i = divmod(r, self.CHUNK)
            return _pack_row(self._views[c]["_u8"], i)
        form = self.cold.get(msisdn)
        return None if form is None else _from_rest(form)

    def _in_rows(self, last_ts_before: int, active_only: bool) -> list[str]:
        """Numbers in rows last seen before a time (and, if `active_only`, not suspended)."""
        out = []
        owner = self._owner
        for c, rows in enumerate(self._chunks):
            base = c * self.CHUNK
            hit = rows["last_ts"] < last_ts_before
            if active_only:
                hit &= rows["status"] == 0
            for i in np.flatnonzero(hit).tolist():  # a free row (all zeros) has no owner
                m = owner[base + i] if base + i < len(owner) else None
                if m is not None:
                    out.append(m)
        return out

    def idle(self, horizon: int) -> list[str]:
        """Numbers last seen before `horizon` and not suspended: what the idle sweep forgets."""
        out = self._in_rows(horizon, active_only=True)
        peek = _PEEK_REST.unpack_from
        for m, form in self.cold.items():
            last_ts, status, _ = peek(form)
            if last_ts < horizon and not status:
                out.append(m)
        return out

    def rest(self, horizon: int) -> int:
        """Pack the numbers in rows last seen before `horizon`, free their rows and give whole
        chunks no longer needed back to the system (`compact`); returns how many were packed.
        The states taken before are stale afterwards: take them again."""
        quiet = self._in_rows(horizon, active_only=False)
        cold = self.cold
        views = self._views
        form = _REST_BUF
        for m in quiet:
            c, i = divmod(self.rows[m], self.CHUNK)
            cold[m] = form[:K.row_to_rest(views[c]["_u8"], i, form)].tobytes()  # (and the row blanked)
            self._free_row(m)
        if len(self._free) >= self.CHUNK:
            self.compact()
        return len(quiet)

    def compact(self) -> None:
        """Move the rows in use above the first len(rows) into free ones below, and drop the
        chunks that are then empty: the arrays hold the numbers in use, not their peak."""
        owner = self._owner
        used = len(self.rows)
        holes = (r for r in sorted(self._free) if r < used)
        for src in range(used, len(owner)):
            m = owner[src]
            if m is None:
                continue
            dst = next(holes)  # as many holes below `used` as numbers in use above it
            (cs, i), (cd, j) = divmod(src, self.CHUNK), divmod(dst, self.CHUNK)
            self._chunks[cd][j] = self._chunks[cs][i]
            self._chunks[cs][i] = _BLANK
            owner[dst] = m
            self.rows[m] = dst
        del owner[used:]
        keep = -(-used // self.CHUNK)
        del self._chunks[keep:], self._views[keep:]
        self._free = []

    def scan(self):
        """(msisdn, last_ts, status, tier) for every number, without taking any into a row."""
        owner = self._owner
        for c, rows in enumerate(self._chunks):
            base = c * self.CHUNK
            n = min(self.CHUNK, len(owner) - base)
            for i, (last_ts, status, tier) in enumerate(zip(rows["last_ts"][:n].tolist(), rows["status"][:n].tolist(),
                                                            rows["tier"][:n].tolist())):
                m = owner[base + i]
                if m is not None:
                    yield m, last_ts, status, tier
        peek = _PEEK_REST.unpack_from
        for m, form in list(self.cold.items()):
            last_ts, status, tier = peek(form)
            yield m, last_ts, status, tier


_BLANK = _new_rows(1)[0]
