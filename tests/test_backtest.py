"""detector/backtest.py and report.py: order of processing, outcomes, no peeking at labels, and the
quality of the detector on a slice of the labelled sample, judged like shared/tools/score.py judges."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from conftest import (CONTRACT_EVENT_KEYS, HOUR, MINUTE, ROOT, SCORE_PY, SLICE_FRAUD, T0, Stream, load_cfg, make_cdr,
                      outcome)
from detector import backtest, report
from detector.core import Detector, public
from detector.files import iter_lines
from detector.pipeline import Pipeline

VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def read_events(path: Path) -> list[dict]:
    return [orjson.loads(line) for _, line in iter_lines(path)]


def write_jsonl(path: Path, objs, gz: bool = False) -> Path:
    data = b"".join(orjson.dumps(o) + b"\n" if isinstance(o, dict) else o + b"\n" for o in objs)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


class FileOpens:
    """Every file the process opens while active (an audit hook cannot be removed, so it is gated)."""

    _active: list[list[str]] = []
    _installed = False

    def __enter__(self):
        if not FileOpens._installed:
            sys.addaudithook(FileOpens._hook)
            FileOpens._installed = True
        self.paths: list[str] = []
        FileOpens._active.append(self.paths)
        return self

    def __exit__(self, *exc):
        FileOpens._active.remove(self.paths)

    @staticmethod
    def _hook(event, args):
        if event == "open" and FileOpens._active and args and isinstance(args[0], (str, bytes, Path)):
            for paths in FileOpens._active:
                paths.append(str(args[0]))


# -- a backtest over a slice of the labelled sample -------------------------------------------------------
@pytest.fixture(scope="module")
def slice_run(sample_slice):
    cfg = load_cfg()
    out = sample_slice / "events.jsonl"
    with FileOpens() as opens:
        res, pipeline = backtest.backtest(cfg, str(sample_slice / "cdrs.jsonl.gz"),
                                          str(sample_slice / "subscribers.jsonl"), str(out), show_progress=False)
    labels = report.load_labels(str(sample_slice / "labels.csv"))
    events = read_events(out)
    rep = report.evaluate(events, labels, str(sample_slice / "cdrs.jsonl.gz"), res.last_ts)
    return {"cfg": cfg, "res": res, "pipeline": pipeline, "out": out, "events": events, "labels": labels,
            "report": rep, "opens": opens.paths, "dir": sample_slice}


def test_slice_is_what_it_claims(slice_run):
    labels = slice_run["labels"]
    by_type = {}
    for lab, typ, onset in labels.values():
        by_type[typ] = by_type.get(typ, 0) + 1
        assert (onset is not None) == (lab == "fraud")
    for typ, n in SLICE_FRAUD.items():
        assert by_type[typ] == n
    res, pipeline = slice_run["res"], slice_run["pipeline"]
    assert res.records > 10_000 and pipeline.counts["ok"] == res.records
    assert pipeline.counts["invalid"] == 0


def test_backtest_quality_on_sample_slice(slice_run):
    r = slice_run["report"]
    assert r["unknown_numbers"] == 0
    assert r["precision"] >= 0.9, r
    assert r["recall"] >= 0.85, r
    assert r["fp"] <= 1, r["fp_by_persona"]
    for typ, caught in r["recall_by_typology"].items():  # no fraud scheme is missed wholesale
        tp, n = map(int, caught.split("/"))
        assert tp >= 0.8 * n, (typ, caught)
    assert r["median_harm_calls"] <= 5, r  # stopped within a handful of victims' calls
    assert r["legit_lines_suspended"] <= 1


def test_backtest_events_follow_the_contract(slice_run):
    events, cfg = slice_run["events"], slice_run["cfg"]
    assert [e for e in slice_run["res"].events if e["action"] == "suspend"]
    assert len(events) == len(slice_run["res"].events)
    for e, internal in zip(events, slice_run["res"].events):
        assert set(e) == CONTRACT_EVENT_KEYS
        assert all(internal[k] == e[k] for k in e)
        assert e["verification"] == cfg["tiers"][e["tier"]]["verification"]
        if e["action"] != "restore":
            assert e["reasons"] and all(x["text"] for x in e["reasons"])
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts)  # decisions are made in event-time order
    # per number: suspend, escalate*, restore, suspend, ... — never suspended while suspended
    status: dict[str, bool] = {}
    for e in events:
        on = status.get(e["msisdn"], False)
        if e["action"] == "suspend":
            assert not on, e
        else:
            assert on, e
        status[e["msisdn"]] = e["action"] != "restore"


def test_report_agrees_with_the_reference_scorer(slice_run):
    if not SCORE_PY.exists():
        pytest.skip(f"reference scorer not found at {SCORE_PY}")
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable)
    proc = subprocess.run([python, str(SCORE_PY), str(slice_run["dir"]), str(slice_run["out"])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ref = json.loads(proc.stdout)
    ours = json.loads(json.dumps(slice_run["report"]))  # same JSON round trip as the scorer's output
    assert ref.keys() <= ours.keys()
    assert {k: ours[k] for k in ref} == ref


def test_backtest_does_not_peek_at_labels(slice_run, tmp_path):
    assert not [p for p in slice_run["opens"] if "labels" in Path(p).name]
    assert any(p.endswith("cdrs.jsonl.gz") for p in slice_run["opens"])  # the hook did see the run's files
    blind = tmp_path / "no-labels"
    blind.mkdir()
    for name in ("cdrs.jsonl.gz", "subscribers.jsonl"):
        shutil.copy(slice_run["dir"] / name, blind / name)
    assert not (blind / "labels.csv").exists()
    out = blind / "events.jsonl"
    backtest.backtest(load_cfg(), str(blind / "cdrs.jsonl.gz"), str(blind / "subscribers.jsonl"), str(out),
                      show_progress=False)
    assert out.read_bytes() == slice_run["out"].read_bytes()


# -- processing order, invalid lines, duplicates, outcomes --------------------------------------------------
def test_ordered_records_breaks_ties_by_record_id_and_reports_invalid_lines():
    lines = [
        orjson.dumps(make_cdr(record_id="r3", ts=T0)),
        orjson.dumps(make_cdr(record_id="r1", ts=T0)),
        b"{broken",
        orjson.dumps(make_cdr(record_id="r2", ts=T0)),
        orjson.dumps(make_cdr(record_id="r0", ts=T0 + 1)),
        orjson.dumps(make_cdr(record_id="r9", ts=T0 + 2, duration_s=-5)),
        orjson.dumps(make_cdr(record_id="r5", ts=T0 + 2)),
        orjson.dumps(make_cdr(record_id="r4", ts=T0 + 2)),
    ]
    pipeline = Pipeline(Detector(load_cfg(), 1))
    bad = []
    out = list(backtest.ordered_records(pipeline, enumerate(lines, 1),
                                        lambda n, line, err: bad.append((n, err.reason, err.field))))
    assert [r.record_id for r in out] == ["r1", "r2", "r3", "r0", "r4", "r5"]
    assert bad == [(3, "not_json", None), (6, "bad_value", "duration_s")]
    assert pipeline.counts["invalid"] == 2 and pipeline.invalid == {"not_json": 1, "bad_value": 1}


def test_invalid_lines_go_to_the_dlq_file_and_duplicates_are_counted(tmp_path):
    s = Stream()
    recs = [s.rec(msisdn="13800000001", ts=T0 + i * MINUTE)._asdict() for i in range(5)]
    lines = [orjson.dumps(r) for r in recs]
    lines.insert(2, lines[1])  # a repeated delivery
    lines.insert(4, b'{"record_id": "x", "ts": "soon"}')
    lines.insert(5, b"\xff\xfe")
    cdrs = write_jsonl(tmp_path / "cdrs.jsonl", lines)
    dlq = tmp_path / "dlq.jsonl"
    res, pipeline = backtest.backtest(load_cfg(), str(cdrs), None, str(tmp_path / "ev.jsonl"), dlq=str(dlq),
                                      show_progress=False)
    assert pipeline.counts["ok"] == 5 and pipeline.counts["duplicate"] == 1 and pipeline.counts["invalid"] == 2
    rejected = read_events(dlq)
    assert [(d["line"], d["reason"], d["field"]) for d in rejected] == [(5, "missing_field", "duration_s"),
                                                                          (6, "bad_utf8", None)]
    assert rejected[0]["raw"] == '{"record_id": "x", "ts": "soon"}'  # the original line, kept


def test_the_backtest_command_says_how_much_state_it_ended_with(tmp_path, capsys):
    """The "state:" line (numbers, handsets, cells, peak RSS) is what `scripts/bench.py backtest`
    reads to size a carrier-scale run: its figures must be the run's own, in the form it parses."""
    from detector import cli

    s = Stream()
    recs = [s.rec(msisdn=f"1380000000{k}", ts=T0 + k * MINUTE, imei=f"86000000000000{k % 2}",
                  cell_id=f"c{k % 3}") for k in range(7)]
    recs.append(s.rec(msisdn="13800000001", ts=T0 + 9 * MINUTE, imei="860000000000001", cell_id="c0"))
    cdrs = write_jsonl(tmp_path / "cdrs.jsonl", [r._asdict() for r in recs])
    rc = cli.main(["backtest", "--cdrs", str(cdrs), "--out", str(tmp_path / "ev.jsonl"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    state = bench.backtest_state(out)
    assert {k: state[k] for k in ("numbers_tracked", "handsets_indexed", "cells_indexed")} == {
        "numbers_tracked": 7, "handsets_indexed": 2, "cells_indexed": 3}, out
    assert 10 < state["peak_rss_mib"] < 100_000


def _ring_files(tmp_path: Path, gz: bool = False) -> tuple[Path, list]:
    s = Stream()
    recs = []
    for k, m in enumerate(("13100000001", "13100000002", "13100000003")):
        recs += s.blast(m, T0 + k * 1000, 25, gap_ms=90_000, imei="860000000055555", cell_id="c55555")
    recs += s.two_way("13800000001", T0 - 2 * HOUR, 2, [f"1390000{i:04d}" for i in range(8)])
    recs.sort(key=lambda r: (r.ts, r.record_id))
    path = tmp_path / ("cdrs.jsonl.gz" if gz else "cdrs.jsonl")
    write_jsonl(path, [r._asdict() for r in recs], gz=gz)
    return path, recs


def test_outcomes_are_interleaved_by_event_time(tmp_path):
    cdrs, recs = _ring_files(tmp_path)
    cfg = load_cfg()
    base, _ = backtest.backtest(cfg, str(cdrs), None, str(tmp_path / "a.jsonl"), show_progress=False)
    suspended = next(e for e in base.events if e["action"] == "suspend" and e["msisdn"] == "13100000001")
    # cleared at the very time of the line's next call: the verdict comes first
    t_clear = next(r.ts for r in recs if r.msisdn == "13100000001" and r.ts > suspended["ts"])
    t_late = recs[-1].ts + HOUR  # after the last record
    outcomes = write_jsonl(tmp_path / "outcomes.jsonl", [
        {"msisdn": "13100000002", "ts": t_late, "outcome": "cleared"},
        {"msisdn": "13100000001", "ts": t_clear, "outcome": "cleared"},  # files need not be sorted
        b"not an outcome",
    ])
    res, pipeline = backtest.backtest(cfg, str(cdrs), None, str(tmp_path / "b.jsonl"), outcomes=str(outcomes),
                                      show_progress=False)
    events = read_events(tmp_path / "b.jsonl")
    assert pipeline.counts["invalid_outcome"] == 1
    # what production would do: each outcome applied just before the first record at or after its time
    det = Detector(cfg)
    expected, pending = [], [outcome(msisdn="13100000001", ts=t_clear)]
    for r in recs:
        while pending and pending[0].ts <= r.ts:
            expected += det.on_outcome(pending.pop(0))
        expected += det.on_record(r)
    expected += det.on_outcome(outcome(msisdn="13100000002", ts=t_late))
    assert events == [public(e) for e in expected]
    restores = [(i, e) for i, e in enumerate(events) if e["action"] == "restore"]
    assert [(e["msisdn"], e["ts"]) for _, e in restores] == [("13100000001", t_clear), ("13100000002", t_late)]
    i = restores[0][0]
    assert any(e["ts"] > t_clear for e in events[i + 1:])  # the restore sits between earlier and later events
    assert all(e["ts"] <= t_clear for e in events[:i])


def test_gzip_and_plain_input_give_the_same_events(tmp_path):
    plain, _ = _ring_files(tmp_path)
    gz, _ = _ring_files(tmp_path, gz=True)
    backtest.backtest(load_cfg(), str(plain), None, str(tmp_path / "p.jsonl"), show_progress=False)
    backtest.backtest(load_cfg(), str(gz), None, str(tmp_path / "g.jsonl.gz"), show_progress=False)
    with gzip.open(tmp_path / "g.jsonl.gz", "rb") as f:
        assert f.read() == (tmp_path / "p.jsonl").read_bytes()
    assert read_events(tmp_path / "p.jsonl")


def test_evaluate_counts_by_the_documented_definitions(tmp_path):
    """A hand-made case: TP after onset, FP on a benign line, FP for a fraud line suspended before
    its onset, harm = MO calls between onset and suspension."""
    s = Stream()
    recs = []
    for i in range(6):
        recs.append(s.rec(msisdn="13100000001", ts=T0 + i * MINUTE))  # fraud, onset at T0 + 2 min
        recs.append(s.rec(msisdn="13100000002", ts=T0 + i * MINUTE, direction="MT"))  # MT: never harm
    cdrs = write_jsonl(tmp_path / "cdrs.jsonl", [r._asdict() for r in recs])
    labels = {"13100000001": ("fraud", "scam", T0 + 2 * MINUTE), "13100000002": ("fraud", "wangiri", T0),
              "13100000003": ("fraud", "scam", T0 + HOUR), "13800000001": ("benign", "courier", None),
              "13800000002": ("benign", "typical", None)}

    def ev(m, ts, action="suspend", tier="low"):
        return {"msisdn": m, "ts": ts, "action": action, "tier": tier, "mode": "enforce"}

    events = [ev("13100000001", T0 + 5 * MINUTE + 1), ev("13800000001", T0, tier="high"),
              ev("13100000003", T0 + 10 * MINUTE), ev("13800000001", T0 + HOUR, "restore", "high")]
    r = report.evaluate(events, labels, str(cdrs), T0 + 2 * HOUR)
    assert (r["tp"], r["fp"], r["fraud"], r["benign"]) == (1, 2, 3, 2)
    assert r["precision"] == round(1 / 3, 4) and r["recall"] == round(1 / 3, 4)
    assert r["recall_by_typology"] == {"scam": "1/2", "wangiri": "0/1"}
    assert r["fp_by_persona"] == {"courier": 1, "scam": 1}
    assert r["median_delay_min"] == 3.0
    # harm: line 1 placed its calls at 2, 3, 4, 5 min (>= onset, < suspension); line 2 only received
    assert r["fraud_calls_not_prevented"] == 4
    assert r["legit_lines_suspended"] == 1 and r["legit_suspension_hours"] == 1.0
    assert r["precision_by_tier"] == {"high": 0.0, "low": 0.5}
