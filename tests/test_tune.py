"""`cdr-detector tune`: one recorded backtest, a threshold sweep, a per-tier proposal that meets the
false-suspension budget, a config snippet that loads, and a PNG of the trade-off.

The sample separates fraud from legitimate lines at every threshold from ~0.1 up (no legitimate line
scores above ~0.1 by default), so a sweep from the default floor 0.2 has no false suspension at all
and the budget decides nothing. The tests therefore sweep from 0.02 (with restore.below_score lowered
to 0.01, which the low threshold must stay above), where legitimate lines do get suspended and the
budget has to be found — the interesting case for the tool.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from detector import cli, config, report, tune
from detector.report import evaluate, load_labels

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = Path(os.environ.get("CDR_SHARED_DIR") or next((p for p in (Path(__file__).resolve().parents[1].parent / "shared", Path("/work/shared")) if p.exists()), "/work/shared")) / "data" / "sample"
TARGET = 40.0  # per 10k: on ~600 legitimate lines that allows two false suspensions (33/10k), not three
FLOOR = 0.02


def _slice_module():
    spec = importlib.util.spec_from_file_location("slice_dataset", ROOT / "scripts" / "slice_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    if not (SAMPLE / "cdrs.jsonl.gz").exists():
        pytest.skip("the labelled sample is missing")
    d = tmp_path_factory.mktemp("tune")
    counts = _slice_module().slice_dataset(str(SAMPLE), str(d / "slice"), 600, 5, 3)
    base = d / "base.yaml"
    base.write_text("restore:\n  below_score: 0.01\n")
    return {"dir": d, "cdrs": str(d / "slice" / "cdrs.jsonl.gz"), "subscribers": str(d / "slice" / "subscribers.jsonl"),
            "labels": str(d / "slice" / "labels.csv"), "base": str(base), "counts": counts}


@pytest.fixture(scope="module")
def tuned(data) -> dict:
    """`cdr-detector tune` once, through the CLI, with snippet, plot and JSON."""
    d = data["dir"]
    out = {"snippet": d / "tuned.yaml", "png": d / "tradeoff.png", "json": d / "tune.json"}
    rc = cli.main(["tune", "--config", data["base"], "--cdrs", data["cdrs"], "--subscribers", data["subscribers"],
                   "--labels", data["labels"], "--target-fp-per-10k", str(TARGET), "--floor", str(FLOOR),
                   "--out-config", str(out["snippet"]), "--plot", str(out["png"]), "--json", str(out["json"]),
                   "--quiet"])
    assert rc == 0
    out.update(json.loads(out["json"].read_text()))
    return out


def test_the_sweep_is_not_trivial_on_this_slice(tuned):
    rows = tuned["rows"]
    assert rows[0]["threshold"] == FLOOR and rows[-1]["threshold"] == 0.99
    assert rows[0]["fp"] > 3, "at the floor legitimate lines must be suspended, or the budget decides nothing"
    assert rows[0]["fp_per_10k_benign"] > TARGET
    assert rows[0]["recall"] == 1.0


def test_sweep_is_monotone_where_it_must_be(tuned):
    rows = tuned["rows"]
    for a, b in zip(rows, rows[1:]):
        assert b["threshold"] > a["threshold"]
        # A number's running-maximum score crosses a higher threshold later or never: false
        # suspensions (legitimate lines, fraud lines before their onset) can only go down ...
        assert b["fp"] <= a["fp"], (a, b)
        assert b["fp_per_10k_benign"] <= a["fp_per_10k_benign"]
        # ... and so can the fraud lines suspended at all, and the calls fraud gets through go up.
        assert b["fraud_flagged"] <= a["fraud_flagged"], (a, b)
        assert b["median_harm_calls"] >= a["median_harm_calls"], (a, b)
        # Recall could in principle rise (a fraud line crossing before its onset at T may cross after
        # it at a higher T), but no fraud line of the sample scores high before its onset.
        assert b["recall"] <= a["recall"], (a, b)


def test_sweep_uses_the_report_definitions(data):
    """For a threshold, the sweep's figures equal report.evaluate() of the suspensions it implies."""
    cfg = config.load(data["base"], environ={})
    traj = tune.record(cfg, data["cdrs"], data["subscribers"], None, FLOOR)
    labels = load_labels(data["labels"])
    mo = report.fraud_mo_times(data["cdrs"], labels)
    for t in (FLOOR, 0.05, 0.3, 0.97, 0.99):
        events = []
        for m in traj.peak:
            first = traj.first_at(m, t)
            if first is not None:
                events.append({"msisdn": m, "ts": first, "action": "suspend", "tier": "low", "mode": "enforce"})
        rep = evaluate(events, labels, data["cdrs"], traj.last_ts)
        row = tune.evaluate_threshold(traj, labels, mo, t)
        for k in ("tp", "fp", "precision", "recall", "fp_per_10k_benign", "median_harm_calls"):
            assert row[k] == rep[k], (t, k, row[k], rep[k])


