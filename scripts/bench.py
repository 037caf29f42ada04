#!/usr/bin/env python
"""Benchmarks of cdr-detector: what it costs, measured — not a test, nothing is asserted.

    .venv/bin/python scripts/bench.py [--json FILE] [--cpu N] core      [--records 1000000] [--profile-records 300000]
    .venv/bin/python scripts/bench.py [--json FILE] [--cpu N] backtest  [--hours 25]
    .venv/bin/python scripts/bench.py [--json FILE] [--cpu N] daemon-work [--records 300000]
    .venv/bin/python scripts/bench.py [--json FILE] [--cpu N] rest-cycle [--records 400000]
    .venv/bin/python scripts/bench.py [--json FILE]           profiles  [--subscribers 1000000]
    .venv/bin/python scripts/bench.py [--json FILE]           e2e       [--records 300000] [--live-seconds 60] [--profile-daemon]
    .venv/bin/python scripts/bench.py [--json FILE]           memory    [--numbers 1000000 10000000] [--per-number 3]
    .venv/bin/python scripts/bench.py [--json FILE] [--cpu N] all

core      records/s of the core alone on records generated and parsed into CDR tuples beforehand,
          through Pipeline.process, through Detector.on_record and through the Enricher alone (so
          each layer's cost is visible); then a cProfile run naming the hot spots.
backtest  wall time of `cdr-detector backtest --quiet` on a generated .jsonl.gz (cached under
          var/bench/) against the floor: the same file merely read, read + orjson-decoded, read +
          parse_cdr'd, in this process on the same core.
daemon-work  what `cdr-detector run` does per record besides talking to Kafka, on one core: parse
          the raw bytes, process them (Pipeline.process_at, with metrics), and at each simulated
          commit (every --commit-records) pack the changed states and encode the changed shared
          pairs as the changelog and shared topic take them. The e2e rate cannot exceed it.
rest-cycle  per number, what putting the numbers in use to rest costs (the hourly sweep, which
          holds up the record that triggers it) and what bringing one back costs (its next record
          after a day's silence, and every number's first record after a restart): a generated
          stream fed through the core, then every number put to rest and taken back, --repeat
          times; checked lossless.
profiles  RSS per subscriber profile held (a carrier holds one for every subscriber): generated
          profiles, serialised as the profile topic carries them, parsed and loaded into a
          Detector; a sample checked given back equal.
e2e       (needs the local broker: scripts/kafka-local.sh start) fresh topics and group; the file
          is replayed at max rate, then `cdr-detector run` drains it (records/s and lag over time
          from its /metrics); a plain consumer of the chosen backend (--consumer-backend) over
          the same topic is the I/O floor; then a live phase produces records paced at a fixed
          rate, stamped with the wall clock, for the latency from production to processing and
          to decision.
memory    bytes per tracked number: synthetic numbers fed a few realistic records each through the
          real core (Detector.on_record), RSS delta (and tracemalloc on a smaller run) / numbers,
          plus the size of one number's changelog value.

Every result carries the machine (nproc, CPU model, Python), the command line and the load
average around the measurement. `--json FILE` merges the results into FILE by measurement name.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import io
import itertools
import json
import os
import platform
import pstats
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# PYTHONPATH=<another worktree> measures that tree's detector (an A/B); else this one's
sys.path.insert(len(sys.path) if os.environ.get("PYTHONPATH") else 0, str(ROOT))

import orjson  # noqa: E402

from detector import config as config_mod  # noqa: E402
from detector.contract import CDR, parse_cdr, parse_profile  # noqa: E402
from detector.core import Detector, Enricher  # noqa: E402
from detector.files import iter_lines  # noqa: E402
from detector.features import NumberState  # noqa: E402
from detector.generator import GeneratorSpec, generate_profiles, generate_records, write_dataset  # noqa: E402
from detector.pipeline import Pipeline  # noqa: E402
from detector.profiles import ProfileTable  # noqa: E402

BENCH_DIR = ROOT / "var" / "bench"
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
DEFAULT_START_TS = GeneratorSpec().start_ts

TARGETS = {
    "core_records_per_s": 100_000,
    "backtest_over_floor": 3.0,
    "e2e_records_per_s": 50_000,
    "e2e_p99_latency_s": 1.0,
    "bytes_per_number": 1024,
}


# ------------------------------------------------------------------------------------------------
# machine, command, output

def machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_total = _meminfo().get("MemTotal", 0)
    tree = Path(config_mod.__file__).resolve().parent.parent  # the detector measured (PYTHONPATH's in an A/B)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "detector"], cwd=tree, capture_output=True,
                               text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", []
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "platform": platform.platform(),
            "mem_total_gib": round(mem_total / 2**30, 1), "git_head": commit,
            "detector_files_uncommitted": len(dirty)}


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def loadavg() -> list[float]:
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return []


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT), os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def pin(cpu: int | None) -> str:
    if cpu is None or cpu < 0 or not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    os.sched_setaffinity(0, {cpu})
    return f"pinned to cpu {cpu}"


def default_cpu() -> int:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    return cpus[-1]


def cli_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "cdr-detector"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "detector.cli"]


def fmt(v, unit: str = "") -> str:
    if isinstance(v, float):
        s = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.3g}" if abs(v) < 10 else f"{v:,.1f}"
    elif isinstance(v, int):
        s = f"{v:,}"
    else:
        s = str(v)
    return f"{s} {unit}".rstrip()


def table(rows: list[tuple], headers: tuple[str, ...]) -> str:
    cells = [headers] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def header(name: str, m: dict) -> None:
    print(f"\n=== {name} === {m['nproc']} x {m['cpu_model']}, {m['implementation']} {m['python']}, "
          f"{m['mem_total_gib']} GiB, git {m['git_head']}"
          f"{' + ' + str(m['detector_files_uncommitted']) + ' uncommitted detector/ files' if m['detector_files_uncommitted'] else ''}")
    print(f"command: {command_line()}")
    print(f"load average at start: {loadavg()}", flush=True)


def wait_quiet(threshold: float | None, max_s: float) -> None:
    """Wait (up to max_s) until the 1-minute load average is below threshold: the machine is shared."""
    if not threshold:
        return
    t0 = time.monotonic()
    while loadavg() and loadavg()[0] >= threshold and time.monotonic() - t0 < max_s:
        time.sleep(5)
    log(f"load average {loadavg()} after waiting {time.monotonic() - t0:.0f} s for < {threshold}")


WAIT = {"threshold": None, "max_s": 300.0}


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# data

def dataset(subscribers: int, hours: float, seed: int, start_ts: int = DEFAULT_START_TS) -> tuple[Path, dict]:
    """A generated dataset under var/bench/ (reused when the same spec was written before)."""
    d = BENCH_DIR / f"ds-s{subscribers}-h{hours:g}-seed{seed}-t{start_ts}"
    meta_path = d / "meta.json"
    if meta_path.exists():
        return d, json.loads(meta_path.read_text())
    spec = GeneratorSpec(subscribers=subscribers, hours=hours, seed=seed, start_ts=start_ts)
    tmp = d.with_name(d.name + f".tmp{os.getpid()}")
    log(f"writing dataset {d.name} (write_dataset)")
    t0 = time.monotonic()
    counts = write_dataset(spec, tmp)
    counts["write_seconds"] = round(time.monotonic() - t0, 1)
    counts["bytes_gz"] = (tmp / "cdrs.jsonl.gz").stat().st_size
    (tmp / "meta.json").write_text(json.dumps(counts, indent=1))
    os.replace(tmp, d)
    log(f"{counts['records']:,} records in {counts['write_seconds']} s "
        f"({counts['records'] / counts['write_seconds']:,.0f}/s), {counts['bytes_gz'] / 2**20:.0f} MiB gz")
    return d, counts


# ------------------------------------------------------------------------------------------------
# core

class _NoopDetector:
    """Stands in for Detector to time the Pipeline layer alone."""
    last_result = "ok"
    last_score = None

    def on_record(self, rec, facts=None, offset: int = -1) -> list:
        return []


def bench_core(args, cfg: dict, m: dict) -> dict:
    header("core", m)
    pinned = pin(args.cpu)
    spec = GeneratorSpec(subscribers=args.subscribers, hours=args.hours, seed=args.seed)
    log(f"generating and parsing {args.records:,} records ({spec})")
    t0 = time.monotonic()
    recs = [parse_cdr(r) for r in itertools.islice(generate_records(spec), args.records)]
    profiles = [parse_profile(p) for p in generate_profiles(spec)]
    prep_s = time.monotonic() - t0
    if len(recs) < args.records:
        log(f"only {len(recs):,} records in {args.hours} h; raise --hours")
    n = len(recs)
    span_h = (recs[-1].ts - recs[0].ts) / HOUR_MS
    log(f"input ready in {prep_s:.0f} s: {n:,} records over {span_h:.1f} h of event time, "
        f"{len({r.msisdn for r in recs}):,} distinct numbers, {len(profiles):,} profiles")
    # The pre-parsed input is not detector state: keep the collector from rescanning it.
    gc.collect()
    if not args.no_gc_freeze:
        gc.freeze()

    def fresh_detector() -> Detector:
        d = Detector(cfg)
        for p in profiles:
            d.on_profile(p)
        return d

    # The three layers advance through the same records in interleaved chunks (rotating which goes
    # first), each with its own state, so that load from other processes on this shared machine
    # falls on all three alike; each still sees every record in order, as in a sequential run.
    out: dict = {}
    runs = {"pipeline": [], "detector": [], "enricher": []}
    for rep in range(args.repeat):
        pipeline = Pipeline(fresh_detector())
        targets = {"pipeline": pipeline.process, "detector": fresh_detector().on_record,
                   "enricher": Enricher(cfg).facts}
        acc = {k: [0.0, 0.0] for k in targets}
        names = list(targets)
        wait_quiet(WAIT["threshold"], WAIT["max_s"])
        la0 = loadavg()
        for ci, start in enumerate(range(0, n, args.chunk)):
            chunk = recs[start:start + args.chunk]
            for name in names[ci % 3:] + names[:ci % 3]:
                f = targets[name]
                c0, w0 = time.process_time(), time.perf_counter()
                for r in chunk:
                    f(r)
                w1, c1 = time.perf_counter(), time.process_time()
                acc[name][0] += w1 - w0
                acc[name][1] += c1 - c0
            if ci % 10 == 9:
                log(f"pass {rep + 1}: {start + len(chunk):,} records; " + ", ".join(
                    f"{k} {(start + len(chunk)) / v[0]:,.0f}/s" for k, v in acc.items()))
        for k, (w, c) in acc.items():
            runs[k].append({"wall_s": w, "cpu_s": c, "load_before": la0, "load_after": loadavg()})
            log(f"{k} pass {rep + 1}: {n / w:,.0f} records/s wall, {n / c:,.0f} per CPU-s")
        # the Pipeline layer on its own: Pipeline.process over a detector that does nothing
        noop = Pipeline(_NoopDetector())
        c0, w0 = time.process_time(), time.perf_counter()
        for r in recs:
            noop.process(r)
        w1, c1 = time.perf_counter(), time.process_time()
        runs.setdefault("pipeline_layer_only", []).append({"wall_s": w1 - w0, "cpu_s": c1 - c0})
        out["counts"] = dict(pipeline.counts)
        out["actions"] = {"/".join(k): v for k, v in sorted(pipeline.actions.items())}
        out["numbers_tracked"] = pipeline.detector.numbers_tracked()
        del targets, pipeline
        gc.collect()
    layers = {}
    for k, rs in runs.items():
        w = min(r["wall_s"] for r in rs)  # best pass by wall time and, separately, by CPU time
        c = min(r["cpu_s"] for r in rs)
        layers[k] = {"runs": rs, "records": n, "wall_s": w, "cpu_s": c, "records_per_s": n / w,
                     "records_per_cpu_s": n / c, "us_per_record": w / n * 1e6}

    prof = None
    if args.profile_records:
        pn = min(args.profile_records, n)
        log(f"cProfile over Pipeline.process, first {pn:,} records")
        p = Pipeline(fresh_detector())
        proc = p.process
        sub = recs[:pn]
        pr = cProfile.Profile()
        pr.enable()
        for r in sub:
            proc(r)
        pr.disable()
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        pr.dump_stats(str(BENCH_DIR / "core.prof"))
        prof = hot_spots(pr, args.top)
        prof["records"] = pn
        prof["pstats_file"] = os.path.relpath(BENCH_DIR / "core.prof", ROOT)
    gc.unfreeze()

    pl, dt, en = layers["pipeline"], layers["detector"], layers["enricher"]
    us_cpu = lambda x: x["cpu_s"] / n * 1e6  # noqa: E731
    rows = [
        ("Pipeline(Detector).process", fmt(pl["records_per_s"], "rec/s"), fmt(pl["records_per_cpu_s"], "rec/CPU-s"),
         f"{pl['us_per_record']:.1f} µs", f"{us_cpu(pl):.1f} µs"),
        ("Detector.on_record", fmt(dt["records_per_s"], "rec/s"), fmt(dt["records_per_cpu_s"], "rec/CPU-s"),
         f"{dt['us_per_record']:.1f} µs", f"{us_cpu(dt):.1f} µs"),
        ("  of which Enricher.facts (alone)", fmt(en["records_per_s"], "rec/s"), fmt(en["records_per_cpu_s"], "rec/CPU-s"),
         f"{en['us_per_record']:.1f} µs", f"{us_cpu(en):.1f} µs"),
        ("Pipeline layer alone (over a no-op detector)", fmt(layers["pipeline_layer_only"]["records_per_s"], "rec/s"), "",
         f"{layers['pipeline_layer_only']['us_per_record']:.2f} µs", f"{us_cpu(layers['pipeline_layer_only']):.2f} µs"),
        ("Engine + dedupe = Detector - Enricher", "", "", f"{dt['us_per_record'] - en['us_per_record']:.1f} µs",
         f"{us_cpu(dt) - us_cpu(en):.1f} µs"),
    ]
    print(f"\n{n:,} pre-parsed records, {pinned}, gc.freeze() of the input: {not args.no_gc_freeze}, "
          f"layers interleaved in chunks of {args.chunk:,}, best of {args.repeat} pass(es)")
    print(table(rows, ("layer", "wall rate", "CPU rate", "wall/record", "CPU/record")))
    print(f"decisions: {out.get('actions')}; numbers tracked {out.get('numbers_tracked'):,}")
    ok = pl["records_per_s"] >= TARGETS["core_records_per_s"]
    print(f"target ≥ {TARGETS['core_records_per_s']:,} records/s on one core: {verdict(ok)} "
          f"({pl['records_per_s']:,.0f}, {pl['records_per_s'] / TARGETS['core_records_per_s']:.0%} of target)")
    if prof:
        print(f"\ncProfile, {prof['records']:,} records through Pipeline.process "
              f"(profiled total {prof['total_s']:.1f} s; shares are of that total):")
        print(table([(r["function"], f"{r['tottime_share']:.1%}", f"{r['cumtime_share']:.1%}", fmt(r["calls"]))
                     for r in prof["top_tottime"]], ("function (by own time)", "own", "cumulative", "calls")))
        print(table([(r["function"], f"{r['cumtime_share']:.1%}", f"{r['tottime_share']:.1%}", fmt(r["calls"]))
                     for r in prof["stages"]], ("stage (cumulative)", "cumulative", "own", "calls")))
    return {"machine": m, "command": command_line(), "pinning": pinned, "gc_freeze_input": not args.no_gc_freeze,
            "spec": {"subscribers": args.subscribers, "hours": args.hours, "seed": args.seed},
            "records": n, "event_time_span_h": round(span_h, 2), "prep_seconds": round(prep_s, 1),
            "interleaved_chunk": args.chunk,
            "layers": layers, "decisions": out.get("actions"), "counts": out.get("counts"),
            "numbers_tracked": out.get("numbers_tracked"), "profile": prof,
            "target": {"records_per_s": TARGETS["core_records_per_s"], "measured": pl["records_per_s"], "met": ok}}


STAGES = {  # functions of detector/ whose cumulative share says where a record's time goes
    "process", "on_record", "facts", "observe", "update_mo", "update_mt", "raw_features", "evidence",
    "score", "observe_population", "_score", "_review_suspended", "seen_before", "engine",
    "callback_share", "province_spread", "_remember_contact", "_sweep", "sweep", "handset_lines",
    "cell_lines", "real_imei", "_real_imei", "_bypass_like", "_decay_to", "partition_of",
}


def hot_spots(pr, top: int) -> dict:
    """Top functions by own time, and the detector's stages by cumulative time, from a
    cProfile.Profile or a pstats file."""
    st = pstats.Stats(pr if isinstance(pr, cProfile.Profile) else str(pr), stream=io.StringIO())
    total = st.total_tt
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():
        rows.append({"function": f"{_short(file)}:{line}({func})", "file": file, "func": func, "calls": nc,
                     "tottime_s": tt, "cumtime_s": ct, "tottime_share": tt / total, "cumtime_share": ct / total})
    by_tt = sorted(rows, key=lambda r: -r["tottime_s"])[:top]
    stages = [r for r in rows if (r["func"] in STAGES or r["file"].endswith(("daemon.py", "state.py")))
              and f"{os.sep}detector{os.sep}" in r["file"]]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("file", "func")}  # noqa: E731
    seen = set()
    uniq = []
    for r in stages:
        if r["function"] not in seen:
            seen.add(r["function"])
            uniq.append(strip(r))
    return {"total_s": total, "top_tottime": [strip(r) for r in by_tt],
            "stages": sorted(uniq, key=lambda r: -r["cumtime_s"])}


def _short(path: str) -> str:
    if path.startswith("~") or path.startswith("<"):
        return path
    p = Path(path)
    for anchor in ("detector", "site-packages"):
        if anchor in p.parts:
            i = p.parts.index(anchor)
            return "/".join(p.parts[i + (anchor == "site-packages"):])
    return p.name


# ------------------------------------------------------------------------------------------------
# daemon-work

def _apply_shared_before(enricher, key: bytes, value: bytes | None) -> None:
    """The daemon's loop over the shared topic before `state.apply_shared` (c9b6a95), for A/Bs."""
    from detector import state
    kind, _, rest = key.decode().partition("|")
    if kind != "w":
        thing, _, msisdn = rest.rpartition("|")
        enricher.merge(kind, thing, msisdn, state.decode_pair(value) if value else None)


