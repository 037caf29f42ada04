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

from typing import NamedTuple

from .contract import CDR
from .features import HOUR_MS


class SharedFacts(NamedTuple):
    handset_lines: int  # other lines seen on this record's handset
    cell_bypass_lines: int  # other outgoing-only lines on this record's cell


NO_FACTS = SharedFacts(0, 0)
PLACEHOLDER_IMEIS = ("unknown", "none", "null", "n/a")


def real_imei(imei: str) -> bool:
    """A feed that drops IMEIs must not join every line into one 'handset'."""
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


def _set_bit(entry: list, i: int, b: int) -> None:
    """Set bucket b in mask entry[i] (entry[0] is the base bucket), rebasing for a late one."""
    base = entry[0]
    if b < base:
        shift = base - b
        for k in range(1, len(entry)):
            entry[k] <<= shift
        entry[0] = base = b
    entry[i] |= 1 << (b - base)


class Enricher:
    """Handset and cell facts as of the start of each record's time bucket."""

    def __init__(self, cfg: dict, track_changes: bool = False):
        fc = cfg["features"]
        self.bucket_ms = int(float(fc.get("shared_bucket_minutes", 5)) * 60_000)
        self.handset_window = int(float(fc.get("shared_window_hours", 72)) * HOUR_MS) // self.bucket_ms
        self.cell_window = int(float(fc.get("cell_window_hours", 24)) * HOUR_MS) // self.bucket_ms
        self.min_buckets = int(fc.get("bypass_min_calls", 3))
        lateness = int(float(cfg["state"].get("allowed_lateness_minutes", 60)) * 60_000) // self.bucket_ms
        self.keep = max(self.handset_window, self.cell_window) + lateness + 1
        self.handsets: dict[str, dict[str, list]] = {}  # imei → msisdn → [base, mask]
        self.cells: dict[str, dict[str, list]] = {}  # cell → msisdn → [base, mo_mask, mt_mask]
        self.track_changes = track_changes
        self.changed: set[tuple[str, str, str]] = set()  # ("h"|"c", key, msisdn) to publish
        self.next_sweep = 0

    # -- the query ----------------------------------------------------------------------------
    def facts(self, rec: CDR) -> SharedFacts:
        """Record `rec`, then answer from the buckets that ended before its own began."""
        q = rec.ts // self.bucket_ms
        if rec.ts >= self.next_sweep:
            self.next_sweep = rec.ts + 6 * HOUR_MS
            self.sweep(q)
        self.observe(rec, q)
        return SharedFacts(self.handset_lines(rec.imei, rec.msisdn, q) if real_imei(rec.imei) else 0,
                           self.cell_lines(rec.cell_id, rec.msisdn, q))

    def observe(self, rec: CDR, q: int) -> None:
        if real_imei(rec.imei):
            lines = self.handsets.setdefault(rec.imei, {})
            e = lines.get(rec.msisdn)
            if e is None:
                lines[rec.msisdn] = [q, 1]
            else:
                _set_bit(e, 1, q)
            if self.track_changes:
                self.changed.add(("h", rec.imei, rec.msisdn))
        lines = self.cells.setdefault(rec.cell_id, {})
        e = lines.get(rec.msisdn)
        if e is None:
            e = lines[rec.msisdn] = [q, 0, 0]
        _set_bit(e, 1 if rec.direction == "MO" else 2, q)
        if self.track_changes:
            self.changed.add(("c", rec.cell_id, rec.msisdn))

    def handset_lines(self, imei: str, msisdn: str, q: int) -> int:
        lines = self.handsets.get(imei)
        if not lines or len(lines) == 1:
            return 0
        lo = q - self.handset_window
        return sum(1 for m, e in lines.items() if m != msisdn and _window_bits(e[0], e[1], lo, q))

    def cell_lines(self, cell: str, msisdn: str, q: int) -> int:
        lines = self.cells.get(cell)
        if not lines or len(lines) == 1:
            return 0
        lo = q - self.cell_window
        me = lines.get(msisdn)
        if me is None or not self._bypass_like(me, lo, q):
            return 0
        return sum(1 for m, e in lines.items() if m != msisdn and self._bypass_like(e, lo, q))

    def _bypass_like(self, e: list, lo: int, q: int) -> bool:
        """Outgoing activity in several buckets of the window and nothing incoming."""
        if _window_bits(e[0], e[2], lo, q):
            return False
        return _window_bits(e[0], e[1], lo, q).bit_count() >= self.min_buckets

    # -- housekeeping ---------------------------------------------------------------------------
    def sweep(self, q: int) -> None:
        """Drop buckets no query can reach any more; a pair with none left is removed."""
        horizon = q - self.keep
        for kind, table in (("h", self.handsets), ("c", self.cells)):
            for key in list(table):
                lines = table[key]
                for m in list(lines):
                    e = lines[m]
                    if e[0] < horizon:
                        shift = horizon - e[0]
                        for k in range(1, len(e)):
                            e[k] >>= shift
                        e[0] = horizon
                        if not any(e[1:]):
                            del lines[m]
                        if self.track_changes:
                            self.changed.add((kind, key, m))
                if not lines:
                    del table[key]

    # -- distribution: one compacted record per (thing, line) ----------------------------------
    def drain_changes(self) -> list[tuple[str, str, str, list | None]]:
        """(kind, key, msisdn, entry or None) for every pair changed since the last call."""
        out = []
        for kind, key, m in sorted(self.changed):
            table = self.handsets if kind == "h" else self.cells
            out.append((kind, key, m, table.get(key, {}).get(m)))
        self.changed.clear()
        return out

    def merge(self, kind: str, key: str, msisdn: str, entry: list | None) -> None:
        """OR another writer's view of a pair into ours (idempotent, order-free)."""
        if entry is None:
            return  # expiry is deterministic: our own sweep drops the same buckets
        table = self.handsets if kind == "h" else self.cells
        lines = table.setdefault(key, {})
        mine = lines.get(msisdn)
        if mine is None:
            lines[msisdn] = list(entry)
            return
        base = min(mine[0], entry[0])
        for i in range(1, len(mine)):
            mine[i] = (mine[i] << (mine[0] - base)) | (entry[i] << (entry[0] - base))
        mine[0] = base