def test_proposal_meets_the_budgets_on_the_tuning_data(tuned):
    rows = {r["threshold"]: r for r in tuned["rows"]}
    th = tuned["proposal"]["thresholds"]
    budgets = tuned["proposal"]["budgets"]
    assert budgets == pytest.approx({"low": TARGET, "high": TARGET / 5, "extreme": TARGET / 25})
    assert 0.01 < th["low"] < th["high"] < th["extreme"] <= 0.99
    assert th["high"] - th["low"] >= 0.05 - 1e-9 and th["extreme"] - th["high"] >= 0.05 - 1e-9
    for name in ("low", "high", "extreme"):
        assert rows[th[name]]["fp_per_10k_benign"] <= budgets[name], name
    # the lowest such threshold: the one below it on the grid breaks the low budget
    below = [r for r in tuned["rows"] if r["threshold"] < th["low"]]
    assert below and below[-1]["fp_per_10k_benign"] > TARGET


def test_snippet_loads_and_validates(tuned, data):
    text = tuned["snippet"].read_text()
    assert text.startswith("# Tier thresholds proposed by `cdr-detector tune`")
    snippet = yaml.safe_load(text)
    assert set(snippet) == {"tiers", "restore"}  # the tuned run's non-default deciding setting travels along
    cfg = config.load(str(tuned["snippet"]), environ={})
    config.validate(cfg)
    th = tuned["proposal"]["thresholds"]
    assert {n: cfg["tiers"][n]["threshold"] for n in th} == th
    assert cfg["restore"]["below_score"] == 0.01
    defaults = config.load(environ={})
    assert cfg["tiers"]["low"]["verification"] == defaults["tiers"]["low"]["verification"]  # merged, not replaced
    assert cfg["model"] == defaults["model"]


def test_plot_is_a_real_png(tuned):
    blob = tuned["png"].read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(blob) > 20_000


def test_a_backtest_with_the_snippet_meets_the_target(tuned, data, tmp_path):
    """The real core with the proposed thresholds, scored by the report: within the budget.

    The probe suspends at the floor, so more lines stop feeding the learnt population baseline than
    in a run at the proposed threshold; that makes the probe's scores, and so its false-suspension
    counts, slightly higher: a real run can only do as well or better here, never worse.
    """
    exe = ROOT / ".venv" / "bin" / "cdr-detector"
    report_path = tmp_path / "report.json"
    proc = subprocess.run([str(exe), "backtest", "--config", str(tuned["snippet"]), "--cdrs", data["cdrs"],
                           "--subscribers", data["subscribers"], "--labels", data["labels"],
                           "--out", str(tmp_path / "events.jsonl"), "--json", str(report_path), "--quiet"],
                          capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if not k.startswith("CDR_DETECTOR")})
    assert proc.returncode == 0, proc.stderr
    real = json.loads(report_path.read_text())
    predicted = {r["threshold"]: r for r in tuned["rows"]}[tuned["proposal"]["thresholds"]["low"]]
    assert real["fp_per_10k_benign"] <= TARGET
    assert real["fp"] <= predicted["fp"]
    assert real["recall"] >= predicted["recall"] - 1e-9
    assert real["tp"] + real["fp"] > 0


