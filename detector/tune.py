"""`cdr-detector tune`: propose per-tier thresholds that meet a false-suspension budget.

One backtest, many thresholds. The production core runs ONCE over the recorded files (the same
`Pipeline`/`Detector` and the same record/outcome ordering as `cdr-detector backtest`), with the
low tier lowered to a small floor (`--floor`, default 0.2) so that every line keeps being scored,
and the running maximum of each number's risk score over its outgoing (MO) records is recorded.
For a candidate threshold T a number counts as suspended at the first MO record whose score is
>= T — exactly how the core takes its first suspension decision. TP, FP, recall and harm then
follow the definitions of `detector/report.py`: TP a fraud line suspended at or after its onset;
FP a legitimate line suspended, or a fraud line suspended before its onset; harm the outgoing
calls a fraud line placed between its onset and its suspension (median over fraud lines).

Approximations (documented; `tests/test_tune.py` checks them against real backtests):
- Suspended lines stop feeding the learnt population baseline. The probe suspends at the floor, so
  more lines stop feeding it than in a run at T; the baseline then looks a little more "normal" and
  the probe's scores come out slightly HIGHER. Predicted false suspensions are therefore slightly
  pessimistic (safe for a budget) and recall slightly optimistic. On the labelled sample, probing at
  0.02: predicted/real false suspensions 193/184 at 0.03, 55/48 at 0.05, 8/7 at 0.08; probing at
  0.2: identical TP/FP at 0.3, 0.5 and 0.8, TP 85/84 at 0.95. `--verify` runs the real backtest.
- The probe's own restores, re-suspensions and cleared-outcome hysteresis are not those of a run
  at T. Only the FIRST suspension is predicted, as the report scores only the first one.
- Tiers: a line "reaches" tier X when its score ever reaches T_X. A line suspended lower escalates
  only at T_X + decisions.escalate_margin, so the false lines that really get a tier-X check are a
  subset of those counted: the high/extreme budgets are checked conservatively.

Proposal: `low` is the lowest threshold (above restore.below_score, which must stay below it)
whose false suspensions per 10k legitimate lines are within the target; `high` and `extreme` the
lowest thresholds at least `--min-gap` above the tier below whose false lines per 10k are within
target x --high-budget-ratio and target x --extreme-budget-ratio.
"""
from __future__ import annotations

import argparse
import bisect
import copy
import logging
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import orjson
import yaml

log = logging.getLogger("cdr_detector.tune")

TIERS = ("low", "high", "extreme")


def add_parser(sub, add_config) -> None:
    p = sub.add_parser(
        "tune", help="propose per-tier thresholds that meet a false-suspension budget",
        description="Backtest once while recording every number's score trajectory, sweep candidate "
                    "thresholds, and propose per-tier thresholds meeting a budget of false suspensions "
                    "per 10,000 legitimate lines (same definitions as `backtest --labels`).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The proposal is written as a YAML snippet that --config accepts (merged over the defaults):\n"
               "  cdr-detector tune ... --out-config tuned.yaml && cdr-detector backtest --config tuned.yaml ...")
    add_config(p)
    p.add_argument("--cdrs", required=True, metavar="FILE", help="recorded CDRs (.jsonl or .jsonl.gz)")
    p.add_argument("--subscribers", required=True, metavar="FILE", help="subscriber profiles (.jsonl)")
    p.add_argument("--labels", required=True, metavar="FILE", help="labels.csv (msisdn,label,typology,onset_ts)")
    p.add_argument("--outcomes", metavar="FILE", help="verification outcomes to replay with the CDRs")
    p.add_argument("--target-fp-per-10k", type=float, default=5.0, metavar="N",
                   help="false suspensions per 10k legitimate lines allowed at the low tier (default 5)")
    p.add_argument("--high-budget-ratio", type=float, default=1 / 5, metavar="R",
                   help="budget of the high tier as a fraction of the target (default 0.2: target/5)")
    p.add_argument("--extreme-budget-ratio", type=float, default=1 / 25, metavar="R",
                   help="budget of the extreme tier as a fraction of the target (default 0.04: target/25)")
    p.add_argument("--floor", type=float, default=0.2,
                   help="lowest threshold examined; the probe run suspends here (default 0.2)")
    p.add_argument("--max-threshold", type=float, default=0.99, help="highest threshold of the sweep (default 0.99)")
    p.add_argument("--step", type=float, default=0.01, help="sweep step (default 0.01)")
    p.add_argument("--min-gap", type=float, default=0.05,
                   help="minimum distance between adjacent tier thresholds (default 0.05)")
    p.add_argument("--out-config", metavar="SNIPPET.yaml", help="write the proposal as a config snippet here")
    p.add_argument("--plot", metavar="PNG", help="draw precision, recall and FP/10k against the threshold")
    p.add_argument("--json", metavar="FILE", help="write the sweep and the proposal as JSON here")
    p.add_argument("--all-rows", action="store_true", help="print every swept threshold (default: every 0.05)")
    p.add_argument("--verify", action="store_true",
                   help="then backtest the proposed configuration and report its real figures")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


