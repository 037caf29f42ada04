"""`cdr-detector`: one console script, one subcommand per job.

Settings come from one object: the YAML file (`--config`, or $CDR_DETECTOR_CONFIG, or the packaged
config/detector.yaml), then environment variables `CDR_DETECTOR__SECTION__KEY=value`, then flags.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from . import __version__
from . import config as config_mod

EPILOG = """settings:
  YAML: --config FILE, or $CDR_DETECTOR_CONFIG, else the packaged config/detector.yaml
  environment: CDR_DETECTOR__<SECTION>__<KEY>=value overrides any key, e.g.
    CDR_DETECTOR__KAFKA__BOOTSTRAP_SERVERS=broker:9092  CDR_DETECTOR__TIERS__LOW__MODE=shadow
  secrets: a key ending in _file (kafka.sasl_plain_password_file) is read from that file
  `cdr-detector config` prints the effective settings (secrets masked)."""


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="settings YAML (default: packaged config/detector.yaml)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _add_kafka(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="Kafka bootstrap servers (kafka.bootstrap_servers)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdr-detector", description="Streaming fraud detector for telecom call-detail records.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cdr-detector {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the detector on a generated stream (no Kafka needed)",
                       description="Generate a realistic CDR stream in-process (legitimate heavy users and "
                                   "several fraud schemes), run the core on it while serving Prometheus "
                                   "metrics, and print what it suspended and why.")
    _add_config(p)
    p.add_argument("--subscribers", type=int, default=3000, help="subscribers to generate (default 3000)")
    p.add_argument("--hours", type=float, default=48.0, help="hours of traffic (default 48)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--metrics-port", type=int, help="serve /metrics here while running (default metrics.port; 0: any free port)")
    p.add_argument("--no-metrics", action="store_true", help="do not serve metrics")
    p.add_argument("--out", metavar="EVENTS.jsonl", help="also write the suspension events here")

    p = sub.add_parser("backtest", help="run the core over recorded files and report quality",
                       description="Run exactly the production core over recorded CDRs (.jsonl or .jsonl.gz) "
                                   "and write suspension events as JSON Lines. Labels, if given, are read "
                                   "only after the run, to score it.")
    _add_config(p)
    p.add_argument("--cdrs", required=True, metavar="FILE")
    p.add_argument("--subscribers", metavar="FILE")
    p.add_argument("--outcomes", metavar="FILE", help="verification outcomes to replay with the CDRs")
    p.add_argument("--labels", metavar="FILE", help="labels.csv: report precision, recall, delays, harm")
    p.add_argument("--out", required=True, metavar="EVENTS.jsonl")
    p.add_argument("--dlq", metavar="FILE", help="write rejected lines here with their errors")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON here too")
    p.add_argument("--quiet", action="store_true", help="no progress lines")

    p = sub.add_parser("generate", help="write a synthetic labelled dataset (cdrs, subscribers, labels)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--subscribers", type=int, default=5000)
    p.add_argument("--hours", type=float, default=72.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--fraud-share", type=float, default=0.02)

    p = sub.add_parser("config", help="print the effective settings (secrets masked)")
    _add_config(p)
    _add_kafka(p)

    from . import daemon_cli  # the Kafka subcommands live at the edge, in their own module
    daemon_cli.add_parsers(sub, _add_config, _add_kafka)
    daemon_cli.add_reset_parser(sub, _add_config, _add_kafka)
    from . import tune
    tune.add_parser(sub, _add_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        if args.command == "backtest":
            return cmd_backtest(args)
        if args.command == "demo":
            from .demo import run_demo
            return run_demo(args)
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "tune":
            from . import tune
            return tune.run(args)
        if args.command == "config":
            cfg = load_config(args)
            print(json.dumps(config_mod.redacted(cfg), indent=2))
            return 0
        from . import daemon_cli
        return daemon_cli.dispatch(args)
    except config_mod.ConfigError as exc:
        print(f"cdr-detector: configuration error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"cdr-detector: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2


def load_config(args) -> dict:
    overrides = {}
    if getattr(args, "bootstrap_servers", None):
        overrides.setdefault("kafka", {})["bootstrap_servers"] = args.bootstrap_servers
    if getattr(args, "group_id", None):
        overrides.setdefault("kafka", {})["group_id"] = args.group_id
    return config_mod.load(getattr(args, "config", None), overrides=overrides)


def cmd_backtest(args) -> int:
    from .backtest import backtest
    from .report import evaluate, format_report, load_labels

    cfg = load_config(args)
    res, pipeline = backtest(cfg, args.cdrs, args.subscribers, args.out, outcomes=args.outcomes,
                             dlq=args.dlq, show_progress=not args.quiet)
    rate = res.records / max(res.seconds, 1e-9)
    print(f"{res.records:,} records in {res.seconds:.1f} s ({rate:,.0f} records/s); "
          f"{pipeline.counts['invalid']:,} invalid, {pipeline.counts['duplicate']:,} duplicates; "
          f"{len(res.events):,} events → {args.out}")
    print("decisions: " + (", ".join(f"{a}/{t}/{m} {n}" for (a, t, m), n in sorted(pipeline.actions.items())) or "none"))
    print(f"state: {pipeline.detector.numbers_tracked():,} numbers tracked, {len(pipeline.detector.enricher.handsets):,} "
          f"handsets and {len(pipeline.detector.enricher.cells):,} cells indexed; peak RSS {_peak_rss_mib():,.0f} MiB")
    if pipeline.invalid:
        print("invalid by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(pipeline.invalid.items())))
    if args.labels:
        report = evaluate(res.events, load_labels(args.labels), args.cdrs, res.last_ts)
        print(format_report(report))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
    return 0


def _peak_rss_mib() -> float:
    """This process's peak resident memory (what sizing a backtest host needs)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cmd_generate(args) -> int:
    from .generator import GeneratorSpec, write_dataset

    spec = GeneratorSpec(subscribers=args.subscribers, hours=args.hours, seed=args.seed, fraud_share=args.fraud_share)
    counts = write_dataset(spec, args.out)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
