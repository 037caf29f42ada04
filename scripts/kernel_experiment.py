#!/usr/bin/env python3
"""Experiment for issue #8: what would a compiled, columnar core cost per record, run per batch?

    .venv/bin/python scripts/kernel_experiment.py [--records 1000000] [--subscribers 100000]

Not part of the detector, and not its logic: a measured sketch of the "batch" redesign. (The
detector's own compiled kernel, `detector/kernel.py`, is called once per record; this sketch runs
one call per batch of records, which is what the rest of the gap to the targets would need.) The
generator's records are encoded the way a compiled core would need them (each number to a row of
columnar numpy state, peers to crc32, provinces to small ids: the Python part that stays per
record), then one numba kernel does for a whole batch what `features.update_mo` / `update_mt`
and `RiskModel.raw_vector` / `evidence_vector` / `score_vector` do per record in Python: decay,
the contact ring, the per-call shares, the province ring, raw features, evidence, the score.
The Enricher, dedupe, decisions and events are left out; they would need the same treatment.

It prints the cost per record of the encoding (Python) and of the kernel, beside the Python
core's own per-record cost on the same records (`Pipeline.process`), and the columnar state's
bytes per number. The scores are not the detector's (typical values and weights are fixed here).
"""
from __future__ import annotations

import argparse
import gc
import itertools
import sys
import time
import zlib

import numpy as np

from detector import config as config_mod
from detector.contract import parse_cdr, parse_profile, province
from detector.core import Detector
from detector.generator import GeneratorSpec, generate_profiles, generate_records
from detector.pipeline import Pipeline

try:
    from numba import njit
except ImportError:  # pragma: no cover - an experiment's optional tool
    sys.exit("this experiment needs numba: pip install numba")

HOUR = 3_600_000.0
DAY = 24 * HOUR
CONTACTS = 32
PROVINCE_RING = 12


@njit(cache=True)
def kernel(slot, ts, mo, peer, prov, home, voice, answered, dur, night,
           n_mo, n_voice, decayed, decayed_ts, shares, contacts, flags, contact_pos, provinces, province_pos,
           typical, weights, bias, min_calls, score_out):
    """One batch of encoded records through the per-number state; the score of each outgoing
    record of a line past `min_calls` (-1 for the others). Returns how many scored ≥ 0.5."""
    alpha = 1.0 / 8.0
    prior = 3.0
    above = 0
    for i in range(slot.shape[0]):
        s = slot[i]
        t = ts[i]
        dt = t - decayed_ts[s]
        if dt > 0:
            fh = 0.5 ** (dt / HOUR)
            fd = 0.5 ** (dt / DAY)
            decayed[s, 0] *= fh
            for j in range(1, 5):
                decayed[s, j] *= fd
            decayed_ts[s] = t
        flag = 1 if mo[i] else 2
        new_peer = True
        for j in range(CONTACTS):
            if contacts[s, j] == peer[i] and flags[s, j] != 0:
                flags[s, j] |= flag
                new_peer = False
                break
        if new_peer:
            p = contact_pos[s]
            contacts[s, p] = peer[i]
            flags[s, p] = flag
            contact_pos[s] = (p + 1) % CONTACTS
        score_out[i] = -1.0
        if not mo[i]:
            decayed[s, 2] += 1.0
            continue
        n_mo[s] += 1
        decayed[s, 0] += 1.0
        decayed[s, 1] += 1.0
        a = max(alpha, 1.0 / n_mo[s])
        sh = shares[s]
        sh[0] += a * ((1.0 if new_peer else 0.0) - sh[0])
        sh[2] += a * ((1.0 if prov[i] != home[i] else 0.0) - sh[2])
        sh[6] += a * ((1.0 if night[i] else 0.0) - sh[6])
        if voice[i]:
            n_voice[s] += 1
            av = max(alpha, 1.0 / n_voice[s])
            sh[1] += av * ((0.0 if answered[i] else 1.0) - sh[1])
            sh[5] += av * ((1.0 if (answered[i] and dur[i] < 5) else 0.0) - sh[5])
        pp = province_pos[s]
        provinces[s, pp] = prov[i]
        province_pos[s] = (pp + 1) % PROVINCE_RING
        if n_mo[s] < min_calls:
            continue
        called = 0
        both = 0
        for j in range(CONTACTS):
            f = flags[s, j]
            if f & 1:
                called += 1
                if f & 2:
                    both += 1
        callback = both / called if called else 0.0
        k = min(n_mo[s], PROVINCE_RING)
        distinct = 0
        for j in range(k):
            seen = False
            for jj in range(j):
                if provinces[s, jj] == provinces[s, j]:
                    seen = True
                    break
            if not seen:
                distinct += 1
        traffic = decayed[s, 1] + decayed[s, 2]
        inbound = decayed[s, 2] / traffic if traffic > 0 else 0.0
        nc = min(float(n_mo[s]), 8.0)
        nv = min(float(n_voice[s]), 8.0)
        z = bias
        e = np.log2((decayed[s, 0] + 1.0) / (typical[0] + 1.0)) / 3.0
        z += weights[0] * min(1.0, max(0.0, e))
        for idx, x, n in ((1, sh[0], nc), (2, sh[1], nv), (3, sh[5], nv), (4, sh[2], nc),
                          (5, distinct / k, float(k)), (9, sh[6], nc)):
            t0 = typical[idx]
            v = ((n * x + prior * t0) / (n + prior) - t0) / (1.0 - t0)
            z += weights[idx] * min(1.0, max(0.0, v))
        for idx, x, n in ((10, inbound, traffic), (11, callback, float(called))):
            t0 = typical[idx]
            v = (t0 - (n * x + prior * t0) / (n + prior)) / max(t0, 0.2)
            z += weights[idx] * min(1.0, max(0.0, v))
        sc = 1.0 / (1.0 + np.exp(-z))
        score_out[i] = sc
        if sc >= 0.5:
            above += 1
    return above