# -- the one recording backtest ----------------------------------------------------------------------
@dataclass
class Trajectories:
    """Per number, the times at which its running-maximum MO score rose, and the new maxima."""

    ts: dict[str, list[int]] = field(default_factory=dict)
    peak: dict[str, list[float]] = field(default_factory=dict)
    records: int = 0
    scored: int = 0
    last_ts: int = 0

    def add(self, msisdn: str, ts: int, score: float) -> None:
        peaks = self.peak.get(msisdn)
        if peaks is None:
            self.ts[msisdn] = [ts]
            self.peak[msisdn] = [score]
        elif score > peaks[-1]:
            self.ts[msisdn].append(ts)
            peaks.append(score)

    def first_at(self, msisdn: str, threshold: float) -> int | None:
        """Event time of the first MO record scoring >= threshold (None: never)."""
        peaks = self.peak.get(msisdn)
        if not peaks or peaks[-1] < threshold:
            return None
        return self.ts[msisdn][bisect.bisect_left(peaks, threshold)]


def probe_config(cfg: dict, floor: float) -> dict:
    """The configuration of the recording run: the same model, the low tier at the floor.

    Tier thresholds at or below the floor move above it (the order must stay ascending), the
    automatic-restore bar below it (config validation), and the storm breaker is off: it only
    relabels decisions as shadow, but a probe suspending at the floor would trip it for nothing.
    """
    probe = copy.deepcopy(cfg)
    tiers = probe["tiers"]
    tiers["low"]["threshold"] = floor
    last = floor
    for name in TIERS[1:]:
        th = float(tiers[name]["threshold"])
        if th <= last:
            th = min(1.0, last + (1.0 - last) / 2)
        tiers[name]["threshold"] = th
        last = th
    probe["restore"]["below_score"] = min(float(probe["restore"]["below_score"]), floor / 2)
    probe.setdefault("storm", {})["enabled"] = False
    from .config import validate
    validate(probe)
    return probe


def record(cfg: dict, cdrs: str, subscribers: str | None, outcomes: str | None = None,
           floor: float = 0.2, show_progress: bool = False) -> Trajectories:
    """Run the production core once over the files and record every number's score trajectory."""
    from .backtest import Progress, load_outcomes, load_profiles, ordered_records, run
    from .core import Detector
    from .files import iter_lines
    from .pipeline import Pipeline

    traj = Trajectories()

    class RecordingPipeline(Pipeline):
        def process(self, rec, now=None, offset=-1):
            events = super().process(rec, now, offset)
            score = self.detector.last_score
            if score is not None and rec.direction == "MO":  # only an MO record can suspend a line
                traj.add(rec.msisdn, rec.ts, score)
                traj.scored += 1
            return events

    pipeline = RecordingPipeline(Detector(probe_config(cfg, floor)))
    if subscribers:
        load_profiles(pipeline, subscribers)
    res = run(pipeline, ordered_records(pipeline, iter_lines(cdrs)),
              load_outcomes(outcomes) if outcomes else None, progress=Progress(show_progress))
    traj.records = res.records
    traj.last_ts = res.last_ts
    return traj


# -- quality per threshold ---------------------------------------------------------------------------
def _median(xs: list):
    return xs[len(xs) // 2] if xs else None  # as detector/report.py


def evaluate_threshold(traj: Trajectories, labels: dict, mo_after_onset: dict[str, list[int]],
                       threshold: float) -> dict:
    """What threshold T would have done, with report.py's definitions of TP, FP, recall and harm."""
    nf = sum(1 for v in labels.values() if v[0] == "fraud")
    nb = len(labels) - nf
    tp = fp = caught_any = 0
    harms = []
    for m, (lab, _typ, onset) in labels.items():
        t = traj.first_at(m, threshold)
        if lab == "fraud":
            calls = mo_after_onset.get(m, [])
            harms.append(len(calls) if t is None else bisect.bisect_left(calls, t))
            if t is not None:
                caught_any += 1
        if t is None:
            continue
        if lab == "fraud" and t >= onset:
            tp += 1
        else:
            fp += 1
    harms.sort()
    return {
        "threshold": round(threshold, 4), "tp": tp, "fp": fp, "fraud": nf, "benign": nb,
        "fraud_flagged": caught_any,  # fraud lines suspended at all (before or after onset)
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / nf, 4) if nf else None,
        "fp_per_10k_benign": round(fp / nb * 1e4, 2) if nb else None,
        "median_harm_calls": _median(harms),
    }


