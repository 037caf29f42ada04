#!/usr/bin/env python3
"""Reinstatement and feedback, measured: the same data with them off, then on.

    scripts/restore_experiment.py DATADIR [--config FILE] [--clear-after-hours 6]

Run 1 ("off"): automatic restore disabled, no verification outcomes.
Outcomes are then derived from the labels for every line run 1 suspended (legitimate lines
cleared `--clear-after-hours` after suspension; fraud confirmed), as an operator's checks would.
Run 2 ("on"): automatic restore enabled (as configured) and the outcomes replayed with the CDRs,
so `cleared` restores at once and both verdicts train the model online.
Prints both reports and the change in legitimate suspension-hours and recall.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import runpy
import sys
import tempfile

import orjson

from detector import config
from detector.backtest import backtest
from detector.report import evaluate, format_report, load_labels

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datadir")
    ap.add_argument("--config")
    ap.add_argument("--clear-after-hours", type=float, default=6.0)
    ap.add_argument("--json", help="write both reports here")
    a = ap.parse_args()
    d = a.datadir
    cdrs, subs, labels_path = (os.path.join(d, f) for f in ("cdrs.jsonl.gz", "subscribers.jsonl", "labels.csv"))
    labels = load_labels(labels_path)
    cfg_on = config.load(a.config)
    cfg_off = copy.deepcopy(cfg_on)
    cfg_off["restore"]["enabled"] = False
    tmp = tempfile.mkdtemp(prefix="restore-exp-")
    derive = runpy.run_path(os.path.join(HERE, "derive_outcomes.py"))["derive"]

    res_off, _ = backtest(cfg_off, cdrs, subs, os.path.join(tmp, "off.jsonl"), show_progress=False)
    rep_off = evaluate(res_off.events, labels, cdrs, res_off.last_ts)
    outcomes = derive(labels, res_off.events, a.clear_after_hours, 2.0)
    outcomes_path = os.path.join(tmp, "outcomes.jsonl")
    with open(outcomes_path, "wb") as f:
        for o in outcomes:
            f.write(orjson.dumps(o) + b"\n")
    res_on, _ = backtest(cfg_on, cdrs, subs, os.path.join(tmp, "on.jsonl"), outcomes=outcomes_path,
                         show_progress=False)
    rep_on = evaluate(res_on.events, labels, cdrs, res_on.last_ts)
    print("== reinstatement and feedback OFF")
    print(format_report(rep_off))
    print(f"\n== reinstatement and feedback ON ({len(outcomes)} outcomes replayed)")
    print(format_report(rep_on))
    h_off, h_on = rep_off["legit_suspension_hours"], rep_on["legit_suspension_hours"]
    cut = (1 - h_on / h_off) if h_off else 0.0
    print(f"\nlegitimate suspension-hours {h_off} → {h_on} ({cut:.0%} fewer); "
          f"recall {rep_off['recall']} → {rep_on['recall']} "
          f"({(rep_on['recall'] - rep_off['recall']) * 100:+.1f} points)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"off": rep_off, "on": rep_on, "outcomes": len(outcomes)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
