"""Facts that cross numbers: lines sharing a handset, outgoing-only lines sharing a cell.

Each (handset, line) and (cell, line) pair keeps a bitmask of the time buckets (5 minutes by
default) in which the line was seen there. A query at time t reads only the buckets that ended
before t's bucket began. Two properties follow, and they are why it is built this way:

- **Order does not matter**: a bitmask is an OR of observations, so the answer is the same
  whatever order records of different numbers arrive in, in one process or across many.
- **Completeness is checkable**: an answer at t needs every observation before t's bucket; a
  daemon that owns only some partitions waits for the others' watermarks to pass that point.

Each pair belongs to exactly one line, hence to one input partition and one writer: the daemon
publishes pairs to a compacted topic partitioned like the input, and every process reads all of
it, so every process gives the same answer as a single backtest.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from .contract import CDR
from .features import HOUR_MS


class SharedFacts(NamedTuple):
    handset_lines: int  # other lines seen on this record's handset
    cell_bypass_lines: int  # other outgoing-only lines on this record's cell


NO_FACTS = SharedFacts(0, 0)
PLACEHOLDER_IMEIS = ("unknown", "none", "null", "n/a")


_NONZERO_DIGITS = frozenset("123456789")


def real_imei(imei: str) -> bool:
    """A feed that drops IMEIs must not join every line into one 'handset'."""
    if imei[:1] in _NONZERO_DIGITS:
        return True  # the usual case, decided by its first character
    s = imei.strip()
    return s.strip("0") != "" and s.lower() not in PLACEHOLDER_IMEIS


def _window_bits(base: int, mask: int, lo: int, hi: int) -> int:
    """The bits of `mask` (bit 0 = bucket `base`) for buckets in [lo, hi)."""
    a = lo - base
    b = hi - base
    if b <= 0 or mask == 0:
        return 0
    if a < 0:
        a = 0
    return (mask >> a) & ((1 << (b - a)) - 1)


_M32 = (1 << 32) - 1
SWEEP_LINES_PER_RECORD = 4  # lines swept per record while a round is under way ...
SWEEP_EVERY_RECORDS = 512  # ... in batches this many records apart (~4 ms each: the sweep stays warm)


def _lowest_bit(mask: int) -> int:
    """Index of the lowest set bit of a non-zero mask: a swept pair is rebased there, so its int
    does not carry the empty buckets between the sweep's horizon and its first activity."""
    return (mask & -mask).bit_length() - 1


def _hs_pack(base: int, mask: int) -> int:
    """A handset pair as one int: the base bucket in the low 32 bits, the mask above."""
    return base | (mask << 32)


def _hs_of(v: tuple[str, int] | dict[str, int] | None, msisdn: str) -> int | None:
    """A line's pair among a handset's lines (None: not seen there)."""
    if v is None:
        return None
    if type(v) is tuple:
        return v[1] if v[0] == msisdn else None
    return v.get(msisdn)


def _hs_set_bit(p: int | None, b: int) -> int:
    if p is None:
        return _hs_pack(b, 1)
    base, mask = p & _M32, p >> 32
    if b < base:  # a late record: rebase
        mask <<= base - b
        base = b
    return _hs_pack(base, mask | (1 << (b - base)))


def _cell_pack(base: int, mo: int, mt: int) -> int:
    """A cell pair as one int: base bucket (32 bits), width of the MO mask (32 bits), MO mask, MT mask."""
    w = mo.bit_length()
    return base | (w << 32) | (mo << 64) | (mt << (64 + w))


def _cell_unpack(p: int) -> tuple[int, int, int]:
    w = (p >> 32) & _M32
    rest = p >> 64
    return p & _M32, rest & ((1 << w) - 1), rest >> w


def entry_of(kind: str, p: int | None) -> list | None:
    """A packed pair as published: [base, mask] for a handset ("h"), [base, mo_mask, mt_mask] for
    a cell; None for a pair that is gone."""
    if p is None:
        return None
    if kind == "h":
        return [p & _M32, p >> 32]
    return list(_cell_unpack(p))


