#!/usr/bin/env python3
"""Derive verification outcomes from labels, as an operator's checks would produce them.

    scripts/derive_outcomes.py --labels labels.csv --events EVENTS.jsonl --out outcomes.jsonl \
        [--clear-after-hours 6] [--confirm-after-hours 2]

For every line first suspended in EVENTS: a legitimate line (or a fraud line suspended before its
onset) is `cleared` some hours after its suspension — the customer passed the check; a fraud line
is `confirmed_fraud`. Feed the file to `cdr-detector backtest --outcomes` for experiments.
"""
from __future__ import annotations

import argparse
import sys

import orjson

from detector.report import load_labels


def derive(labels: dict, events: list[dict], clear_after_h: float, confirm_after_h: float) -> list[dict]:
    first: dict[str, int] = {}
    for e in events:
        if e["action"] == "suspend" and e["msisdn"] not in first:
            first[e["msisdn"]] = e["ts"]
    out = []
    for m, ts in first.items():
        label, _, onset = labels.get(m, ("benign", "", None))
        fraud = label == "fraud" and onset is not None and ts >= onset
        delay = confirm_after_h if fraud else clear_after_h
        out.append({"msisdn": m, "ts": int(ts + delay * 3_600_000),
                    "outcome": "confirmed_fraud" if fraud else "cleared"})
    out.sort(key=lambda o: (o["ts"], o["msisdn"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--clear-after-hours", type=float, default=6.0)
    ap.add_argument("--confirm-after-hours", type=float, default=2.0)
    a = ap.parse_args()
    with open(a.events, "rb") as f:
        events = [orjson.loads(line) for line in f if line.strip()]
    outcomes = derive(load_labels(a.labels), events, a.clear_after_hours, a.confirm_after_hours)
    with open(a.out, "wb") as f:
        for o in outcomes:
            f.write(orjson.dumps(o) + b"\n")
    cleared = sum(o["outcome"] == "cleared" for o in outcomes)
    print(f"{len(outcomes)} outcomes: {cleared} cleared, {len(outcomes) - cleared} confirmed_fraud → {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