def test_verify_flag_reports_the_real_figures(data, tmp_path, capsys):
    rc = cli.main(["tune", "--config", data["base"], "--cdrs", data["cdrs"], "--subscribers", data["subscribers"],
                   "--labels", data["labels"], "--target-fp-per-10k", str(TARGET), "--floor", "0.2",
                   "--verify", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "verify: backtest with the proposal: FP/10k" in out
    assert "proposal low" in out and "median calls before suspension" in out


# -- the pieces, on synthetic input ------------------------------------------------------------------
def test_first_crossing_of_a_running_maximum():
    t = tune.Trajectories()
    for ts, s in ((1, 0.1), (2, 0.05), (3, 0.4), (4, 0.3), (5, 0.9)):
        t.add("1", ts, s)
    assert t.peak["1"] == [0.1, 0.4, 0.9] and t.ts["1"] == [1, 3, 5]
    assert t.first_at("1", 0.05) == 1
    assert t.first_at("1", 0.4) == 3
    assert t.first_at("1", 0.41) == 5
    assert t.first_at("1", 0.95) is None
    assert t.first_at("unknown", 0.1) is None


def _rows(fps: list[int], start: float = 0.2, benign: int = 10_000) -> list[dict]:
    return [{"threshold": round(start + i * 0.05, 4), "fp": fp, "fp_per_10k_benign": fp / benign * 1e4,
             "tp": 10, "precision": 1.0, "recall": 1.0, "median_harm_calls": 1} for i, fp in enumerate(fps)]


def test_proposal_rules():
    rows = _rows([50, 20, 9, 5, 3, 1, 1, 0, 0, 0, 0])  # thresholds 0.20 .. 0.70
    p = tune.propose(rows, target=5, high_ratio=0.2, extreme_ratio=0.04, min_gap=0.05, restore_below=0.3)
    assert p.thresholds == {"low": 0.35, "high": 0.45, "extreme": 0.55}
    assert p.complete
    # the low threshold stays above restore.below_score even when a lower one meets the budget
    p = tune.propose(_rows([0] * 11), 5, 0.2, 0.04, 0.05, restore_below=0.3)
    assert p.thresholds == {"low": 0.35, "high": 0.4, "extreme": 0.45}
    assert any("restore.below_score" in n for n in p.notes)
    # a budget no swept threshold meets: no proposal, and the CLI writes no snippet
    p = tune.propose(_rows([50, 40, 30]), 5, 0.2, 0.04, 0.05, restore_below=0.1)
    assert not p.complete and p.thresholds["low"] is None and p.notes


def test_probe_config_keeps_the_order_valid():
    cfg = config.load(environ={})
    probe = tune.probe_config(cfg, 0.2)
    config.validate(probe)
    assert probe["tiers"]["low"]["threshold"] == 0.2
    assert probe["restore"]["below_score"] < 0.2
    assert probe["storm"]["enabled"] is False
    assert cfg["tiers"]["low"]["threshold"] == 0.5  # the caller's config is not touched
    high = tune.probe_config(cfg, 0.9)
    config.validate(high)
    assert 0.9 < high["tiers"]["high"]["threshold"] < high["tiers"]["extreme"]["threshold"] <= 1.0


def test_cli_help_lists_the_flags():
    helptext = cli.build_parser()._subparsers._group_actions[0].choices["tune"].format_help()
    for flag in ("--cdrs", "--subscribers", "--labels", "--target-fp-per-10k", "--config", "--out-config",
                 "--plot", "--outcomes", "--high-budget-ratio", "--extreme-budget-ratio"):
        assert flag in helptext
    args = cli.build_parser().parse_args(["tune", "--cdrs", "c", "--subscribers", "s", "--labels", "l"])
    assert args.target_fp_per_10k == 5.0 and args.high_budget_ratio == 0.2 and args.extreme_budget_ratio == 0.04


def test_outcomes_are_replayed_with_the_records(data, tmp_path):
    """--outcomes goes through the same interleaving as `backtest --outcomes`: a confirmed fraud teaches
    the model and puts the line under watch, so its later scores (the trajectories) change."""
    labels = load_labels(data["labels"])
    outcomes = tmp_path / "outcomes.jsonl"
    lines = [{"msisdn": m, "ts": onset + 2 * 3_600_000, "outcome": "confirmed_fraud"}
             for m, (lab, _typ, onset) in labels.items() if lab == "fraud"]
    outcomes.write_text("".join(json.dumps(o) + "\n" for o in sorted(lines, key=lambda o: o["ts"])))
    cfg = config.load(data["base"], environ={})
    plain = tune.record(cfg, data["cdrs"], data["subscribers"], None, FLOOR)
    taught = tune.record(cfg, data["cdrs"], data["subscribers"], str(outcomes), FLOOR)
    assert plain.records == taught.records
    assert any(plain.peak[m] != taught.peak.get(m) for m in plain.peak)
    rc = cli.main(["tune", "--config", data["base"], "--cdrs", data["cdrs"], "--subscribers", data["subscribers"],
                   "--labels", data["labels"], "--outcomes", str(outcomes), "--floor", str(FLOOR),
                   "--target-fp-per-10k", str(TARGET), "--quiet"])
    assert rc == 0