def thresholds(floor: float, top: float, step: float) -> list[float]:
    n = int(math.floor((top - floor) / step + 1e-9))
    return [round(floor + i * step, 4) for i in range(n + 1)]


def sweep(traj: Trajectories, labels: dict, mo_after_onset: dict, grid: list[float]) -> list[dict]:
    return [evaluate_threshold(traj, labels, mo_after_onset, t) for t in grid]


# -- the proposal ------------------------------------------------------------------------------------
@dataclass
class Proposal:
    thresholds: dict[str, float | None]
    budgets: dict[str, float]
    rows: dict[str, dict | None]
    notes: list[str]

    @property
    def complete(self) -> bool:
        return all(v is not None for v in self.thresholds.values())


def propose(rows: list[dict], target: float, high_ratio: float, extreme_ratio: float,
            min_gap: float, restore_below: float) -> Proposal:
    budgets = {"low": target, "high": target * high_ratio, "extreme": target * extreme_ratio}
    chosen: dict[str, float | None] = {}
    chosen_rows: dict[str, dict | None] = {}
    notes = []
    lower = restore_below  # the low threshold must stay above the automatic-restore bar
    strict = True  # first tier: strictly above restore.below_score
    for name in TIERS:
        pick = None
        for r in rows:
            t = r["threshold"]
            if (t > lower + 1e-9 if strict else t >= lower - 1e-9) and r["fp_per_10k_benign"] <= budgets[name] + 1e-9:
                pick = r
                break
        chosen[name] = pick["threshold"] if pick else None
        chosen_rows[name] = pick
        if pick is None:
            notes.append(f"no swept threshold meets the {name} budget ({budgets[name]:g} per 10k) above "
                         f"{lower:.3f}: widen the sweep (--max-threshold) or relax the budget")
            break
        lower = round(pick["threshold"] + min_gap, 4)
        strict = False
    if rows and chosen.get("low") == rows[0]["threshold"]:
        notes.append(f"the low budget is already met at the lowest swept threshold {rows[0]['threshold']}: "
                     "a lower --floor might find a lower one")
    elif rows and chosen.get("low") is not None and rows[0]["threshold"] <= restore_below:
        below = [r for r in rows if r["threshold"] <= restore_below and r["fp_per_10k_benign"] <= target]
        if below:
            notes.append(f"thresholds down to {below[0]['threshold']} meet the low budget too, but the low "
                         f"threshold must stay above restore.below_score ({restore_below})")
    for name in TIERS:
        chosen.setdefault(name, None)
        chosen_rows.setdefault(name, None)
    return Proposal(chosen, budgets, chosen_rows, notes)


DECIDING = ("features", "model", "decisions", "tiers", "restore")  # what config.model_id hashes


def _differences(cfg, base):
    """The part of `cfg` that differs from `base` (nested dicts), or None when equal."""
    if isinstance(cfg, dict) and isinstance(base, dict):
        out = {}
        for k, v in cfg.items():
            d = _differences(v, base.get(k)) if k in base else v
            if d is not None:
                out[k] = d
        return out or None
    return None if cfg == base else cfg


def snippet_config(proposal: Proposal, cfg: dict) -> dict:
    """The proposed thresholds, plus every deciding setting of the tuned configuration that differs
    from the packaged defaults — so `--config SNIPPET` decides exactly as the tuned run did."""
    from . import config as config_mod

    with open(config_mod.DEFAULTS) as f:
        defaults = yaml.safe_load(f)
    out = _differences({k: cfg[k] for k in DECIDING if k in cfg},
                       {k: defaults.get(k) for k in DECIDING}) or {}
    tiers = out.setdefault("tiers", {})
    for name in TIERS:
        tiers.setdefault(name, {})["threshold"] = float(proposal.thresholds[name])
    out["tiers"] = {name: tiers[name] for name in TIERS}  # low, high, extreme, in that order
    return {"tiers": out.pop("tiers"), **out}