POLL_BATCH = 2000  # kafka.max_poll_records: the daemon publishes per-record metrics after each batch


def bench_daemon_work(args, cfg: dict, m: dict) -> dict:
    from detector import state
    from detector.metrics import Metrics

    header("daemon-work", m)
    ds, _ = dataset(args.subscribers, args.hours, args.seed)
    pinned = pin(args.cpu)
    raws = [line for _, line in itertools.islice(iter_lines(ds / "cdrs.jsonl.gz"), args.records)]
    profiles = [parse_profile(line) for _, line in iter_lines(ds / "subscribers.jsonl")]
    n = len(raws)
    gc.collect()
    gc.freeze()  # the raw input is not daemon state
    best = None
    for rep in range(args.repeat):
        det = Detector(cfg, partitions=int(cfg["kafka"]["partitions"]), track_changes=True)
        for prof in profiles:
            det.on_profile(prof)
        pipe = Pipeline(det, Metrics())
        publish = getattr(pipe, "publish_metrics", lambda: None)  # (an A/B against a tree without it)
        apply_shared = getattr(state, "apply_shared", _apply_shared_before)
        # another daemon of the group, which reads every pair this one publishes (not its own work:
        # timed apart, per pair, for what scaling out costs)
        reader = Detector(cfg, partitions=int(cfg["kafka"]["partitions"])).enricher
        t = {"parse": 0.0, "process": 0.0, "changelog": 0.0, "shared": 0.0}
        merge_s = 0.0
        pairs = 0
        sends = 0
        wait_quiet(WAIT["threshold"], WAIT["max_s"])
        c0 = time.process_time()
        for start in range(0, n, args.commit_records):
            t0 = time.perf_counter()
            recs = [parse_cdr(raw) for raw in raws[start:start + args.commit_records]]
            t1 = time.perf_counter()
            for off, rec in enumerate(recs, start):
                pipe.process_at(rec, off)
                if off % POLL_BATCH == POLL_BATCH - 1:
                    publish()  # as the daemon does after each polled batch
            publish()
            t2 = time.perf_counter()
            for p in list(det.engines):
                sends += len(state.drain_changes(det, p, {"records": start + len(recs)}))
            t3 = time.perf_counter()
            published = state.shared_changes(det)
            sends += len(published)
            t4 = time.perf_counter()
            c1 = time.process_time()
            for _, key, value in published:
                apply_shared(reader, key, value)
            merge_s += time.perf_counter() - t4
            pairs += len(published)
            c0 += time.process_time() - c1  # the reader's work is not this daemon's
            t["parse"] += t1 - t0
            t["process"] += t2 - t1
            t["changelog"] += t3 - t2
            t["shared"] += t4 - t3
        cpu = time.process_time() - c0
        wall = sum(t.values())
        run = {"records": n, "wall_s": wall, "cpu_s": cpu, "records_per_s": n / wall, "sends": sends,
               "sends_per_record": sends / n, "us_per_record": {k: v / n * 1e6 for k, v in t.items()},
               "pairs_per_record": pairs / n, "merge_us_per_pair": merge_s / pairs * 1e6 if pairs else None,
               "counts": dict(pipe.counts)}
        log(f"pass {rep + 1}: {n / wall:,.0f} records/s; " + ", ".join(
            f"{k} {v:.1f} µs" for k, v in run["us_per_record"].items()) + f"; {sends / n:.2f} sends/record; "
            f"another daemon merges the {pairs / n:.2f} pairs/record at {run['merge_us_per_pair']:.1f} µs each")
        if best is None or wall < best["wall_s"]:
            best = run
        del det, pipe
        gc.collect()
    gc.unfreeze()
    print()
    print(table([(k, f"{v:.1f} µs") for k, v in best["us_per_record"].items()] +
                [("total", f"{best['wall_s'] / n * 1e6:.1f} µs"), ("records/s", f"{best['records_per_s']:,.0f}"),
                 ("sends the daemon would make, per record", f"{best['sends_per_record']:.2f}")],
                ("stage (per input record)", "cost")))
    print(f"best of {args.repeat} pass(es) over {n:,} records of {ds.name}, commit every {args.commit_records:,}; "
          f"{pinned}")
    # Scaling out: N daemons split the partitions, and each also merges the pairs the other N - 1
    # publish (every daemon reads the whole shared topic), so per record of its own it does its
    # own work plus (N - 1) x pairs/record merges. Kafka clients' costs come on top of both.
    own_us = best["wall_s"] / n * 1e6
    merge_us = best["pairs_per_record"] * (best["merge_us_per_pair"] or 0.0)
    scale = []
    for k in (1, 2, 4, 8, 16):
        per_own = own_us + (k - 1) * merge_us
        scale.append({"daemons": k, "us_per_own_record": per_own, "group_records_per_s": k * 1e6 / per_own})
    ceiling = 1e6 / merge_us if merge_us else None
    print(f"\nanother daemon merges these pairs at {best['merge_us_per_pair']:.2f} µs each, "
          f"{best['pairs_per_record']:.2f} per record: {merge_us:.1f} µs per record of the others")
    print(table([(str(x["daemons"]), f"{x['us_per_own_record']:.1f} µs", f"{x['group_records_per_s']:,.0f}")
                 for x in scale], ("daemons in the group", "work per own record", "group's records/s at most")))
    if ceiling:
        print(f"however many daemons: at most {ceiling:,.0f} records/s for the group (each merges every pair)")
    return {"dataset": ds.name, "commit_records": args.commit_records, "pinned": pinned, "best": best,
            "scale_out": scale, "scale_out_ceiling_records_per_s": ceiling,
            "command": command_line(), "machine": m}


