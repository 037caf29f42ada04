"""Quality figures of a run against labels — the same definitions as shared/tools/score.py.

A number counts as suspended at its first `suspend` event (any mode). TP: a fraud number suspended
at or after its onset. FP: a benign number suspended, or a fraud number suspended before its onset.
Harm: outgoing calls a fraud number placed between its onset and its suspension.
Labels are read only here, after the run: the detector never sees them.
"""
from __future__ import annotations

import bisect
import csv
from collections import defaultdict
from typing import Iterable

import orjson

from .files import iter_lines


def load_labels(path: str) -> dict[str, tuple[str, str, int | None]]:
    labels = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            onset = row.get("onset_ts") or ""
            labels[row["msisdn"]] = (row["label"], row["typology"], int(onset) if onset else None)
    return labels


def _median(xs: list):
    return xs[len(xs) // 2] if xs else None


def fraud_mo_times(cdrs_path: str, labels: dict) -> dict[str, list[int]]:
    """Per fraud number, the sorted times of its outgoing records at or after its onset."""
    onset = {m: v[2] for m, v in labels.items() if v[0] == "fraud"}
    out: dict[str, list[int]] = defaultdict(list)
    for _, line in iter_lines(cdrs_path):
        if b'"MO"' not in line:
            continue
        try:
            r = orjson.loads(line)
            o = onset.get(r["msisdn"])
            if o is not None and r["ts"] >= o:
                out[r["msisdn"]].append(r["ts"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
    for ts in out.values():
        ts.sort()
    return out


def harm_counts(cdrs_path: str, labels: dict, first: dict[str, int]) -> dict[str, int]:
    """Outgoing calls each fraud number placed between its onset and its suspension."""
    return {m: (bisect.bisect_left(ts, first[m]) if m in first else len(ts))
            for m, ts in fraud_mo_times(cdrs_path, labels).items()}


def suspension_hours(events: Iterable[dict], end_ts: int) -> dict[str, float]:
    """Hours each number spent suspended (enforced), from its events; open suspensions run to end_ts."""
    since: dict[str, int] = {}
    hours: dict[str, float] = defaultdict(float)
    for e in sorted(events, key=lambda e: e["ts"]):
        m = e["msisdn"]
        if e["mode"] != "enforce" and e["action"] != "restore":
            continue
        if e["action"] in ("suspend", "escalate") and m not in since:
            since[m] = e["ts"]
        elif e["action"] == "restore" and m in since:
            hours[m] += (e["ts"] - since.pop(m)) / 3_600_000
    for m, t in since.items():
        hours[m] += max(0, end_ts - t) / 3_600_000
    return hours


def evaluate(events: list[dict], labels: dict, cdrs_path: str, end_ts: int) -> dict:
    first: dict[str, int] = {}
    tiers: dict[str, str] = {}
    suspends: dict[str, int] = defaultdict(int)
    restores: dict[str, list[int]] = defaultdict(list)
    last_suspend: dict[str, int] = {}
    for e in events:
        m = e["msisdn"]
        if e["action"] == "suspend":
            suspends[m] += 1
            last_suspend[m] = e["ts"]
            if m not in first or e["ts"] < first[m]:
                first[m] = e["ts"]
                tiers[m] = e["tier"]
        elif e["action"] == "restore" and m in last_suspend:
            restores[m].append(e["ts"] - last_suspend[m])
    nf = sum(1 for v in labels.values() if v[0] == "fraud")
    nb = len(labels) - nf
    tp = fp = 0
    tp_by: dict[str, int] = defaultdict(int)
    fp_by: dict[str, int] = defaultdict(int)
    n_by: dict[str, int] = defaultdict(int)
    tier_tp: dict[str, int] = defaultdict(int)
    tier_fp: dict[str, int] = defaultdict(int)
    delays = []
    for m, (lab, typ, onset) in labels.items():
        n_by[typ] += 1
        if m not in first:
            continue
        t = first[m]
        if lab == "fraud" and t >= onset:
            tp += 1
            tp_by[typ] += 1
            tier_tp[tiers[m]] += 1
            delays.append((t - onset) / 60000)
        else:
            fp += 1
            fp_by[typ] += 1
            tier_fp[tiers[m]] += 1
    harm = harm_counts(cdrs_path, labels, first)
    fraud_types = sorted({v[1] for v in labels.values() if v[0] == "fraud"})
    harm_by = {k: sorted(harm.get(m, 0) for m, v in labels.items() if v[1] == k and v[0] == "fraud")
               for k in fraud_types}
    harms = sorted(harm.get(m, 0) for m, v in labels.items() if v[0] == "fraud")
    delays.sort()
    hours = suspension_hours(events, end_ts)
    benign_hours = {m: h for m, h in hours.items() if labels.get(m, ("benign",))[0] == "benign"}
    restore_h = sorted(x / 3_600_000 for m, xs in restores.items() for x in xs
                       if labels.get(m, ("benign",))[0] == "benign")
    return {
        "events": len(events), "suspended": len(first), "fraud": nf, "benign": nb,
        "tp": tp, "fp": fp, "unknown_numbers": sum(1 for m in first if m not in labels),
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / nf, 4) if nf else None,
        "fp_per_10k_benign": round(fp / nb * 1e4, 2) if nb else None,
        "median_delay_min": round(_median(delays), 1) if delays else None,
        "median_harm_calls": _median(harms),
        "fraud_calls_not_prevented": sum(harms),
        "recall_by_typology": {k: f"{tp_by[k]}/{n_by[k]}" for k in fraud_types},
        "median_harm_calls_by_typology": {k: _median(v) for k, v in harm_by.items()},
        "fp_by_persona": dict(sorted(fp_by.items())),
        "fp_per_10k_by_persona": {k: round(fp_by.get(k, 0) / n * 1e4, 1) for k, n in sorted(n_by.items())
                                  if any(v[1] == k and v[0] == "benign" for v in labels.values())},
        "precision_by_tier": {k: round(tier_tp[k] / (tier_tp[k] + tier_fp[k]), 4)
                              for k in sorted(set(tier_tp) | set(tier_fp), key=str)},
        "legit_suspension_hours": round(sum(benign_hours.values()), 1),
        "legit_lines_suspended": len(benign_hours),
        "legit_median_hours_to_restore": round(_median(restore_h), 1) if restore_h else None,
        "repeat_suspensions": sum(max(0, n - 1) for n in suspends.values()),
    }


def format_report(r: dict) -> str:
    lines = [
        f"precision {r['precision']}  recall {r['recall']}  false suspensions per 10k legitimate "
        f"{r['fp_per_10k_benign']}  (tp {r['tp']}, fp {r['fp']}, fraud {r['fraud']}, legitimate {r['benign']})",
        f"median detection delay {r['median_delay_min']} min; median calls placed after onset before "
        f"suspension {r['median_harm_calls']}; fraud calls not prevented {r['fraud_calls_not_prevented']}",
        "per fraud scheme (caught/all, median calls before suspension): " + ", ".join(
            f"{k} {v} ({r['median_harm_calls_by_typology'][k]})" for k, v in r["recall_by_typology"].items()),
        "false suspensions per 10k by kind of legitimate subscriber: " + ", ".join(
            f"{k} {v}" for k, v in r["fp_per_10k_by_persona"].items()),
        f"precision by tier: {r['precision_by_tier']}",
        f"legitimate lines suspended {r['legit_lines_suspended']}, suspension-hours they bore "
        f"{r['legit_suspension_hours']}, median hours to restore {r['legit_median_hours_to_restore']}, "
        f"repeat suspensions {r['repeat_suspensions']}",
    ]
    return "\n".join(lines)
