#!/usr/bin/env python
"""How long the housekeeping sweeps hold up one record — a benchmark, nothing is asserted.

    .venv/bin/python scripts/sweep_stall.py [--lines 1000000] [--rounds 3]

The Enricher drops old buckets every 6 hours of event time, and each engine forgets idle numbers
every hour. Done over every pair or number at once, a sweep stalls the record that triggers it:
at a carrier's tens of millions of numbers, for tens of seconds. This feeds `--lines` lines (one
handset and one of 20,000 cells each) through `Enricher.facts` for `--rounds` 6-hour rounds and
reports the mean and the worst time of one call; then times the idle sweep's scan over as many
packed number states (`NumberStore.idle`).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

# PYTHONPATH=<another worktree> measures that tree's detector (an A/B); else this one's
sys.path.insert(len(sys.path) if os.environ.get("PYTHONPATH") else 0, str(Path(__file__).resolve().parent.parent))

from detector import config as config_mod  # noqa: E402
from detector.contract import CDR  # noqa: E402
from detector.features import NumberState, NumberStore  # noqa: E402
from detector.shared import Enricher  # noqa: E402

T0 = 1_796_000_000_000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3, help="6-hour sweep rounds to run through")
    args = ap.parse_args()
    n = args.lines
    enricher = Enricher(config_mod.load(), track_changes=True)
    records = args.rounds * n
    step_ms = args.rounds * 6 * 3_600_000 // records  # each line once per round
    worst = total = 0.0
    worst_at = 0
    for i in range(records):
        m = i % n
        rec = CDR(f"r{i}", T0 + i * step_ms, f"1{m:010d}", "MO", "13800000000", "voice", 30, True,
                  f"c{m % 20000}", "GD-SZ", "GD-GZ", f"35{m:013d}")
        t = time.perf_counter()
        enricher.facts(rec)
        dt = time.perf_counter() - t
        total += dt
        if dt > worst:
            worst, worst_at = dt, i
        if i % 20_000 == 0:
            enricher.drain_changes()  # as the daemon's commits do
    print(f"Enricher.facts over {records:,} records ({n:,} lines, {args.rounds} rounds of 6 h): "
          f"mean {total / records * 1e6:.2f} µs, worst {worst * 1000:.0f} ms (record {worst_at:,})")

    store = NumberStore()
    rng = random.Random(0)
    for i in range(n):
        msisdn = f"1{i:010d}"
        ts = rng.randrange(T0, T0 + 10**9)
        if hasattr(store, "new"):  # every state a row of the store
            st = store.new(msisdn, ts)
        else:  # before 2026-12-03: packed states in a dict
            st = NumberState(ts)
        st.status = rng.random() < 0.01
        if not hasattr(store, "new"):
            store.cold[msisdn] = st.pack()
    horizon = T0 + 5 * 10**8
    t = time.perf_counter()
    if hasattr(store, "idle"):
        idle = store.idle(horizon)
    else:  # before NumberStore.idle: the engine's sweep scanned
        idle = [m for m, last_ts, status, _ in store.scan() if last_ts < horizon and not status]
    print(f"idle sweep scan over {n:,} numbers: {time.perf_counter() - t:.2f} s ({len(idle):,} idle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