def snippet(proposal: Proposal, meta: dict, cfg: dict) -> str:
    """The proposal as YAML that `--config` accepts (config.load merges it over the defaults)."""
    body = yaml.safe_dump(snippet_config(proposal, cfg), sort_keys=False)
    header = ["# Tier thresholds proposed by `cdr-detector tune`.",
              f"# data: {meta['cdrs']} ({meta['records']:,} records, {meta['fraud']} fraud and "
              f"{meta['benign']} legitimate labelled lines)",
              f"# budget: false suspensions per 10k legitimate lines low <= {proposal.budgets['low']:g}, "
              f"high <= {proposal.budgets['high']:g}, extreme <= {proposal.budgets['extreme']:g}"]
    for name in TIERS:
        r = proposal.rows[name]
        header.append(f"#   {name:<7} {r['threshold']:.2f}: precision {r['precision']}, recall {r['recall']}, "
                      f"FP/10k {r['fp_per_10k_benign']} (lines whose score reaches it)")
    header.append("# Other keys below are deciding settings of the tuned run that differ from the defaults.")
    header.append("# Use: cdr-detector run --config THIS_FILE (merged over the packaged defaults).")
    return "\n".join(header) + "\n" + body


# -- output ------------------------------------------------------------------------------------------
def format_table(rows: list[dict], proposal: Proposal, all_rows: bool = False) -> str:
    marks = defaultdict(list)
    for name, t in proposal.thresholds.items():
        if t is not None:
            marks[t].append(name)
    lines = [f"{'threshold':>9}  {'precision':>9}  {'recall':>6}  {'FP/10k':>7}  {'tp':>4}  {'fp':>4}  "
             f"{'median calls before suspension':>30}"]
    for r in rows:
        t = r["threshold"]
        on_grid = abs(t * 20 - round(t * 20)) < 1e-6
        if not (all_rows or on_grid or t in marks or r is rows[0] or r is rows[-1]):
            continue
        p = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        lines.append(f"{t:>9.2f}  {p:>9}  {r['recall']:>6.3f}  {r['fp_per_10k_benign']:>7.2f}  {r['tp']:>4}  "
                     f"{r['fp']:>4}  {str(r['median_harm_calls']):>30}"
                     + (f"   <- {', '.join(marks[t])}" if t in marks else ""))
    return "\n".join(lines)


