"""`cdr-detector demo`: the whole detector on a generated stream, with no Kafka.

It generates a carrier's traffic in-process (legitimate heavy users and several fraud schemes),
runs the production core on it while serving the Prometheus metrics, and ends with a summary a
person can read: what was suspended, at which tier, why — and whom it left alone.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter

from . import __version__
from .backtest import Progress, ordered_records, run
from .config import model_id
from .core import Detector, public
from .files import JsonlWriter
from .generator import GeneratorSpec, generate_labels, generate_profiles, generate_records
from .metrics import Metrics, serve
from .pipeline import Pipeline
from .report import evaluate, format_report


def _serve(metrics: Metrics, cfg: dict, port: int | None):
    addr = cfg["metrics"].get("address", "127.0.0.1")
    want = int(cfg["metrics"]["port"]) if port is None else port
    try:
        return serve(metrics, addr, want)
    except OSError as exc:
        print(f"port {want} is busy ({exc.strerror}); serving metrics on a free port instead", file=sys.stderr)
        return serve(metrics, addr, 0)


def run_demo(args) -> int:
    from .cli import load_config

    cfg = load_config(args)
    spec = GeneratorSpec(subscribers=args.subscribers, hours=args.hours, seed=args.seed)
    metrics = Metrics(version=__version__, model=model_id(cfg))
    server = None if args.no_metrics else _serve(metrics, cfg, args.metrics_port)
    print(f"cdr-detector demo: {spec.subscribers:,} subscribers, {spec.hours:g} hours of generated traffic, "
          f"model {model_id(cfg)}")
    if server:
        print(f"metrics: http://{server.address}:{server.port}/metrics   health: http://{server.address}:{server.port}/healthz")
    pipeline = Pipeline(Detector(cfg), metrics)
    for p in generate_profiles(spec):
        pipeline.profile(p)
    labels = {r["msisdn"]: (r["label"], r["typology"], r["onset_ts"]) for r in generate_labels(spec)}

    workdir = tempfile.mkdtemp(prefix="cdr-demo-")
    trace_path = os.path.join(workdir, "cdrs.jsonl.gz")
    out = JsonlWriter(args.out) if args.out else None

    def records():
        with JsonlWriter(trace_path) as trace:  # kept only to count harm for the summary
            for n, rec in enumerate(generate_records(spec), 1):
                trace.write(rec)
                yield n, rec

    t0 = time.monotonic()
    res = run(pipeline, ordered_records(pipeline, records()),
              sink=(lambda e: out.write(public(e))) if out else None, progress=Progress(True))
    if out:
        out.close()
    pipeline.refresh_gauges()
    seconds = time.monotonic() - t0
    print(f"\nprocessed {res.records:,} records in {seconds:.1f} s ({res.records / max(seconds, 1e-9):,.0f}/s); "
          f"{pipeline.counts['invalid']:,} invalid, {pipeline.counts['duplicate']:,} duplicates")
    print(summary(res.events, labels, pipeline))
    report = evaluate(res.events, labels, trace_path, res.last_ts)
    print("\nagainst the generator's ground truth (never shown to the detector):")
    print(format_report(report))
    if server:
        server.shutdown()
    try:
        os.remove(trace_path)
        os.rmdir(workdir)
    except OSError:
        pass
    return 0


def summary(events: list[dict], labels: dict, pipeline: Pipeline) -> str:
    lines = []
    actions = Counter((e["action"], e["tier"]) for e in events)
    lines.append("decisions: " + (", ".join(f"{a} {t}: {n}" for (a, t), n in sorted(actions.items())) or "none"))
    first: dict[str, dict] = {}
    for e in events:
        if e["action"] == "suspend" and e["msisdn"] not in first:
            first[e["msisdn"]] = e
    reasons = Counter(r["code"] for e in first.values() for r in e["reasons"][:1])
    lines.append("what drove suspensions most often: " + ", ".join(f"{k} ({n})" for k, n in reasons.most_common(6)))
    shown = set()
    lines.append("\nexamples (one per kind of line suspended):")
    for m, e in first.items():
        kind = labels.get(m, ("?", "unknown", None))[1]
        if kind in shown:
            continue
        shown.add(kind)
        masked = m[:3] + "****" + m[-4:]
        lines.append(f"  {masked} [{kind}] {e['action']} tier={e['tier']} score={e['score']} → {e['verification']}")
        for r in e["reasons"]:
            lines.append(f"      - {r['text']}")
    spared = Counter(v[1] for m, v in labels.items() if v[0] == "benign" and m not in first)
    total = Counter(v[1] for v in labels.values() if v[0] == "benign")
    lines.append("\nlegitimate subscribers left alone: " + ", ".join(
        f"{k} {spared[k]}/{total[k]}" for k in sorted(total)))
    return "\n".join(lines)
