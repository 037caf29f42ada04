"""The Kafka-facing subcommands: `run` (the daemon) and `replay` (publish recorded files)."""
from __future__ import annotations

import json
import sys


def add_parsers(sub, add_config, add_kafka) -> None:
    p = sub.add_parser("run", help="run the detector daemon on Kafka",
                       description="Consume CDRs from Kafka (records topic, with subscriber profiles and "
                                   "verification outcomes), emit tiered suspension events, reject bad input "
                                   "to the dead-letter topic, keep state in a compacted changelog topic, and "
                                   "serve /metrics and /healthz. SIGTERM/SIGINT: finish the batch, flush, "
                                   "commit, exit 0.")
    add_config(p)
    add_kafka(p)
    p.add_argument("--group-id", metavar="ID", help="consumer group (kafka.group_id)")
    p.add_argument("--metrics-port", type=int, help="port of /metrics and /healthz (metrics.port)")
    p.add_argument("--metrics-address", help="address to bind /metrics and /healthz (metrics.address)")
    p.add_argument("--plain-logs", action="store_true", help="human-readable logs instead of JSON lines")

    p = sub.add_parser("replay", help="publish recorded files into the Kafka topics",
                       description="Publish a recorded CDR file (and optionally profiles and outcomes) "
                                   "into the topics, keyed by msisdn, as fast as possible or at X times "
                                   "real time by the records' own timestamps.")
    add_config(p)
    add_kafka(p)
    p.add_argument("--cdrs", required=True, metavar="FILE")
    p.add_argument("--subscribers", metavar="FILE")
    p.add_argument("--outcomes", metavar="FILE")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--speed", type=float, metavar="X", help="X times real time, by the records' timestamps")
    g.add_argument("--max", action="store_true", help="as fast as possible (the default)")
    p.add_argument("--limit", type=int, help="send at most this many records")


def add_reset_parser(sub, add_config, add_kafka) -> None:
    p = sub.add_parser("reset-state", help="delete the daemon's state so that it starts over",
                       description="Delete the consumer group's state topics (the changelog and the shared "
                                   "facts) and, unless --keep-offsets, its committed offsets, so the next "
                                   "`run` starts with empty state from the beginning of the input topics. "
                                   "Stop every daemon of the group first.")
    add_config(p)
    add_kafka(p)
    p.add_argument("--group-id", metavar="ID")
    p.add_argument("--keep-offsets", action="store_true",
                   help="keep the committed offsets: start with empty state where the group stopped")
    p.add_argument("--yes", action="store_true", help="do it (without this flag, only say what would happen)")


def reset_state(args) -> int:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from . import kafka_io
    from .cli import load_config

    cfg = load_config(args)
    k = cfg["kafka"]
    t = kafka_io.topic_names(k)
    doomed = [t["changelog"], t["shared"]]
    plan = f"delete topics {doomed}" + ("" if args.keep_offsets else f" and the offsets of group {k['group_id']!r}")
    if not args.yes:
        print(f"would {plan}; add --yes to do it")
        return 1
    admin = KafkaAdminClient(**kafka_io.common(k))
    try:
        existing = set(admin.list_topics())
        gone = [x for x in doomed if x in existing]
        if gone:
            admin.delete_topics(gone)
        if not args.keep_offsets:
            try:
                admin.delete_groups([k["group_id"]])
            except KafkaError as exc:  # e.g. the group has live members, or never committed
                print(f"group {k['group_id']!r} not deleted: {exc}", file=sys.stderr)
                if "NonEmpty" in type(exc).__name__:
                    return 2
    finally:
        admin.close()
    print(f"done: {plan}")
    return 0


def dispatch(args) -> int:
    from .cli import load_config

    if args.command == "run":
        from . import logs
        from .daemon import Daemon
        from .metrics import Metrics
        from .config import model_id

        logs.setup(args.log_level, json_lines=not args.plain_logs)
        cfg = load_config(args)
        if args.metrics_port is not None:
            cfg["metrics"]["port"] = args.metrics_port
        if args.metrics_address:
            cfg["metrics"]["address"] = args.metrics_address
        from . import __version__
        return Daemon(cfg, Metrics(version=__version__, model=model_id(cfg))).run()
    if args.command == "reset-state":
        return reset_state(args)
    if args.command == "replay":
        from .replay import replay

        cfg = load_config(args)
        counts = replay(cfg, args.cdrs, args.subscribers, args.outcomes, speed=args.speed, limit=args.limit)
        print(json.dumps(counts))
        return 0
    print(f"unknown command {args.command}", file=sys.stderr)
    return 2