# ------------------------------------------------------------------------------------------------
# backtest

def bench_rest_cycle(args, cfg: dict, m: dict) -> dict:
    header("rest-cycle", m)
    pinned = pin(args.cpu)
    spec = GeneratorSpec(subscribers=args.subscribers, hours=args.hours, seed=args.seed)
    recs = [parse_cdr(r) for r in itertools.islice(generate_records(spec), args.records)]
    det = Detector(cfg)
    for rec in recs:
        det.on_record(rec)
    stores = [eng.numbers for eng in det.engines.values()]
    before = {m: s.packed(m) for s in stores for m in s.rows}
    del recs
    gc.collect()
    to_rest, back = [], []
    for _ in range(args.repeat):
        wait_quiet(WAIT["threshold"], WAIT["max_s"])
        t0 = time.perf_counter()
        n = sum(s.rest(1 << 62) for s in stores)  # every number in use, as the sweep does the quiet ones
        t1 = time.perf_counter()
        for s in stores:
            for msisdn in list(s.cold):
                s.get(msisdn)  # back in a row, as its next record takes it
        t2 = time.perf_counter()
        to_rest.append((t1 - t0) / n * 1e9)
        back.append((t2 - t1) / n * 1e9)
    lossless = all(s.packed(m) == before[m] for s in stores for m in s.rows) and len(before) == n
    print(table([("to rest (NumberStore.rest, per number)", f"{min(to_rest):,.0f} ns", f"{max(to_rest):,.0f} ns"),
                 ("back from rest (NumberStore.get)", f"{min(back):,.0f} ns", f"{max(back):,.0f} ns")],
                ("per number", "best", "worst")))
    print(f"{n:,} numbers in use, {args.repeat} round(s); {pinned}; every state given back exactly: {lossless}")
    return {"numbers": n, "rounds": args.repeat, "to_rest_ns": min(to_rest), "back_from_rest_ns": min(back),
            "to_rest_ns_all": to_rest, "back_from_rest_ns_all": back, "lossless": lossless, "pinned": pinned}