class Columns:
    """Columnar per-number state: one row a number, as a compiled core would hold it."""

    def __init__(self, rows: int):
        self.n_mo = np.zeros(rows, np.int32)
        self.n_voice = np.zeros(rows, np.int32)
        self.decayed = np.zeros((rows, 5))
        self.decayed_ts = np.zeros(rows)
        self.shares = np.zeros((rows, 7))
        self.contacts = np.zeros((rows, CONTACTS), np.uint32)
        self.flags = np.zeros((rows, CONTACTS), np.uint8)
        self.contact_pos = np.zeros(rows, np.int32)
        self.provinces = np.zeros((rows, PROVINCE_RING), np.uint32)
        self.province_pos = np.zeros(rows, np.int32)

    def arrays(self) -> tuple:
        return (self.n_mo, self.n_voice, self.decayed, self.decayed_ts, self.shares, self.contacts, self.flags,
                self.contact_pos, self.provinces, self.province_pos)

    def bytes_per_row(self) -> float:
        return sum(a.nbytes for a in self.arrays()) / len(self.n_mo)


def encode(recs, homes: dict[str, str], slots: dict[str, int], province_ids: dict[str, int]) -> tuple:
    """The per-record Python work a compiled core still needs: strings to integers."""
    n = len(recs)
    cols = {name: [0] * n for name in ("slot", "ts", "mo", "peer", "prov", "home", "voice", "answered", "dur", "night")}
    slot_c, ts_c, mo_c, peer_c, prov_c = cols["slot"], cols["ts"], cols["mo"], cols["peer"], cols["prov"]
    home_c, voice_c, ans_c, dur_c, night_c = cols["home"], cols["voice"], cols["answered"], cols["dur"], cols["night"]
    crc32 = zlib.crc32
    for i, r in enumerate(recs):
        s = slots.get(r.msisdn)
        if s is None:
            s = slots[r.msisdn] = len(slots)
        slot_c[i] = s
        ts_c[i] = r.ts
        mo_c[i] = r.direction == "MO"
        peer_c[i] = crc32(r.peer.encode())
        p = province(r.peer_region)
        prov_c[i] = province_ids.setdefault(p, len(province_ids) + 1)
        home_c[i] = province_ids.setdefault(homes.get(r.msisdn, "?"), len(province_ids) + 1)
        voice_c[i] = r.service == "voice"
        ans_c[i] = r.answered
        dur_c[i] = r.duration_s
        night_c[i] = ((r.ts / HOUR) + 8) % 24 < 6
    return (np.array(slot_c, np.int64), np.array(ts_c, np.float64), np.array(mo_c, np.bool_),
            np.array(peer_c, np.uint32), np.array(prov_c, np.uint32), np.array(home_c, np.uint32),
            np.array(voice_c, np.bool_), np.array(ans_c, np.bool_), np.array(dur_c, np.int32),
            np.array(night_c, np.bool_))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--subscribers", type=int, default=100_000)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--batch", type=int, default=2000, help="records per kernel call (kafka.max_poll_records)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    spec = GeneratorSpec(subscribers=args.subscribers, hours=args.hours, seed=args.seed)
    recs = [parse_cdr(r) for r in itertools.islice(generate_records(spec), args.records)]
    profiles = [parse_profile(p) for p in generate_profiles(spec)]
    homes = {p.msisdn: province(p.home_region) for p in profiles}
    n = len(recs)
    gc.collect()
    gc.freeze()

    cols = Columns(args.subscribers * 2)
    typical = np.full(20, 0.3)
    weights = np.full(20, 1.5)
    scores = np.zeros(args.batch)
    slots: dict[str, int] = {}
    province_ids: dict[str, int] = {}
    warm = encode(recs[:10], homes, {}, {})
    kernel(*warm, *Columns(16).arrays(), typical, weights, -6.0, 3, np.zeros(10))  # compile (or load the cache)

    enc_s = kern_s = 0.0
    above = 0
    for start in range(0, n, args.batch):
        batch = recs[start:start + args.batch]
        c0 = time.process_time()
        encoded = encode(batch, homes, slots, province_ids)
        c1 = time.process_time()
        above += kernel(*encoded, *cols.arrays(), typical, weights, -6.0, 3, scores)
        c2 = time.process_time()
        enc_s += c1 - c0
        kern_s += c2 - c1

    cfg = config_mod.load()
    det = Detector(cfg)
    for p in profiles:
        det.on_profile(p)
    process = Pipeline(det).process
    c0 = time.process_time()
    for r in recs:
        process(r)
    py_s = time.process_time() - c0

    print(f"{n:,} generated records, {len(slots):,} numbers, batches of {args.batch:,}")
    print(f"  Python core, Pipeline.process (everything):      {py_s / n * 1e6:6.2f} µs/record  ({n / py_s:,.0f}/CPU-s)")
    print(f"  compiled sketch: encoding strings to ints (Python) {enc_s / n * 1e6:6.2f} µs/record")
    print(f"  compiled sketch: the kernel (features + score)    {kern_s / n * 1e6:6.2f} µs/record  "
          f"({n / kern_s:,.0f}/CPU-s); {above:,} records scored ≥ 0.5")
    print(f"  columnar state: {cols.bytes_per_row():.0f} bytes per number (rings full-size)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