def plot(rows: list[dict], proposal: Proposal, path: str, title: str = "") -> None:
    """Precision and recall (top) and false suspensions per 10k (bottom, log scale) against the
    threshold, with the proposed tier thresholds (vertical) and the tier budgets (horizontal)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [r["threshold"] for r in rows]
    fig, (ax, ax2) = plt.subplots(2, 1, sharex=True, figsize=(9, 6.5), dpi=110,
                                  gridspec_kw={"height_ratios": [3, 2]})
    ax.plot(ts, [r["precision"] if r["precision"] is not None else float("nan") for r in rows],
            color="tab:blue", lw=2, label="precision")
    ax.plot(ts, [r["recall"] for r in rows], color="tab:green", lw=2, label="recall")
    ax.set_ylabel("precision / recall")
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    fp = [r["fp_per_10k_benign"] for r in rows]
    ax2.plot(ts, fp, color="tab:red", lw=2, label="false suspensions / 10k legitimate")
    ax2.set_yscale("symlog", linthresh=1.0)
    ax2.set_ylim(0, max(fp + [proposal.budgets["low"]]) * 2)
    ax2.set_ylabel("false suspensions\nper 10k legitimate")
    ax2.set_xlabel("score threshold")
    ax2.set_xlim(ts[0], ts[-1])
    ax2.grid(alpha=0.3, which="both")
    colours = {"low": "#d99a00", "high": "#e65c00", "extreme": "#a00000"}
    for name in TIERS:
        b = proposal.budgets[name]
        ax2.axhline(b, color=colours[name], ls=":", lw=1.5, label=f"{name} budget {b:g}")
        t = proposal.thresholds[name]
        if t is not None:
            for a in (ax, ax2):
                a.axvline(t, color=colours[name], ls="--", lw=1.5, label=f"{name} threshold {t:.2f}" if a is ax else None)
    ax.legend(loc="lower left", fontsize=8, ncol=2)
    ax2.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "Threshold trade-off (one recorded backtest)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- the command -------------------------------------------------------------------------------------
def tune(cfg: dict, cdrs: str, subscribers: str | None, labels_path: str, outcomes: str | None = None,
         target: float = 5.0, high_ratio: float = 0.2, extreme_ratio: float = 0.04, floor: float = 0.2,
         top: float = 0.99, step: float = 0.01, min_gap: float = 0.05,
         show_progress: bool = False) -> tuple[list[dict], Proposal, dict]:
    """Record once, sweep, propose. Returns (rows, proposal, meta)."""
    from . import report
    from .report import load_labels

    if not 0.0 < floor < top <= 1.0:
        raise ValueError(f"need 0 < floor < max-threshold <= 1, got {floor} and {top}")
    traj = record(cfg, cdrs, subscribers, outcomes, floor, show_progress)
    labels = load_labels(labels_path)  # read only after the run, as the backtest report does
    rows = sweep(traj, labels, report.fraud_mo_times(cdrs, labels), thresholds(floor, top, step))
    proposal = propose(rows, target, high_ratio, extreme_ratio, min_gap, float(cfg["restore"]["below_score"]))
    nf = sum(1 for v in labels.values() if v[0] == "fraud")
    meta = {"cdrs": cdrs, "records": traj.records, "scored_mo_records": traj.scored, "fraud": nf,
            "benign": len(labels) - nf, "numbers_scored": len(traj.peak), "floor": floor}
    return rows, proposal, meta


def run(args) -> int:
    from .cli import load_config

    cfg = load_config(args)
    rows, proposal, meta = tune(cfg, args.cdrs, args.subscribers, args.labels, args.outcomes,
                                args.target_fp_per_10k, args.high_budget_ratio, args.extreme_budget_ratio,
                                args.floor, args.max_threshold, args.step, args.min_gap,
                                show_progress=not args.quiet)
    print(f"{meta['records']:,} records, {meta['scored_mo_records']:,} scored outgoing records of "
          f"{meta['numbers_scored']:,} numbers; labels: {meta['fraud']} fraud, {meta['benign']} legitimate")
    print(format_table(rows, proposal, args.all_rows))
    if meta["benign"]:
        print(f"resolution: one false suspension is {1e4 / meta['benign']:.2f} per 10k legitimate lines here; "
              f"none seen still allows up to {3e4 / meta['benign']:.1f} per 10k (95%, rule of three)")
    for name in TIERS:
        r = proposal.rows[name]
        if r is None:
            print(f"proposal {name:<7} none (budget {proposal.budgets[name]:g} per 10k)")
        else:
            print(f"proposal {name:<7} {r['threshold']:.2f}  budget {proposal.budgets[name]:g} per 10k: "
                  f"FP/10k {r['fp_per_10k_benign']}, precision {r['precision']}, recall {r['recall']}, "
                  f"median calls before suspension {r['median_harm_calls']}")
    for note in proposal.notes:
        print(f"note: {note}")
    if args.json:
        with open(args.json, "wb") as f:
            f.write(orjson.dumps({"meta": meta, "rows": rows, "proposal": {
                "thresholds": proposal.thresholds, "budgets": proposal.budgets, "notes": proposal.notes}},
                option=orjson.OPT_INDENT_2))
    if args.plot:
        plot(rows, proposal, args.plot)
        print(f"plot → {args.plot}")
    if not proposal.complete:
        print("tune: no complete proposal; no config snippet written", file=sys.stderr)
        return 1
    if args.out_config:
        text = snippet(proposal, meta, cfg)
        with open(args.out_config, "w") as f:
            f.write(text)
        from . import config as config_mod
        config_mod.load(args.out_config, environ={})  # it must load and validate over the defaults
        print(f"config snippet → {args.out_config}")
    if args.verify:
        real = verify(proposal, cfg, args.cdrs, args.subscribers, args.labels, args.outcomes)
        predicted = proposal.rows["low"]
        print(f"verify: backtest with the proposal: FP/10k {real['fp_per_10k_benign']} (predicted "
              f"{predicted['fp_per_10k_benign']}), precision {real['precision']} ({predicted['precision']}), "
              f"recall {real['recall']} ({predicted['recall']}), median calls before suspension "
              f"{real['median_harm_calls']} ({predicted['median_harm_calls']}); precision by tier "
              f"{real['precision_by_tier']}")
        if real["fp_per_10k_benign"] > proposal.budgets["low"]:
            print("tune: the verifying backtest exceeds the low budget", file=sys.stderr)
            return 1
    return 0


def verify(proposal: Proposal, cfg: dict, cdrs: str, subscribers: str | None, labels_path: str,
           outcomes: str | None = None) -> dict:
    """A real backtest (the production core, not the probe) with the proposed thresholds; its report."""
    import os
    import tempfile

    from .backtest import backtest
    from .config import _merge, validate
    from .report import evaluate, load_labels

    tuned = _merge(cfg, snippet_config(proposal, cfg))
    validate(tuned)
    with tempfile.TemporaryDirectory() as tmp:
        res, _ = backtest(tuned, cdrs, subscribers, os.path.join(tmp, "events.jsonl"), outcomes=outcomes,
                          show_progress=False)
    return evaluate(res.events, load_labels(labels_path), cdrs, res.last_ts)