class Enricher:
    """Handset and cell facts as of the start of each record's time bucket.

    Memory, per line: a handset with one line (the usual case) is held as a (msisdn, packed) tuple,
    not a dict of one; a handset pair's buckets are one int. Cells hold a dict of lines each, and
    remember per cell how many lines looked like a bypass as of one bucket, so the answer for the
    next record in that cell and bucket is not recounted over every line (it is dropped whenever
    an observation or a merge could change it)."""

    def __init__(self, cfg: dict, track_changes: bool = False):
        fc = cfg["features"]
        self.bucket_ms = int(float(fc.get("shared_bucket_minutes", 5)) * 60_000)
        self.handset_window = int(float(fc.get("shared_window_hours", 72)) * HOUR_MS) // self.bucket_ms
        self.cell_window = int(float(fc.get("cell_window_hours", 24)) * HOUR_MS) // self.bucket_ms
        self.min_buckets = int(fc.get("bypass_min_calls", 3))
        lateness = int(float(cfg["state"].get("allowed_lateness_minutes", 60)) * 60_000) // self.bucket_ms
        # buckets a query can still reach, by kind: its window, plus a late record's reach
        self.keep_handsets = self.handset_window + lateness + 1
        self.keep_cells = self.cell_window + lateness + 1
        # imei → (msisdn, packed) for one line, {msisdn: packed} for several
        self.handsets: dict[str, tuple[str, int] | dict[str, int]] = {}
        self.cells: dict[str, dict[str, int]] = {}  # cell → msisdn → _cell_pack(base, mo_mask, mt_mask)
        self._bypass_count: dict[str, tuple[int, int]] = {}  # cell → (bucket, bypass-like lines then)
        self.track_changes = track_changes
        # ("h"|"c", key, msisdn) to publish → (the line's input partition (-1: not known here), the
        # pair as it is now, None once gone): kept as pairs change, so that publishing them does
        # not look each one up again (~2 µs a pair: by then they are cold in memory)
        self.changed: dict[tuple[str, str, str], tuple[int, int | None]] = {}
        self.next_sweep = 0
        self._sweeping = False  # a round of the sweep is under way (see `_begin_sweep`)
        self._sweep_wait = SWEEP_EVERY_RECORDS  # records until the next batch of it
        self._sweep_q = 0
        self._sweep_handset_keys: list[str] = []
        self._sweep_cell_keys: list[str] = []

    # -- the query ----------------------------------------------------------------------------
    def facts(self, rec: CDR, partition: int = -1) -> SharedFacts:
        """Record `rec`, then answer from the buckets that ended before its own began.

        `partition` is the input partition of the record's number when the caller knows it: it
        goes with the changed pairs, so the publisher need not work it out again."""
        q = rec.ts // self.bucket_ms
        if rec.ts >= self.next_sweep:
            self.next_sweep = rec.ts + 6 * HOUR_MS
            self._begin_sweep(q)
        elif self._sweeping:
            self._sweep_wait -= 1
            if not self._sweep_wait:
                self._sweep_wait = SWEEP_EVERY_RECORDS
                self._sweep_some(SWEEP_EVERY_RECORDS * SWEEP_LINES_PER_RECORD)
        msisdn = rec.msisdn
        handset = 0
        imei = rec.imei
        if imei[:1] in _NONZERO_DIGITS or real_imei(imei):
            on_handset = self._observe_handset(imei, msisdn, q, partition)
            if type(on_handset) is not tuple:  # several lines on this handset
                handset = self._handset_lines(on_handset, msisdn, q)
        lines, me = self._observe_cell(rec, q, partition)
        if len(lines) > 1 and (me >> 64).bit_count() >= self.min_buckets:  # (see `_bypass_like`)
            return SharedFacts(handset, self._cell_lines(rec.cell_id, lines, me, q))
        return SharedFacts(handset, 0) if handset else NO_FACTS

    # Only a pair whose buckets actually change is published again: a busy line's further records
    # in the same bucket and cell add nothing. (Both run for every record: their usual cases are
    # written out rather than through the pack/unpack helpers.)
    def _observe_handset(self, imei: str, msisdn: str, q: int, partition: int) -> tuple[str, int] | dict[str, int]:
        """Mark the line on its handset in bucket q; returns the handset's lines afterwards."""
        v = self.handsets.get(imei)
        if type(v) is tuple and v[0] == msisdn:  # the line alone on its handset: the usual case
            p = v[1]
            base = p & _M32
            after = p | (1 << (32 + q - base)) if q >= base else _hs_set_bit(p, q)
            if after == p:
                return v
            v = self.handsets[imei] = (msisdn, after)
        else:
            before = _hs_of(v, msisdn)
            after = _hs_set_bit(before, q)
            if after == before:
                return v
            v = self._hs_put(imei, msisdn, after)
        if self.track_changes:
            self.changed[("h", imei, msisdn)] = (partition, after)
        return v

    def _observe_cell(self, rec: CDR, q: int, partition: int) -> tuple[dict[str, int], int]:
        """Mark the line on its cell in bucket q (outgoing or incoming); returns the cell's lines
        and the line's own pair afterwards."""
        cell = rec.cell_id
        lines = self.cells.get(cell)
        if lines is None:
            lines = self.cells[cell] = {}
        msisdn = rec.msisdn
        p = lines.get(msisdn)
        mo_record = rec.direction == "MO"
        if p is None:
            p = lines[msisdn] = _cell_pack(q, 1, 0) if mo_record else _cell_pack(q, 0, 1)
        else:
            base = p & _M32
            w = (p >> 32) & _M32
            if base <= q:
                bit = q - base
                if mo_record:
                    if bit < w:  # within the MO mask as it is
                        after = p | (1 << (64 + bit))
                        if after == p:
                            return lines, p  # already seen in this bucket: nothing changes
                        p = lines[msisdn] = after
                    else:  # the MO mask widens: the MT mask above it moves
                        rest = p >> 64
                        p = lines[msisdn] = _cell_pack(base, (rest & ((1 << w) - 1)) | (1 << bit), rest >> w)
                else:
                    after = p | (1 << (64 + w + bit))
                    if after == p:
                        return lines, p
                    p = lines[msisdn] = after
            else:  # a late record: rebase
                base, mo, mt = _cell_unpack(p)
                mo <<= base - q
                mt <<= base - q
                if mo_record:
                    mo |= 1
                else:
                    mt |= 1
                p = lines[msisdn] = _cell_pack(q, mo, mt)
        cached = self._bypass_count.get(cell)
        if cached is not None and q < cached[0]:  # a late record: inside some cached window
            del self._bypass_count[cell]
        if self.track_changes:
            self.changed[("c", cell, msisdn)] = (partition, p)
        return lines, p

    # handsets: one line as a tuple, several as a dict
    def _hs_get(self, imei: str, msisdn: str) -> int | None:
        return _hs_of(self.handsets.get(imei), msisdn)

    def _hs_put(self, imei: str, msisdn: str, packed: int) -> tuple[str, int] | dict[str, int]:
        """Store a line's pair on a handset; returns the handset's lines afterwards."""
        v = self.handsets.get(imei)
        if v is None or (type(v) is tuple and v[0] == msisdn):
            v = self.handsets[imei] = (msisdn, packed)
        elif type(v) is tuple:
            v = self.handsets[imei] = {v[0]: v[1], msisdn: packed}
        else:
            v[msisdn] = packed
        return v

    def _hs_lines(self, imei: str) -> dict[str, int]:
        v = self.handsets.get(imei)
        if v is None:
            return {}
        return {v[0]: v[1]} if type(v) is tuple else v

    def _handset_lines(self, lines: dict[str, int], msisdn: str, q: int) -> int:
        """Other lines seen on a handset with several, in the window before bucket q."""
        lo = q - self.handset_window
        return sum(1 for m, p in lines.items() if m != msisdn and _window_bits(p & _M32, p >> 32, lo, q))

    def _cell_lines(self, cell: str, lines: dict[str, int], me: int, q: int) -> int:
        """Other bypass-like lines on a cell with several, when this line (pair `me`) is one."""
        lo = q - self.cell_window
        if not self._bypass_like(me, lo, q):
            return 0
        cached = self._bypass_count.get(cell)
        if cached is not None and cached[0] == q:
            return cached[1] - 1
        count = sum(1 for e in lines.values() if self._bypass_like(e, lo, q))
        self._bypass_count[cell] = (q, count)
        return count - 1

    def _bypass_like(self, p: int, lo: int, q: int) -> bool:
        """Outgoing activity in several buckets of the window and nothing incoming."""
        if (p >> 64).bit_count() < self.min_buckets:
            return False  # fewer buckets with any activity at all (the usual case): cheap to rule out
        base, mo, mt = _cell_unpack(p)
        if _window_bits(base, mt, lo, q):
            return False
        return _window_bits(base, mo, lo, q).bit_count() >= self.min_buckets

    # -- housekeeping ---------------------------------------------------------------------------
    # A sweep visits every pair: ~1.7 s per million lines, which at a carrier's tens of millions
    # would stall the daemon for tens of seconds every 6 hours of event time. So `facts` sweeps
    # SWEEP_LINES_PER_RECORD lines per record instead, in batches every SWEEP_EVERY_RECORDS records
    # (in total no dearer than the sweep at once), over the keys there were when the round began,
    # with that round's horizon. No answer changes with when a pair is swept: every
    # query reads only buckets inside its window, and a sweep drops only buckets outside every
    # window; a round left unfinished is finished at once when the next one is due.
    def sweep(self, q: int) -> None:
        """Sweep everything now, as of bucket q (see `_begin_sweep`)."""
        self._begin_sweep(q)
        self._sweep_some(-1)

    def _begin_sweep(self, q: int) -> None:
        """Start a round: drop buckets no query can reach any more; a pair with none left is removed.

        Only removals are published (as tombstones). A pair that merely lost old buckets is not
        sent again: every reader sweeps the same buckets itself, and old buckets in a published
        value are outside every window a query reads."""
        if self._sweeping:
            self._sweep_some(-1)
        self._bypass_count.clear()
        self._sweep_q = q
        self._sweep_handset_keys = list(self.handsets)
        self._sweep_cell_keys = list(self.cells)
        self._sweeping = bool(self._sweep_handset_keys or self._sweep_cell_keys)

    def _sweep_some(self, budget: int) -> None:
        """Sweep about `budget` more lines of the current round (all of it when budget < 0)."""
        handsets, cells = self._sweep_handset_keys, self._sweep_cell_keys
        handset_horizon = self._sweep_q - self.keep_handsets
        cell_horizon = self._sweep_q - self.keep_cells  # a cell is read over a day, a handset over three
        every = budget < 0
        while every or budget > 0:
            if handsets:
                budget -= self._sweep_handset(handsets.pop(), handset_horizon)
            elif cells:
                budget -= self._sweep_cell(cells.pop(), cell_horizon)
            else:
                self._sweeping = False
                return

    def _sweep_handset(self, imei: str, horizon: int) -> int:
        """Sweep one handset's lines; returns how many lines it had."""
        lines = self._hs_lines(imei)
        if not lines:
            return 1
        kept = {}
        for m, p in lines.items():
            base = p & _M32
            if base < horizon:
                mask = (p >> 32) >> (horizon - base)
                if not mask:
                    if self.track_changes:  # gone: a tombstone lets compaction drop the key
                        self._track_swept(("h", imei, m), None)
                    continue
                low = _lowest_bit(mask)  # start at the first bucket left, not at the horizon
                p = _hs_pack(horizon + low, mask >> low)
                if self.track_changes:
                    self._track_swept(("h", imei, m), p)
            kept[m] = p
        if not kept:
            del self.handsets[imei]
        elif len(kept) == 1:
            self.handsets[imei] = next(iter(kept.items()))
        else:
            self.handsets[imei] = kept
        return len(lines)

    def _sweep_cell(self, key: str, horizon: int) -> int:
        """Sweep one cell's lines; returns how many it had."""
        lines = self.cells.get(key)
        if lines is None:
            return 1
        n = len(lines)
        for m in list(lines):
            base, mo, mt = _cell_unpack(lines[m])
            if base < horizon:
                mo >>= horizon - base
                mt >>= horizon - base
                if mo or mt:
                    low = _lowest_bit(mo | mt)
                    p = lines[m] = _cell_pack(horizon + low, mo >> low, mt >> low)
                    if self.track_changes:
                        self._track_swept(("c", key, m), p)
                else:
                    del lines[m]
                    if self.track_changes:
                        self._track_swept(("c", key, m), None)
        if not lines:
            del self.cells[key]
        return n or 1

    def _track_swept(self, k: tuple[str, str, str], p: int | None) -> None:
        """A pair the sweep rebased (p) or removed (None): a removed one is published as a
        tombstone; one rebased is published only if it changed anyway (its new form then)."""
        prev = self.changed.get(k)
        if p is None:
            self.changed[k] = (-1 if prev is None else prev[0], None)
        elif prev is not None:
            self.changed[k] = (prev[0], p)

    # -- distribution: one compacted record per (thing, line) ----------------------------------
    def take_changes(self) -> dict[tuple[str, str, str], tuple[int, int | None]]:
        """The pairs changed since the last call, as held: (kind, key, msisdn) → (partition as
        `facts` was told (-1: not), the packed pair or None once gone). What the daemon publishes,
        without a list per pair on the way (see `state.shared_changes`)."""
        changed = self.changed
        self.changed = {}
        return changed

    def drain_changes(self) -> list[tuple[str, str, str, list | None, int]]:
        """(kind, key, msisdn, entry or None, partition) for every pair changed since the last call,
        in no particular order (each key stands alone); an entry is [base, mask] for a handset and
        [base, mo_mask, mt_mask] for a cell; partition is the line's as `facts` was told (-1: not)."""
        return [(kind, key, m, entry_of(kind, p), partition)
                for (kind, key, m), (partition, p) in self.take_changes().items()]

    def merge(self, kind: str, key: str, msisdn: str, entry: Sequence[int] | None) -> None:
        """OR another writer's view of a pair into ours (idempotent, order-free). Every daemon
        merges every pair the others publish, so a pair that changes nothing is left alone.
        `entry` is only read: `state.apply_shared` hands the same decoded tuple to many merges."""
        if entry is None:
            return  # expiry is deterministic: our own sweep drops the same buckets
        if kind == "h":
            b, mask = entry
            mine = self._hs_get(key, msisdn)
            if mine is None:
                merged = _hs_pack(b, mask)
            elif b < (base := mine & _M32):
                merged = _hs_pack(b, ((mine >> 32) << (base - b)) | mask)
            else:  # the same base: OR the other mask in, shifted to it
                merged = mine | (mask << (32 + b - base))
                if merged == mine:
                    return
            self._hs_put(key, msisdn, merged)
            if self.track_changes:
                self._track_merged(("h", key, msisdn), merged)
            return
        b, mo, mt = entry
        lines = self.cells.get(key)
        if lines is None:
            lines = self.cells[key] = {}
        p = lines.get(msisdn)
        if p is not None:
            base, mo0, mt0 = _cell_unpack(p)
            lo = min(base, b)
            mo = (mo0 << (base - lo)) | (mo << (b - lo))
            mt = (mt0 << (base - lo)) | (mt << (b - lo))
            b = lo
        packed = _cell_pack(b, mo, mt)
        if packed != p:
            lines[msisdn] = packed
            self._bypass_count.pop(key, None)
            if self.track_changes:
                self._track_merged(("c", key, msisdn), packed)

    def _track_merged(self, k: tuple[str, str, str], p: int) -> None:
        """A pair of ours that changed since the last drain and that another writer's view has
        just added to: it is published as it is now."""
        prev = self.changed.get(k)
        if prev is not None:
            self.changed[k] = (prev[0], p)
