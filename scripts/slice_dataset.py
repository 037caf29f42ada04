#!/usr/bin/env python3
"""Cut a smaller labelled dataset out of a bigger one: every record of a chosen set of numbers.

    scripts/slice_dataset.py SRC_DIR OUT_DIR [--benign N] [--fraud-per-scheme M] [--seed S]

Keeps the time order, the profiles and the labels of the chosen numbers; used by tests and by
quick parity runs of the daemon.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import os
import random
from collections import defaultdict

import orjson


def slice_dataset(src: str, out: str, benign: int = 400, fraud_per_scheme: int = 6, seed: int = 1) -> dict:
    rng = random.Random(seed)
    with open(os.path.join(src, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    by_kind = defaultdict(list)
    for r in rows:
        by_kind[(r["label"], r["typology"])].append(r)
    chosen = []
    benign_rows = [r for r in rows if r["label"] == "benign"]
    chosen += rng.sample(benign_rows, min(benign, len(benign_rows)))
    for (label, _), rs in sorted(by_kind.items()):
        if label == "fraud":
            chosen += rng.sample(rs, min(fraud_per_scheme, len(rs)))
    keep = {r["msisdn"] for r in chosen}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "labels.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["msisdn", "label", "typology", "onset_ts"])
        w.writeheader()
        for r in rows:
            if r["msisdn"] in keep:
                w.writerow({k: r[k] for k in w.fieldnames})
    with open(os.path.join(src, "subscribers.jsonl"), "rb") as f, \
            open(os.path.join(out, "subscribers.jsonl"), "wb") as g:
        for line in f:
            if line.strip() and orjson.loads(line)["msisdn"] in keep:
                g.write(line)
    n = 0
    with gzip.open(os.path.join(src, "cdrs.jsonl.gz"), "rb") as f, \
            gzip.open(os.path.join(out, "cdrs.jsonl.gz"), "wb") as g:
        for line in f:
            if line.strip() and orjson.loads(line)["msisdn"] in keep:
                g.write(line)
                n += 1
    return {"numbers": len(keep), "records": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--benign", type=int, default=400)
    ap.add_argument("--fraud-per-scheme", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    print(slice_dataset(a.src, a.out, a.benign, a.fraud_per_scheme, a.seed))


if __name__ == "__main__":
    main()
