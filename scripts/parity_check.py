#!/usr/bin/env python3
"""Does the daemon decide exactly what the backtest decides? Compare the suspension events.

    scripts/parity_check.py --events BACKTEST_EVENTS.jsonl [--config FILE] [--bootstrap-servers B]

Reads the suspensions topic to its end, drops repeats by event_id, and compares the set of
events with the backtest's file. Exit 0 when identical.
"""
from __future__ import annotations

import argparse
import sys

import orjson

from detector import config
from detector.kafka_io import topic_names
from detector.topic_dump import read_events


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", required=True)
    ap.add_argument("--config")
    ap.add_argument("--bootstrap-servers")
    a = ap.parse_args()
    over = {"kafka": {"bootstrap_servers": a.bootstrap_servers}} if a.bootstrap_servers else None
    cfg = config.load(a.config, overrides=over)
    with open(a.events, "rb") as f:
        offline = {e["event_id"]: e for e in map(orjson.loads, filter(bytes.strip, f))}
    online = read_events(cfg["kafka"], topic_names(cfg["kafka"])["suspensions"])
    only_off = sorted(set(offline) - set(online))
    only_on = sorted(set(online) - set(offline))
    differ = [k for k in set(offline) & set(online) if offline[k] != online[k]]
    print(f"backtest {len(offline)} events, daemon {len(online)} distinct events; "
          f"only in backtest {len(only_off)}, only in daemon {len(only_on)}, differing {len(differ)}")
    for k in (only_off + only_on + differ)[:10]:
        e = offline.get(k) or online.get(k)
        print(f"  {k} {e['action']} {e['tier']} ts={e['ts']}")
    return 0 if not (only_off or only_on or differ) else 1


if __name__ == "__main__":
    sys.exit(main())