def bench_profiles(args, cfg: dict, m: dict) -> dict:
    """RSS per subscriber profile held: a carrier holds one for every subscriber, tracked or not."""
    header("profiles", m)
    spec = GeneratorSpec(subscribers=args.subscribers, hours=1, seed=args.seed)
    raws = [orjson.dumps(p) for p in generate_profiles(spec)]  # as they come off the profile topic
    det = Detector(cfg)
    gc.collect()
    r0 = rss_bytes()
    t0 = time.perf_counter()
    for raw in raws:
        det.on_profile(parse_profile(raw))
    load_s = time.perf_counter() - t0
    gc.collect()
    per_profile = (rss_bytes() - r0) / len(raws)
    step = max(1, len(raws) // 10_000)  # a sample, each given back as it was parsed
    lossless = all(det.engine(p.msisdn).profiles.get(p.msisdn) == p
                   for p in (parse_profile(raw) for raw in raws[::step]))
    print(table([("RSS per profile held (msisdn included)", f"{per_profile:,.0f} B"),
                 ("parse + hold, per profile", f"{load_s / len(raws) * 1e6:.2f} µs")], ("per profile", "")))
    print(f"{len(raws):,} profiles in {len(det.engines)} engine(s); every sampled profile given back equal: {lossless}")
    return {"profiles": len(raws), "rss_bytes_per_profile": per_profile, "load_us_per_profile": load_s / len(raws) * 1e6,
            "lossless": lossless}


def bench_backtest(args, cfg: dict, m: dict) -> dict:
    header("backtest", m)
    ds, counts = dataset(args.subscribers, args.hours, args.seed)
    cdrs, subs = ds / "cdrs.jsonl.gz", ds / "subscribers.jsonl"
    pinned = pin(args.cpu)
    n_expected = counts["records"]

    def floor(label: str, fn) -> dict:
        gc.collect()
        wait_quiet(WAIT["threshold"], WAIT["max_s"])
        la0 = loadavg()
        c0, w0 = time.process_time(), time.perf_counter()
        n = fn()
        w1, c1 = time.perf_counter(), time.process_time()
        log(f"floor {label}: {n:,} in {w1 - w0:.1f} s ({n / (w1 - w0):,.0f}/s)")
        return {"records": n, "wall_s": w1 - w0, "cpu_s": c1 - c0, "records_per_s": n / (w1 - w0),
                "load_before": la0, "load_after": loadavg()}

    def read_only():
        n = 0
        for _ in iter_lines(cdrs):
            n += 1
        return n

    def read_decode():
        loads = orjson.loads
        n = 0
        for _, line in iter_lines(cdrs):
            loads(line)
            n += 1
        return n

    def read_parse():
        n = 0
        for _, line in iter_lines(cdrs):
            parse_cdr(line)
            n += 1
        return n

    def read_parse_order():
        from detector.backtest import ordered_records
        p = Pipeline(Detector(cfg))
        n = 0
        for _ in ordered_records(p, iter_lines(cdrs)):
            n += 1
        return n

    read_only()  # warm the page cache: every pass below reads the file from memory
    floors = {"read": floor("read (gzip + lines)", read_only),
              "read_decode": floor("read + orjson.loads", read_decode),
              "read_parse": floor("read + parse_cdr", read_parse),
              "read_parse_order": floor("read + parse_cdr + event-time order (backtest input path)",
                                        read_parse_order)}

    out = BENCH_DIR / "backtest-events.jsonl"
    cmd = cli_cmd() + ["backtest", "--cdrs", str(cdrs), "--subscribers", str(subs), "--out", str(out), "--quiet"]
    cpu = args.cpu
    log("running: " + " ".join(shlex.quote(c) for c in cmd))
    wait_quiet(WAIT["threshold"], WAIT["max_s"])
    la0 = loadavg()
    ru0 = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None and cpu >= 0 else None)
    wall = time.perf_counter() - t0
    ru1 = os.times()
    child_cpu = (ru1.children_user - ru0.children_user) + (ru1.children_system - ru0.children_system)
    if proc.returncode != 0:
        raise SystemExit(f"backtest failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    first = proc.stdout.splitlines()[0] if proc.stdout else ""
    internal = None
    try:  # "N records in X s (R records/s); ..."
        internal = float(first.split(" records in ")[1].split(" s ")[0])
    except (IndexError, ValueError):
        pass
    bt = {"command": " ".join(shlex.quote(c) for c in cmd), "wall_s": wall, "cpu_s": child_cpu,
          "records_per_s": n_expected / wall, "internal_loop_s": internal, "stdout_first_line": first,
          "decisions_line": (proc.stdout.splitlines()[1] if len(proc.stdout.splitlines()) > 1 else ""),
          "load_before": la0, "load_after": loadavg(), **backtest_state(proc.stdout)}
    log(f"backtest: {wall:.1f} s wall ({n_expected / wall:,.0f} records/s); {first}")

    ratio = wall / floors["read_decode"]["wall_s"]
    ratio_parse = wall / floors["read_parse"]["wall_s"]
    ratio_cpu = child_cpu / floors["read_decode"]["cpu_s"]
    rows = [(label, fmt(f["records_per_s"], "rec/s"), fmt(f["records"] / f["cpu_s"], "rec/CPU-s"), f"{f['wall_s']:.1f} s",
             f"{wall / f['wall_s']:.1f}×", f"{child_cpu / f['cpu_s']:.1f}×")
            for label, f in (("read (gzip + split lines)", floors["read"]),
                             ("read + orjson.loads  [the floor]", floors["read_decode"]),
                             ("read + parse_cdr", floors["read_parse"]),
                             ("read + parse_cdr + event-time order", floors["read_parse_order"]))]
    rows.append(("cdr-detector backtest --quiet (subprocess)", fmt(bt["records_per_s"], "rec/s"),
                 fmt(n_expected / child_cpu, "rec/CPU-s"), f"{wall:.1f} s", "1.0×", "1.0×"))
    if internal:
        rows.append(("  of which its record loop (own report)", fmt(n_expected / internal, "rec/s"), "",
                     f"{internal:.1f} s", "", ""))
    print(f"\n{n_expected:,} records, {counts['subscribers']:,} subscribers, {cdrs.stat().st_size / 2**20:.0f} MiB "
          f"gzip ({os.path.relpath(cdrs, ROOT)}); {pinned}")
    print(table(rows, ("pass over the file", "wall rate", "CPU rate", "wall", "backtest/this wall", "CPU")))
    if bt.get("numbers_tracked"):
        print(f"at the end: {bt['numbers_tracked']:,} numbers tracked; the backtest's peak RSS {bt['peak_rss_mib']:,.0f} MiB "
              f"({bt['peak_rss_mib'] * 2**20 / bt['numbers_tracked']:,.0f} B per tracked number, with the "
              f"{counts['subscribers']:,} profiles, the interpreter and its libraries)")
    ok = ratio <= TARGETS["backtest_over_floor"]
    print(f"target backtest within {TARGETS['backtest_over_floor']:.0f}× of read+decode: {verdict(ok)} ({ratio:.1f}× wall, "
          f"{ratio_cpu:.1f}× CPU; {ratio_parse:.1f}× of read+parse_cdr)")
    return {"machine": m, "command": command_line(), "pinning": pinned, "dataset": os.path.relpath(ds, ROOT),
            "dataset_counts": {k: counts[k] for k in ("records", "subscribers", "fraud_lines", "bytes_gz", "write_seconds")
                               if k in counts},
            "floors": floors, "backtest": bt, "ratio_backtest_over_read_decode": ratio,
            "ratio_backtest_over_read_parse": ratio_parse, "ratio_cpu_backtest_over_read_decode": ratio_cpu,
            "target": {"max_ratio": TARGETS["backtest_over_floor"], "measured": ratio, "met": ok}}


def backtest_state(stdout: str) -> dict:
    """Numbers tracked and peak RSS from `cdr-detector backtest`'s "state:" line ({}: none)."""
    m = re.search(r"^state: ([\d,]+) numbers tracked, ([\d,]+) handsets and ([\d,]+) cells indexed; "
                  r"peak RSS ([\d,]+) MiB", stdout, re.M)
    if not m:
        return {}
    n, h, c, rss = (int(g.replace(",", "")) for g in m.groups())
    return {"numbers_tracked": n, "handsets_indexed": h, "cells_indexed": c, "peak_rss_mib": rss}


# ------------------------------------------------------------------------------------------------
# e2e

def proc_cpu(pid: int | None) -> float | None:
    """utime + stime of a process (all its threads), seconds."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def broker_pid() -> int | None:
    try:
        return int((ROOT / "var" / "kafka" / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def msum(sample: dict, name: str) -> float:
    return sum(v for (n, _), v in sample.items() if n == name)


def buckets(sample: dict, name: str) -> list[tuple[float, float]]:
    out = []
    for (n, labels), v in sample.items():
        if n == name + "_bucket":
            le = dict(labels)["le"]
            out.append((float("inf") if le == "+Inf" else float(le), v))
    return sorted(out)


def hist_quantile(b0: list, b1: list, q: float) -> tuple[float | None, int]:
    """Quantile of the observations between two scrapes of a histogram (linear within a bucket,
    like PromQL histogram_quantile); returns (value, count). inf: beyond the last finite bucket."""
    prev = dict(b0)
    b = [(le, c - prev.get(le, 0.0)) for le, c in b1]
    total = b[-1][1] if b else 0
    if total <= 0:
        return None, 0
    rank = q * total
    lo, lo_c = 0.0, 0.0
    for le, c in b:
        if c >= rank:
            if le == float("inf"):
                return float("inf"), int(total)
            return lo + (le - lo) * (rank - lo_c) / max(c - lo_c, 1e-12), int(total)
        lo, lo_c = le, c
    return None, int(total)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def e2e_start_ts(hours: float) -> int:
    """The generator's default start shifted by whole days so that the data ends in the past
    (over an hour ago): live records stamped with the wall clock then come after it in event time."""
    now = int(time.time() * 1000)
    k = (now - HOUR_MS - int(hours * HOUR_MS) - DEFAULT_START_TS) // DAY_MS
    return DEFAULT_START_TS + k * DAY_MS


def bench_e2e(args, cfg0: dict, m: dict) -> dict:
    header("e2e", m)
    from kafka import KafkaAdminClient

    from detector import kafka_io

    ds, counts = dataset(args.subscribers, args.hours, args.seed, e2e_start_ts(args.hours))
    cdrs, subs = ds / "cdrs.jsonl.gz", ds / "subscribers.jsonl"
    n = min(args.records, counts["records"])
    run_id = f"bench-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    port = free_port()
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("CDR_DETECTOR__"):
            del env[k]
    env.update({
        "CDR_DETECTOR__KAFKA__TOPICS__RECORDS": f"{run_id}.records",
        "CDR_DETECTOR__KAFKA__TOPICS__SUBSCRIBERS": f"{run_id}.subscribers",
        "CDR_DETECTOR__KAFKA__TOPICS__OUTCOMES": f"{run_id}.outcomes",
        "CDR_DETECTOR__KAFKA__TOPICS__SUSPENSIONS": f"{run_id}.suspensions",
        "CDR_DETECTOR__KAFKA__TOPICS__DLQ": f"{run_id}.dlq",
        "CDR_DETECTOR__KAFKA__GROUP_ID": run_id,
        "CDR_DETECTOR__METRICS__PORT": str(port),
    })
    if args.bootstrap_servers:
        env["CDR_DETECTOR__KAFKA__BOOTSTRAP_SERVERS"] = args.bootstrap_servers
    if args.producer_backend:
        env["CDR_DETECTOR__KAFKA__PRODUCER_BACKEND"] = args.producer_backend
    if args.consumer_backend:
        env["CDR_DETECTOR__KAFKA__CONSUMER_BACKEND"] = args.consumer_backend
    cfg = config_mod.load(environ=env)
    k = cfg["kafka"]
    log(f"producer backend (replay and daemon): {k.get('producer_backend', 'kafka-python')}; "
        f"consumer backend (daemon and the floor below): {k.get('consumer_backend', 'kafka-python')}")
    topics = kafka_io.topic_names(k)
    host, _, p = str(k["bootstrap_servers"]).split(",")[0].partition(":")
    try:
        socket.create_connection((host, int(p or 9092)), timeout=2).close()
    except OSError:
        raise SystemExit(f"no Kafka broker at {k['bootstrap_servers']}: start one with scripts/kafka-local.sh start")
    result: dict = {"machine": m, "command": command_line(), "run_id": run_id, "dataset": os.path.relpath(ds, ROOT),
                    "dataset_records": counts["records"], "records": n, "partitions": int(k["partitions"]),
                    "topics": topics, "producer_backend": k.get("producer_backend", "kafka-python"),
                    "consumer_backend": k.get("consumer_backend", "kafka-python")}
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    daemon = None
    dprof = None
    try:
        # 1. replay at max rate into fresh topics
        cmd = cli_cmd() + ["replay", "--cdrs", str(cdrs), "--subscribers", str(subs), "--limit", str(n)]
        log(f"replaying {n:,} records into {topics['records']} (" + " ".join(shlex.quote(c) for c in cmd[1:]) + ")")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        replay_s = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"replay failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        rc = json.loads(proc.stdout.strip().splitlines()[-1])
        result["replay"] = {"command": " ".join(shlex.quote(c) for c in cmd), "wall_s": replay_s, "counts": rc,
                            "records_per_s": rc["records"] / max(rc["seconds"], 1e-9)}
        log(f"replay: {rc} in {replay_s:.1f} s wall")

        # 2. the I/O floor: a plain consumer of the chosen backend (kafka_io.consumer: KafkaConsumer
        #    or ConfluentConsumer) reading the records topic, then the same + parse_cdr
        result["consumer_floor"] = consume_floor(k, topics["records"], n, parse=False)
        result["consumer_parse_floor"] = consume_floor(k, topics["records"], n, parse=True)

        # 3. the daemon drains the backlog
        dlog = BENCH_DIR / f"e2e-{run_id}-daemon.log"
        dcmd = cli_cmd() + ["run", "--plain-logs", "--log-level", args.log_level]
        dprof = None
        if args.profile_daemon:  # cProfile slows the daemon: its rates are not the figures
            dprof = BENCH_DIR / f"e2e-{run_id}-daemon.prof"
            dcmd = [sys.executable, "-m", "cProfile", "-o", str(dprof), "-m", "detector.cli",
                    "run", "--plain-logs", "--log-level", args.log_level]
        log(f"starting daemon: {' '.join(dcmd[1:])} (metrics :{port}, log {os.path.relpath(dlog, ROOT)})")
        fh = open(dlog, "w")
        t_spawn = time.monotonic()
        daemon = subprocess.Popen(dcmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        samples = []
        first_t = None
        deadline = t_spawn + args.timeout
        la0 = loadavg()
        bpid = broker_pid()
        cpu0 = None
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                raise SystemExit(f"daemon exited with {daemon.returncode}; see {dlog}")
            try:
                s = scrape(port)
            except OSError:
                time.sleep(0.2)
                continue
            t = time.monotonic()
            recs = msum(s, "cdr_detector_records_total")
            lag = msum(s, "cdr_detector_consumer_lag_records")
            samples.append({"t": t - t_spawn, "records": recs, "lag": lag,
                            "numbers": msum(s, "cdr_detector_numbers_tracked")})
            if recs > 0 and first_t is None:
                first_t = t - t_spawn
                cpu0 = (recs, proc_cpu(daemon.pid), proc_cpu(bpid), t)
            if recs >= n:
                cpu1 = (recs, proc_cpu(daemon.pid), proc_cpu(bpid), t)
                break
            time.sleep(args.sample_interval)
        else:
            raise SystemExit(f"daemon did not process {n:,} records within {args.timeout} s")
        result["drain"] = drain_stats(samples, n, first_t)
        if cpu0 and cpu0[1] is not None and cpu1[1] is not None:
            dr, dtw = cpu1[0] - cpu0[0], cpu1[3] - cpu0[3]
            result["drain"]["cpu"] = {
                "records": dr, "wall_s": dtw, "daemon_cpu_s": cpu1[1] - cpu0[1],
                "daemon_cores_busy": (cpu1[1] - cpu0[1]) / dtw,
                "daemon_records_per_cpu_s": dr / max(cpu1[1] - cpu0[1], 1e-9),
                "broker_cpu_s": (cpu1[2] - cpu0[2]) if cpu0[2] is not None and cpu1[2] is not None else None}
        result["drain"]["load_before"] = la0
        result["drain"]["load_after"] = loadavg()
        d = result["drain"]
        log(f"drain: {d['records_per_s']:,.0f} records/s overall, {d['steady_records_per_s']:,.0f} steady "
            f"(10%..90%), first record after {first_t:.1f} s")
        time.sleep(2 * float(k.get("commit_interval_ms", 1000)) / 1000 + 0.5)  # let it commit and go idle

        # 4. live phase: paced production, records stamped with the wall clock at send
        rate = args.live_rate or max(50, int(round(d["steady_records_per_s"] * args.live_fraction, -1)))
        result["live"] = live_phase(k, topics, port, cdrs, n, rate, args.live_seconds, args.sample_interval_live,
                                    counts["records"])
        lv = result["live"]
        log(f"live: offered {lv['offered_rate']:,.0f}/s, achieved {lv['sent_rate']:,.0f}/s; processing delay p50 "
            f"{lv['processing_delay_s']['p50']}, p99 {lv['processing_delay_s']['p99']}")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        if daemon is not None:
            result["daemon_exit_code"] = daemon.returncode
    if args.profile_daemon and dprof is not None and dprof.exists():
        result["daemon_profile"] = hot_spots(dprof, 25)
        result["daemon_profile"]["pstats_file"] = os.path.relpath(dprof, ROOT)
    if "live" in result:
        result["live"]["decision_latency_topic"] = decision_latency_from_topic(
            k, topics["suspensions"], result["live"]["start_ms"])
    if not args.keep_topics:
        admin = KafkaAdminClient(**kafka_io.common(k))
        try:
            admin.delete_topics(list(topics.values()))
            try:
                admin.delete_consumer_groups([run_id])
            except Exception:  # noqa: BLE001 - best effort
                pass
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort
            log(f"could not delete topics: {exc}")
        finally:
            admin.close()
        result["topics_deleted"] = True
    print_e2e(result)
    return result


def consume_floor(k: dict, topic: str, n: int, parse: bool) -> dict:
    from kafka import TopicPartition

    from detector import kafka_io
    c = kafka_io.consumer(k, group=False)
    try:
        parts = sorted(c.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        total = sum(end.values())
        got = 0
        la0 = loadavg()
        c0, t0 = time.process_time(), time.perf_counter()
        while got < total:
            for _tp, msgs in c.poll(timeout_ms=500, max_records=int(k.get("max_poll_records", 2000))).items():
                if parse:
                    for msg in msgs:
                        parse_cdr(msg.value)
                got += len(msgs)
            if time.perf_counter() - t0 > 600:
                break
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        c.close()
    name = consumer_name(k.get("consumer_backend", "kafka-python"))
    label = f"{name} + parse_cdr" if parse else f"{name} (no processing)"
    log(f"{label}: {got:,} in {wall:.1f} s ({got / wall:,.0f}/s)")
    return {"records": got, "wall_s": wall, "cpu_s": cpu, "records_per_s": got / wall, "load_before": la0,
            "load_after": loadavg()}


def consumer_name(backend: str) -> str:
    return "ConfluentConsumer (librdkafka)" if backend == "confluent" else "KafkaConsumer"


def drain_stats(samples: list[dict], n: int, first_t: float) -> dict:
    end = next(s for s in samples if s["records"] >= n)
    t_first = next(s["t"] for s in samples if s["records"] > 0)
    before = [s for s in samples if s["records"] == 0]
    t_zero = before[-1]["t"] if before else 0.0
    # the first record was processed between the last zero sample and the first non-zero one
    t_start = (t_zero + t_first) / 2

    def cross(frac):
        target = frac * n
        prev = None
        for s in samples:
            if s["records"] >= target:
                if prev is None or s["records"] == prev["records"]:
                    return s["t"]
                return prev["t"] + (s["t"] - prev["t"]) * (target - prev["records"]) / (s["records"] - prev["records"])
            prev = s
        return samples[-1]["t"]
    t10, t90 = cross(0.1), cross(0.9)
    windows = []
    for a, b in zip(samples, samples[1:]):
        if b["t"] > a["t"]:
            windows.append((b["records"] - a["records"]) / (b["t"] - a["t"]))
    # a compact time series (about 12 rows) of records processed, rate and lag
    series = []
    step = max(1, len(samples) // 12)
    for i in range(0, len(samples), step):
        s = samples[i]
        j = min(len(samples) - 1, i + step)
        s2 = samples[j]
        r = (s2["records"] - s["records"]) / (s2["t"] - s["t"]) if s2["t"] > s["t"] else 0.0
        series.append({"t": round(s["t"], 1), "records": int(s["records"]), "rate": round(r), "lag": int(s["lag"])})
    if series[-1]["t"] != round(end["t"], 1):
        series.append({"t": round(end["t"], 1), "records": int(end["records"]), "rate": 0, "lag": int(end["lag"])})
    return {"startup_to_first_record_s": t_start, "end_s": end["t"], "records_per_s": n / (end["t"] - t_start),
            "steady_records_per_s": 0.8 * n / (t90 - t10) if t90 > t10 else None,
            "max_window_records_per_s": max(windows) if windows else None,
            "peak_lag": max(s["lag"] for s in samples), "series": series, "samples": len(samples)}


def live_phase(k: dict, topics: dict, port: int, cdrs: Path, skip: int, rate: int, seconds: float,
               interval: float, available: int) -> dict:
    """Produce records paced at `rate`, each stamped ts = wall clock ms at send (record_id made unique),
    while sampling the daemon's /metrics: processing delay = scrape time - newest processed event
    time; decision latency from its histogram (event time = send time, so it is meaningful here)."""
    from detector import kafka_io
    total = int(rate * seconds)
    if skip + total > available:
        total = available - skip
        log(f"live phase limited to {total:,} records (dataset size)")
    lines = itertools.islice((line for _, line in iter_lines(cdrs)), skip, skip + total)
    prod = kafka_io.producer(k)
    topic = topics["records"]
    s0 = scrape(port)
    base_records = msum(s0, "cdr_detector_records_total")
    delays, lags, series = [], [], []
    sent = 0
    start_wall = time.time()
    start_ms = int(start_wall * 1000)
    t0 = time.monotonic()
    next_scrape = t0 + interval
    dumps, loads = orjson.dumps, orjson.loads
    done_sending = False
    end_send = None
    la0 = loadavg()
    while True:
        now = time.monotonic()
        if not done_sending:
            due = min(total, int((now - t0) * rate))
            while sent < due:
                obj = loads(next(lines))
                obj["ts"] = int(time.time() * 1000)
                obj["record_id"] = f"live-{sent:09d}"
                prod.send(topic, key=obj["msisdn"].encode(), value=dumps(obj))
                sent += 1
            if sent >= total:
                prod.flush()
                done_sending = True
                end_send = time.monotonic()
        if now >= next_scrape:
            next_scrape = now + interval
            try:
                s = scrape(port)
            except OSError:
                s = None
            if s is not None:
                ts_wall = time.time()
                last = msum(s, "cdr_detector_last_record_event_timestamp_seconds")
                processed = msum(s, "cdr_detector_records_total") - base_records
                lag = msum(s, "cdr_detector_consumer_lag_records")
                if processed > 0 and last * 1000 >= start_ms:
                    delays.append(ts_wall - last)
                lags.append(lag)
                series.append({"t": round(now - t0, 2), "sent": sent, "processed": int(processed), "lag": int(lag),
                               "delay_s": round(ts_wall - last, 3) if last * 1000 >= start_ms else None})
                if done_sending and processed >= sent:
                    break
                if done_sending and now - end_send > 120:
                    log("live phase: daemon still behind 120 s after the last send; stopping")
                    break
        time.sleep(0.002)
    prod.close(timeout=30)
    send_s = (end_send or time.monotonic()) - t0
    s1 = scrape(port)
    lat = {}
    for q in (0.5, 0.9, 0.99):
        v, cnt = hist_quantile(buckets(s0, "cdr_detector_decision_latency_seconds"),
                               buckets(s1, "cdr_detector_decision_latency_seconds"), q)
        lat[f"p{int(q * 100)}"] = v
        lat["count"] = cnt
    batch = {}
    for q in (0.5, 0.99):
        v, cnt = hist_quantile(buckets(s0, "cdr_detector_batch_processing_seconds"),
                               buckets(s1, "cdr_detector_batch_processing_seconds"), q)
        batch[f"p{int(q * 100)}"] = v
        batch["count"] = cnt
    bsum = msum(s1, "cdr_detector_batch_processing_seconds_sum") - msum(s0, "cdr_detector_batch_processing_seconds_sum")
    batch["mean"] = bsum / batch["count"] if batch.get("count") else None
    return {"offered_rate": rate, "records": sent, "send_s": send_s, "sent_rate": sent / send_s if send_s else None,
            "start_ms": start_ms, "processing_delay_s": {"samples": len(delays), "p50": pct(delays, 0.5),
                                                         "p90": pct(delays, 0.9), "p99": pct(delays, 0.99),
                                                         "max": max(delays) if delays else None},
            "lag": {"max": max(lags) if lags else None, "p50": pct(lags, 0.5)},
            "decision_latency_histogram_s": lat, "batch_processing_s": batch, "series": series[:: max(1, len(series) // 20)],
            "load_before": la0, "load_after": loadavg()}


def decision_latency_from_topic(k: dict, topic: str, since_ms: int) -> dict:
    """Exact per-decision latency: the suspension event's Kafka timestamp (set when the daemon sent
    it) minus its event time (= when the triggering record was sent, in the live phase)."""
    from kafka import TopicPartition

    from detector import kafka_io
    c = kafka_io.consumer(k, group=False)
    lat = []
    try:
        parts = sorted(c.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        deadline = time.monotonic() + 60
        while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for _tp, msgs in c.poll(timeout_ms=500).items():
                for msg in msgs:
                    ev = orjson.loads(msg.value)
                    if ev["ts"] >= since_ms:
                        lat.append((msg.timestamp - ev["ts"]) / 1000)
    finally:
        c.close()
    return {"decisions": len(lat), "p50": pct(lat, 0.5), "p90": pct(lat, 0.9), "p99": pct(lat, 0.99),
            "max": max(lat) if lat else None}


def print_e2e(r: dict) -> None:
    d, lv = r.get("drain", {}), r.get("live", {})
    cf, cp, rp = r.get("consumer_floor", {}), r.get("consumer_parse_floor", {}), r.get("replay", {})
    print(f"\n{r['records']:,} records replayed into {r['partitions']} partitions (topic {r['topics']['records']}); "
          f"one `cdr-detector run` process; broker, daemon and this script share the {r['machine']['nproc']} cores")
    name = consumer_name(r.get("consumer_backend", "kafka-python"))
    rows = [(f"cdr-detector replay (max rate, {r.get('producer_backend', 'kafka-python')} producer)",
             fmt(rp.get("records_per_s", 0.0), "rec/s"), ""),
            (f"{name}, no processing  [I/O floor]", fmt(cf.get("records_per_s", 0.0), "rec/s"),
             f"{cf.get('records', 0) / max(cf.get('cpu_s', 0), 1e-9):,.0f} per CPU-s of the consumer"),
            (f"{name} + parse_cdr", fmt(cp.get("records_per_s", 0.0), "rec/s"),
             f"{cp.get('records', 0) / max(cp.get('cpu_s', 0), 1e-9):,.0f} per CPU-s of the consumer"),
            ("cdr-detector run: drain, overall", fmt(d.get("records_per_s", 0.0), "rec/s"),
             f"first record {d.get('startup_to_first_record_s', 0):.1f} s after spawn"),
            ("cdr-detector run: drain, 10%..90%", fmt(d.get("steady_records_per_s") or 0.0, "rec/s"),
             f"best {d.get('max_window_records_per_s') or 0:,.0f}/s over one sample"),
            ]
    c = d.get("cpu")
    if c:
        rows.append(("cdr-detector run: records per daemon CPU-second", fmt(c["daemon_records_per_cpu_s"], "rec/s"),
                     f"daemon used {c['daemon_cores_busy']:.2f} cores, broker {c['broker_cpu_s'] or 0:.0f} CPU-s"))
    if r.get("daemon_profile"):
        rows.append(("(daemon ran under cProfile: rates above are slowed by it)", "", ""))
    print(table(rows, ("measurement", "rate", "note")))
    if d.get("series"):
        print("\ndrain over time (from /metrics):")
        print(table([(s["t"], fmt(s["records"]), fmt(s["rate"]), fmt(s["lag"])) for s in d["series"]],
                    ("t (s)", "records done", "rate (rec/s)", "consumer lag")))
    if lv:
        pdl, dl, dt, b = lv["processing_delay_s"], lv["decision_latency_histogram_s"], lv.get("decision_latency_topic", {}), lv["batch_processing_s"]
        s = lambda v: "n/a" if v is None else ("> 600 s" if v == float("inf") else f"{v * 1000:,.0f} ms" if v < 10 else f"{v:,.1f} s")  # noqa: E731
        print(f"\nlive phase: {lv['records']:,} records offered at {lv['offered_rate']:,}/s "
              f"(achieved {lv['sent_rate'] or 0:,.0f}/s), ts = wall clock at send")
        rows = [("processing delay (scrape time - newest processed event time)", s(pdl["p50"]), s(pdl["p99"]),
                 s(pdl["max"]), pdl["samples"]),
                ("decision latency, daemon histogram (wall - event time)", s(dl.get("p50")), s(dl.get("p99")), "",
                 dl.get("count", 0)),
                ("decision latency, suspension topic timestamp - event time", s(dt.get("p50")), s(dt.get("p99")),
                 s(dt.get("max")), dt.get("decisions", 0)),
                ("batch processing time (daemon histogram)", s(b.get("p50")), s(b.get("p99")), "", b.get("count", 0))]
        print(table(rows, ("latency", "p50", "p99", "max", "samples")))
        print(f"consumer lag during the live phase: max {lv['lag']['max']:,.0f}, median {lv['lag']['p50'] or 0:,.0f}")
    dp = r.get("daemon_profile")
    if dp:
        print(f"\ndaemon cProfile (main thread, total {dp['total_s']:.1f} s):")
        print(table([(x["function"], f"{x['tottime_share']:.1%}", f"{x['cumtime_share']:.1%}", fmt(x["calls"]))
                     for x in dp["top_tottime"]], ("function (by own time)", "own", "cumulative", "calls")))
        print(table([(x["function"], f"{x['cumtime_share']:.1%}", f"{x['tottime_share']:.1%}", fmt(x["calls"]))
                     for x in dp["stages"][:25]], ("stage (cumulative)", "cumulative", "own", "calls")))
    ok_t = (d.get("steady_records_per_s") or 0) >= TARGETS["e2e_records_per_s"]
    print(f"target ≥ {TARGETS['e2e_records_per_s']:,} records/s per consumer process: {verdict(ok_t)} "
          f"({d.get('steady_records_per_s') or 0:,.0f}, {(d.get('steady_records_per_s') or 0) / TARGETS['e2e_records_per_s']:.0%})")
    if lv:
        p99 = lv["processing_delay_s"]["p99"]
        ok_l = p99 is not None and p99 < TARGETS["e2e_p99_latency_s"]
        print(f"target p99 latency < {TARGETS['e2e_p99_latency_s']:g} s: {verdict(ok_l)} at {lv['offered_rate']:,}/s offered "
              f"(processing delay p99 {p99 if p99 is None else round(p99, 3)} s)")
        if not ok_t:
            print(f"  (at {TARGETS['e2e_records_per_s']:,}/s offered the daemon, slower than that, falls behind and "
                  f"latency grows without bound)")
        r["target"] = {"records_per_s": TARGETS["e2e_records_per_s"], "measured_records_per_s": d.get("steady_records_per_s"),
                       "throughput_met": ok_t, "p99_latency_s": TARGETS["e2e_p99_latency_s"],
                       "measured_p99_processing_delay_s": p99, "latency_met_at_offered_rate": ok_l,
                       "offered_rate": lv["offered_rate"]}


# ------------------------------------------------------------------------------------------------
# memory

def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _pymalloc_stats() -> dict:
    """pymalloc's arenas, as `sys._debugmallocstats()` prints them to fd 2 (bytes)."""
    import re
    import tempfile

    with tempfile.TemporaryFile(mode="w+b") as f:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    out = {}
    for key, pat in (("arenas", r"# arenas allocated current\s*=\s*([\d,]+)"),
                     ("allocated_blocks", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
                     ("available_blocks", r"# bytes in available blocks\s*=\s*([\d,]+)"),
                     ("unused_pools", r"unused pools \* \d+ bytes\s*=\s*([\d,]+)"),
                     ("arena_bytes", r"arenas \* \d+ bytes/arena\s*=\s*([\d,]+)")):
        hit = re.search(pat, text)
        if hit:
            out[key] = int(hit.group(1).replace(",", ""))
    return out


def allocator_report() -> dict:
    """Where the process's memory sits: glibc's heap (`mallinfo2`: in use, free inside the heap,
    mmapped) and pymalloc's arenas; then RSS after `malloc_trim(0)` hands glibc's free pages back.
    A diagnostic of the memory run: the figure it reports is the RSS before the trim."""
    import ctypes

    out: dict = {"pymalloc": _pymalloc_stats()}
    try:
        libc = ctypes.CDLL("libc.so.6")

        class Mallinfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

        libc.mallinfo2.restype = Mallinfo2
        mi = libc.mallinfo2()
        out["glibc"] = {"heap": mi.arena, "in_use": mi.uordblks, "free_in_heap": mi.fordblks,
                        "mmapped": mi.hblkhd, "mmapped_chunks": mi.hblks, "top_releasable": mi.keepcost}
        before = rss_bytes()
        libc.malloc_trim(0)
        out["rss_before_trim"], out["rss_after_trim"] = before, rss_bytes()
    except (OSError, AttributeError) as e:  # not glibc, or before 2.33
        out["glibc"] = {"error": str(e)}
    return out


def deep_size(root, seen_str: set, count_seen: bool = True) -> int:
    """sys.getsizeof of root and everything it holds (containers, __slots__/__dict__ objects);
    cached small ints, None and bools are free; a str is counted once across calls (seen_str)."""
    from array import array
    total = 0
    stack = [root]
    while stack:
        o = stack.pop()
        t = type(o)
        if o is None or t is bool or (t is int and -5 <= o <= 256):
            continue
        if t is str:
            if id(o) in seen_str:
                continue
            if count_seen:
                seen_str.add(id(o))
        total += sys.getsizeof(o)
        if t is dict:
            stack.extend(o.keys())
            stack.extend(o.values())
        elif t in (list, tuple, set, frozenset):
            stack.extend(o)
        elif t in (str, bytes, int, float, array, bytearray):
            pass
        elif hasattr(t, "__slots__"):
            stack.extend(getattr(o, a) for a in t.__slots__ if hasattr(o, a))
        elif hasattr(o, "__dict__"):
            stack.append(vars(o))
    return total


COMMIT_RECORDS = 20_000  # the memory run drains and settles as a daemon's commit would, this often


def settle_store(store) -> None:
    """Pack the states in use, in a tree whose store has a hot set (before 2026-12-03); a store of
    rows has nothing to settle."""
    settle = getattr(store, "settle", None)
    if settle is not None:
        settle()


def memory_worker(args) -> None:
    """Child process: one size. Prints a JSON line with the measurements."""
    import tracemalloc

    try:
        from detector.shared import real_imei
    except ImportError:
        from detector.core import _real_imei as real_imei
    cfg = config_mod.load()
    K = args.per_number
    # realistic templates: the first K records of each number of a generated population
    spec = GeneratorSpec(subscribers=args.pool_subscribers, hours=args.pool_hours, seed=args.seed)
    per: dict[str, list[CDR]] = {}
    for r in generate_records(spec):
        lst = per.get(r["msisdn"])
        if lst is None:
            lst = per[r["msisdn"]] = []
        if len(lst) < K:
            lst.append(parse_cdr(r))
    templates = [lst for lst in per.values() if len(lst) == K]
    index = {m: i for i, m in enumerate(lst[0].msisdn for lst in templates)}
    flat = sorted((r for lst in templates for r in lst), key=lambda r: (r.ts, r.record_id))
    flat = [(index[r.msisdn], r) for r in flat]
    T = len(templates)
    del per
    N = args.numbers
    towns = -(-N // T)
    gc.collect()
    rss0 = rss_bytes()
    if args.tracemalloc:
        tracemalloc.start()
        tm0 = tracemalloc.get_traced_memory()[0]
    t0 = time.monotonic()
    try:  # as the daemon builds it: tracking what changed, for the changelog
        det = Detector(cfg, track_changes=True)
    except TypeError:
        det = Detector(cfg)
    fed = 0
    last_limit = N - (towns - 1) * T  # the last town may be partial
    if args.with_profiles:  # each number's profile, templated on its template number's, as the topic gives it
        pool = {p["msisdn"]: p for p in generate_profiles(spec)}
        for i, lst in enumerate(templates):
            tp = pool[lst[0].msisdn]
            for town in range(towns if i < last_limit else towns - 1):
                det.on_profile(parse_profile(orjson.dumps({**tp, "msisdn": f"1{town:04d}{i:06d}"})))
        del pool

    def drain():  # what the daemon does at each commit: the dirty sets are drained into the changelog
        for eng in det.engines.values():
            settle_store(eng.numbers)
            for v in vars(eng).values():
                if isinstance(v, set):
                    v.clear()
        if hasattr(det.enricher, "drain_changes"):  # ... and the changed shared pairs published
            det.enricher.drain_changes()
        for v in vars(det.enricher).values():
            if isinstance(v, set):
                v.clear()

    # Towns are interleaved: each template record is fed for every town before the next one, so
    # event time only moves forward, as at a carrier, and the hourly and 6-hourly sweeps expire
    # what they would in production. (Feeding town after town replays the same hours again and
    # again, so sweeps hardly run and the cross-number index keeps days more than it should:
    # figures measured that way, before 2026-11-28 late, are upper bounds.)
    suffixes = [f".{town}" for town in range(towns)]
    drained = 0
    for j, (i, r) in enumerate(flat):
        real = real_imei(r.imei)
        for town in range(towns if i < last_limit else towns - 1):
            suffix = suffixes[town]
            # a new msisdn string per record, interned as parse_cdr interns it; an input offset, as the
            # daemon gives one (so a state holds a real applied_offset, as in production, not the -1 of
            # a backtest; one count over all partitions: larger than a partition's own offsets)
            det.on_record(CDR(f"{town}:{r.record_id}", r.ts, sys.intern(f"1{town:04d}{i:06d}"), r.direction, r.peer, r.service,
                              r.duration_s, r.answered, r.cell_id + suffix, r.cell_region, r.peer_region,
                              r.imei + suffix if real else r.imei), offset=fed)
            fed += 1
        if fed - drained >= COMMIT_RECORDS:
            drain()
            drained = fed
        if j % (len(flat) // 10 or 1) == 0:
            log(f"memory {N:,}: {j + 1:,}/{len(flat):,} template records x {towns} towns, "
                f"{det.numbers_tracked():,} numbers, RSS {rss_bytes() / 2**30:.2f} GiB, "
                f"{fed / (time.monotonic() - t0):,.0f} records/s")
    drain()
    feed_s = time.monotonic() - t0
    for eng in det.engines.values():  # as between two commits of the daemon
        settle_store(eng.numbers)
    gc.collect()
    rss1 = rss_bytes()
    tm = None
    if args.tracemalloc:
        tm1 = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        tm = tm1 - tm0
    tracked = det.numbers_tracked()

    # deep sizes by structure (sys.getsizeof); a string shared by several structures (an msisdn is
    # a key of Engine.numbers, of the partition cache and of the Enricher's tables) counts once,
    # where it is met first in this order
    seen_str: set[int] = set()
    key_bytes = dict_bytes = 0
    blobs, held_sizes = [], []
    step = max(1, tracked // 20000)
    rows_bytes = 0
    for eng in det.engines.values():
        store = eng.numbers
        if hasattr(store, "settle"):  # a tree before 2026-12-03: states at rest packed in a dict
            store.settle()
            dict_bytes += sys.getsizeof(store.cold) + sys.getsizeof(store.hot)
            held = store.cold.items()
        else:  # numbers in use are rows of the store's chunked arrays, the others packed in a dict
            cold = getattr(store, "cold", {})
            dict_bytes += (sys.getsizeof(store.rows) + sys.getsizeof(cold) + sys.getsizeof(store._owner)
                           + sys.getsizeof(store._free))
            rows_bytes += sum(c.nbytes for c in store._chunks)
            held = itertools.chain(((m, None) for m in store.rows), cold.items())
        for j, (msisdn, blob) in enumerate(held):
            key_bytes += sys.getsizeof(msisdn)
            seen_str.add(id(msisdn))
            if j % step == 0:  # as held (at rest: packed, since 2026-12-05 in the rest form), and as written
                held_sizes.append(sys.getsizeof(blob if blob is not None else store.packed(msisdn)))
                blobs.append(store.packed(msisdn) if hasattr(store, "packed") else blob)
    state_sizes = held_sizes
    by_field: dict[str, float] = {"(packed bytes object)": statistics.fmean(state_sizes)}
    if rows_bytes:
        by_field["(rows of the store's arrays, per number, free rows included)"] = rows_bytes / tracked
    else:
        unpacked = [NumberState.unpack(b) for b in blobs[:2000]]
        by_field["(unpacked, while in use: object + fields)"] = statistics.fmean(
            deep_size(st, set(), count_seen=False) for st in unpacked)
    enr = det.enricher
    enr_parts = {name: deep_size(v, seen_str) / tracked for name, v in vars(enr).items()
                 if isinstance(v, (dict, set, list))}
    # the subscriber profiles (none unless --with-profiles); the partition cache is gone since d8be81c
    profiles_bytes = sum(deep_size(vars(eng.profiles), seen_str) for eng in det.engines.values())
    changelog = [len(b) for b in blobs]
    prof = parse_profile(generate_profiles(GeneratorSpec(subscribers=10, hours=1))[0])
    one = ProfileTable()
    one.put(prof)  # a profile as an engine holds it (the msisdn string counted)
    profile_bytes = deep_size(one._packed[prof.msisdn], set()) + sys.getsizeof(prof.msisdn)
    out = {"numbers": N, "tracked": tracked, "per_number_records": K, "records_fed": fed, "template_numbers": T,
           "towns": towns, "feed_s": feed_s, "records_per_s": fed / feed_s,
           "rss_before": rss0, "rss_after": rss1, "rss_hwm": hwm_bytes(), "rss_delta_per_number": (rss1 - rss0) / tracked,
           "tracemalloc_per_number": tm / tracked if tm is not None else None,
           "deep": {"number_state_mean": statistics.fmean(state_sizes), "number_state_sampled": len(state_sizes),
                    "number_state_by_field": {k: round(v, 1) for k, v in sorted(by_field.items(), key=lambda kv: -kv[1])},
                    "msisdn_key": key_bytes / tracked, "numbers_dict_slots": dict_bytes / tracked,
                    "profiles": profiles_bytes / tracked, "profiles_held": sum(len(e.profiles) for e in det.engines.values()),
                    "enricher": enr_parts,
                    "enricher_keys": {name: len(v) for name, v in vars(enr).items() if isinstance(v, (dict, set, list))}},
           "changelog_value_bytes": {"mean": statistics.fmean(changelog), "p50": pct(changelog, 0.5),
                                     "p99": pct(changelog, 0.99), "max": max(changelog), "key": len(b"n:") + 11},
           "profile_bytes": profile_bytes, "with_profiles": bool(args.with_profiles), "allocator": allocator_report()}
    print("RESULT " + json.dumps(out), flush=True)


def run_memory_worker(args, numbers: int, per_number: int, tracemalloc_on: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_memory-worker", "--numbers", str(numbers),
           "--per-number", str(per_number), "--pool-subscribers", str(args.pool_subscribers),
           "--pool-hours", str(args.pool_hours), "--seed", str(args.seed)]
    if tracemalloc_on:
        cmd.append("--tracemalloc")
    if args.with_profiles:
        cmd.append("--with-profiles")
    log("running: " + " ".join(shlex.quote(c) for c in cmd[1:]))
    la0 = loadavg()
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"memory worker failed ({proc.returncode})")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    r = json.loads(line[len("RESULT "):])
    r["wall_s"] = time.monotonic() - t0
    r["load_before"], r["load_after"] = la0, loadavg()
    r["command"] = " ".join(shlex.quote(c) for c in [os.path.relpath(sys.executable, ROOT)] + cmd[1:])
    return r


def bench_memory(args, cfg: dict, m: dict) -> dict:
    header("memory", m)
    runs = []
    notes = []
    sizes = sorted(args.numbers)
    per_number_s = None
    per_number_b = None
    for size in sizes:
        k = args.per_number
        n = size
        if per_number_b is not None:
            avail = _meminfo().get("MemAvailable", 0)
            budget = args.mem_fraction * avail
            need = per_number_b * size * 1.1 + 1.5 * 2**30
            if need > budget:
                n_fit = int((budget - 1.5 * 2**30) / (per_number_b * 1.1) // 1_000_000 * 1_000_000)
                notes.append(f"{size:,} numbers: projected RSS {need / 2**30:.1f} GiB exceeds {args.mem_fraction:.0%} "
                             f"of the {avail / 2**30:.1f} GiB available — not run; "
                             f"linear extrapolation: {per_number_b * size / 2**30:.1f} GiB")
                n = min(n, n_fit)
            t_need = per_number_s * n * k
            if t_need > args.max_seconds:
                k2 = max(1, int(args.max_seconds / (per_number_s * n)))
                if k2 < k:
                    notes.append(f"{n:,} numbers: {k} records each would take ~{t_need / 60:.0f} min; "
                                 f"fed {k2} record(s) each instead")
                    k = k2
                if per_number_s * n * k > args.max_seconds:
                    n2 = int(args.max_seconds / (per_number_s * k) // 1_000_000 * 1_000_000)
                    notes.append(f"{n:,} numbers would take ~{per_number_s * n * k / 60:.0f} min even at {k} record "
                                 f"each; ran {n2:,}")
                    n = n2
            if n <= 0 or n <= runs[-1]["numbers"]:
                notes.append(f"{size:,}: nothing larger than the previous run fits; skipped")
                continue
        r = run_memory_worker(args, n, k, tracemalloc_on=False)
        r["requested_numbers"] = size
        runs.append(r)
        per_number_s = r["feed_s"] / r["records_fed"]
        per_number_b = max(per_number_b or 0, r["rss_delta_per_number"])
        log(f"{n:,} numbers: {r['rss_delta_per_number']:,.0f} B/number RSS, fed at {r['records_per_s']:,.0f} records/s")
    tm = None
    if args.tracemalloc_numbers:
        tm = run_memory_worker(args, args.tracemalloc_numbers, args.per_number, tracemalloc_on=True)
    for note in notes:
        log(note)
    print_memory(runs, tm, notes)
    main_run = runs[0]
    ok = main_run["rss_delta_per_number"] <= TARGETS["bytes_per_number"]
    return {"machine": m, "command": command_line(), "runs": runs, "tracemalloc_run": tm, "notes": notes,
            "target": {"bytes_per_number": TARGETS["bytes_per_number"], "measured": main_run["rss_delta_per_number"],
                       "met": ok}}


def print_memory(runs: list[dict], tm: dict | None, notes: list[str]) -> None:
    print()
    cols = runs + ([tm] if tm else [])
    names = [f"{r['numbers'] / 1e6:g}M × {r['per_number_records']} rec" + (" (tracemalloc)" if r is tm else "")
             for r in cols]
    B = lambda v: "" if v is None else f"{v:,.0f} B"  # noqa: E731
    rows = [
        ("numbers tracked", *[fmt(r["tracked"]) for r in cols]),
        ("records fed (Detector.on_record)", *[fmt(r["records_fed"]) for r in cols]),
        ("feed rate", *[fmt(r["records_per_s"], "rec/s") for r in cols]),
        ("RSS before → after", *[f"{r['rss_before'] / 2**30:.2f} → {r['rss_after'] / 2**30:.2f} GiB"
                                 if r is not tm else "(tracemalloc's own overhead)" for r in cols]),
        ("RSS delta / number", *[B(r["rss_delta_per_number"]) if r is not tm else "" for r in cols]),
        ("tracemalloc delta / number", *[B(r["tracemalloc_per_number"]) for r in cols]),
        ("  NumberState (packed bytes object)", *[B(r["deep"]["number_state_mean"]) for r in cols]),
        ("  msisdn key string", *[B(r["deep"]["msisdn_key"]) for r in cols]),
        ("  Engine.numbers dict slots", *[B(r["deep"]["numbers_dict_slots"]) for r in cols]),
        ("  Engine.profiles (ProfileTable)", *[B(r["deep"].get("profiles")) for r in cols]),
        *[(f"  Enricher.{name}", *[B(r["deep"]["enricher"].get(name)) for r in cols])
          for name in runs[0]["deep"]["enricher"]],
        ("changelog value n:<msisdn>, mean / max", *[f"{r['changelog_value_bytes']['mean']:,.0f} / "
                                                     f"{r['changelog_value_bytes']['max']:,} B" for r in cols]),
        ("subscriber profile (in the RSS above only with --with-profiles)", *[B(r["profile_bytes"]) for r in cols]),
    ]
    print(table(rows, ("", *names)))
    bf = runs[0]["deep"].get("number_state_by_field")
    if bf:
        print("NumberState, mean bytes: "
              + ", ".join(f"{k} {v:,.0f}" for k, v in bf.items() if v >= 1))
    for note in notes:
        print("note: " + note)
    r = runs[0]
    ok = r["rss_delta_per_number"] <= TARGETS["bytes_per_number"]
    print(f"target ≤ {TARGETS['bytes_per_number']:,} B per tracked number: {verdict(ok)} "
          f"({r['rss_delta_per_number']:,.0f} B RSS at {r['numbers']:,}, "
          f"{r['rss_delta_per_number'] / TARGETS['bytes_per_number']:.1f}× the target; NumberState alone "
          f"{r['deep']['number_state_mean']:,.0f} B)")


# ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--json", metavar="FILE", help="merge the results into this JSON file")
    ap.add_argument("--wait-quiet", type=float, metavar="LOAD",
                    help="before each timed pass wait until the 1-min load average is below LOAD")
    ap.add_argument("--wait-max", type=float, default=300.0, help="longest wait for --wait-quiet, s")
    ap.add_argument("--cpu", type=int, default=default_cpu(),
                    help="pin core/backtest measurements to this CPU (-1: do not pin; default: the last CPU)")
    sub = ap.add_subparsers(dest="what", required=True)

    p = sub.add_parser("core", help="records/s of the core on pre-parsed records")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--subscribers", type=int, default=100_000)
    p.add_argument("--hours", type=float, default=24.0, help="generated hours (the first --records are used)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--repeat", type=int, default=1, help="passes over the records; the best is reported")
    p.add_argument("--chunk", type=int, default=20_000, help="records per interleaved chunk")
    p.add_argument("--profile-records", type=int, default=300_000, help="records for the cProfile run (0: none)")
    p.add_argument("--top", type=int, default=15, help="hot spots to list")
    p.add_argument("--no-gc-freeze", action="store_true", help="leave the pre-parsed input to the collector")

    p = sub.add_parser("backtest", help="cdr-detector backtest against the read-and-decode floor")
    p.add_argument("--subscribers", type=int, default=100_000)
    p.add_argument("--hours", type=float, default=25.0, help="25 h of 100k subscribers is ~2.1M records")
    p.add_argument("--seed", type=int, default=7)

    p = sub.add_parser("daemon-work", help="the daemon's own work per record, without any Kafka client")
    p.add_argument("--records", type=int, default=300_000)
    p.add_argument("--subscribers", type=int, default=100_000)
    p.add_argument("--hours", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--commit-records", type=int, default=16_000, help="records between simulated commits "
                   "(the daemon commits every second: about its drain rate)")
    p.add_argument("--repeat", type=int, default=1, help="passes; the best is reported")

    p = sub.add_parser("rest-cycle", help="per number: to rest (the hourly sweep) and back (its next record)")
    p.add_argument("--records", type=int, default=400_000)
    p.add_argument("--subscribers", type=int, default=40_000)
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--repeat", type=int, default=5, help="rounds; the best and the worst are reported")

    p = sub.add_parser("profiles", help="RSS per subscriber profile held")
    p.add_argument("--subscribers", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=7)

    p = sub.add_parser("e2e", help="Kafka in, cdr-detector run, Kafka out (needs the local broker)")
    p.add_argument("--subscribers", type=int, default=100_000)
    p.add_argument("--hours", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--records", type=int, default=300_000, help="records replayed for the drain")
    p.add_argument("--bootstrap-servers", help="default: kafka.bootstrap_servers of the settings")
    p.add_argument("--producer-backend", choices=("kafka-python", "confluent"),
                   help="kafka.producer_backend for replay and daemon (default: the settings')")
    p.add_argument("--consumer-backend", choices=("kafka-python", "confluent"),
                   help="kafka.consumer_backend for the daemon and the consumer floor (default: the settings')")
    p.add_argument("--live-rate", type=int, help="records/s offered in the live phase (default: "
                                                 "--live-fraction of the measured drain rate)")
    p.add_argument("--live-fraction", type=float, default=0.5)
    p.add_argument("--live-seconds", type=float, default=60.0)
    p.add_argument("--sample-interval", type=float, default=0.5, help="s between /metrics scrapes while draining")
    p.add_argument("--sample-interval-live", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--log-level", default="INFO", help="the daemon's log level (INFO as in production)")
    p.add_argument("--keep-topics", action="store_true")
    p.add_argument("--profile-daemon", action="store_true",
                   help="run the daemon under cProfile (slower: for the hot spots, not the figures)")

    def add_memory(p):
        p.add_argument("--numbers", type=int, nargs="+", default=[1_000_000, 10_000_000])
        p.add_argument("--per-number", type=int, default=3, help="records fed to each number")
        p.add_argument("--tracemalloc-numbers", type=int, default=200_000, help="size of the tracemalloc run (0: none)")
        p.add_argument("--pool-subscribers", type=int, default=20_000, help="generated population the records are templated on")
        p.add_argument("--pool-hours", type=float, default=48.0)
        p.add_argument("--seed", type=int, default=7)
        p.add_argument("--max-seconds", type=float, default=600.0, help="scale a size down past this projected feed time")
        p.add_argument("--mem-fraction", type=float, default=0.6, help="share of MemAvailable a run may take")
        p.add_argument("--with-profiles", action="store_true",
                       help="hold a subscriber profile for every number, as production does (default: none)")

    add_memory(sub.add_parser("memory", help="bytes per tracked number"))
    p = sub.add_parser("_memory-worker")
    add_memory(p)
    p.add_argument("--tracemalloc", action="store_true")
    p.set_defaults(numbers=1_000_000)

    sub.add_parser("all", help="core, backtest, e2e, memory with their defaults")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.what == "_memory-worker":
        if isinstance(args.numbers, list):
            args.numbers = args.numbers[0]
        memory_worker(args)
        return 0
    WAIT["threshold"], WAIT["max_s"] = args.wait_quiet, args.wait_max
    m = machine()
    cfg = config_mod.load()
    todo = ["core", "backtest", "e2e", "memory"] if args.what == "all" else [args.what]
    results = {}
    for name in todo:
        sargs = ap.parse_args([f"--cpu={args.cpu}", f"--wait-max={args.wait_max}", name]) if args.what == "all" else args
        fn = {"core": bench_core, "backtest": bench_backtest, "e2e": bench_e2e, "memory": bench_memory,
              "daemon-work": bench_daemon_work, "rest-cycle": bench_rest_cycle,
              "profiles": bench_profiles}[name]
        t0 = time.monotonic()
        results[name] = fn(sargs, cfg, m)
        results[name]["seconds"] = round(time.monotonic() - t0, 1)
        results[name]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if args.json:
            path = Path(args.json)
            old = json.loads(path.read_text()) if path.exists() else {}
            old.setdefault("results", {})[name] = results[name]
            old["machine"] = m
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(old, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
