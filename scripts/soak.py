#!/usr/bin/env python3
"""Soak run: a generated CDR stream replayed at maximum rate (or `--rate`) through the local Kafka broker into a
running daemon, for a while, watching the daemon's memory and lag.

    scripts/soak.py [--seconds 600] [--bootstrap 127.0.0.1:9092] [--subscribers 3000] [--hours 24]
                    [--every 10] [--max-backlog 300000] [--rate R] [--json OUT.json] [--keep-topics]

A dataset is generated once (`detector.generator`, like `cdr-detector generate`) and replayed in
loops: each loop shifts every timestamp past the previous loop and suffixes the record ids, so the
stream stays valid (no duplicates, time moves on) for as long as the soak lasts, over the same
subscribers (so state is bounded and memory should plateau). The producer sends as fast as it can;
`--max-backlog` (0: off) pauses it while the daemon is that many records behind, so a slow daemon
does not fill the broker's disk — the table says when that happened.

Every `--every` seconds: the daemon's RSS (/proc/<pid>/status VmRSS), its lag (/healthz `lag`),
records processed (/metrics cdr_detector_records_total), records produced. At the end: a table and
a verdict (memory slope after warm-up, lag trend, throughput). The daemon runs on topics and a
consumer group of its own (deleted afterwards unless --keep-topics). A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detector import config as config_mod  # noqa: E402
from detector import kafka_io  # noqa: E402
from detector.files import iter_lines  # noqa: E402
from detector.generator import GeneratorSpec, write_dataset  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def http_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())
    except Exception:
        return None


def records_ok(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except Exception:
        return None
    ok = None
    for line in text.splitlines():
        if line.startswith('cdr_detector_records_total{result="ok"}'):
            ok = int(float(line.split()[-1]))
    return ok


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


class Replayer(threading.Thread):
    """Sends the dataset in loops, shifted in time, as fast as the producer takes it."""

    def __init__(self, kcfg: dict, topic: str, cdrs: Path, backlog, max_backlog: int, rate: float = 0.0):
        super().__init__(name="replayer", daemon=True)
        self.kcfg, self.topic, self.backlog, self.max_backlog = kcfg, topic, backlog, max_backlog
        self.rate = rate  # records/s; 0: as fast as the producer takes them
        self.stop = threading.Event()
        self.sent = 0
        self.loops = 0
        self.throttled_s = 0.0
        self.error: BaseException | None = None
        self.records = []  # (ts, record_id, rest-of-line, key)
        for _, line in iter_lines(str(cdrs)):
            r = orjson.loads(line)
            cut = line.index(b',"msisdn"')
            self.records.append((r["ts"], r["record_id"], line[cut:], r["msisdn"].encode()))
        self.span = self.records[-1][0] - self.records[0][0] + 60_000

    def run(self) -> None:
        producer = kafka_io.producer(self.kcfg)
        started = time.monotonic()
        try:
            while not self.stop.is_set():
                shift = self.loops * self.span
                suffix = f"-L{self.loops}"
                for i, (ts, rid, rest, key) in enumerate(self.records):
                    if i % 1000 == 0:
                        if self.stop.is_set():
                            break
                        if self.rate:  # paced: sleep until this record's turn
                            ahead = self.sent / self.rate - (time.monotonic() - started)
                            if ahead > 0:
                                time.sleep(ahead)
                        while self.max_backlog and self.backlog() > self.max_backlog and not self.stop.is_set():
                            time.sleep(0.2)
                            self.throttled_s += 0.2
                    value = b'{"record_id":"' + (rid + suffix).encode() + b'","ts":' + str(ts + shift).encode() + rest
                    producer.send(self.topic, key=key, value=value)
                    self.sent += 1
                else:
                    self.loops += 1
            producer.flush(timeout=60)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            producer.close(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--subscribers", type=int, default=3000)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--max-backlog", type=int, default=300_000,
                    help="pause the producer while the daemon is this many records behind (0: never)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="records/s the producer offers (0: as fast as it can)")
    ap.add_argument("--json", metavar="FILE", help="write samples and verdict here")
    ap.add_argument("--keep-topics", action="store_true")
    a = ap.parse_args()

    if not port_open(a.bootstrap):
        print(f"soak: no broker at {a.bootstrap} (start it: scripts/kafka-local.sh start)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cdr-soak-"))
    t0 = time.monotonic()
    counts = write_dataset(GeneratorSpec(subscribers=a.subscribers, hours=a.hours, seed=a.seed), work / "data")
    print(f"soak: generated {counts} in {time.monotonic() - t0:.1f} s into {work / 'data'}", flush=True)

    tag = uuid.uuid4().hex[:10]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDR_DETECTOR__") and k != "CDR_DETECTOR_CONFIG"}
    port = free_port()
    over = {"CDR_DETECTOR__KAFKA__BOOTSTRAP_SERVERS": a.bootstrap, "CDR_DETECTOR__KAFKA__GROUP_ID": f"soak-{tag}",
            "CDR_DETECTOR__KAFKA__CLIENT_ID": f"soak-{tag}", "CDR_DETECTOR__METRICS__PORT": str(port)}
    for kind in ("records", "subscribers", "outcomes", "suspensions", "dlq"):
        over[f"CDR_DETECTOR__KAFKA__TOPICS__{kind.upper()}"] = f"soak-{tag}.{kind}"
    env.update(over)
    cfg = config_mod.load(environ=env)
    kcfg = cfg["kafka"]
    topics = kafka_io.topic_names(kcfg)
    kafka_io.ensure_topics(kcfg)

    from detector.replay import publish
    n_subs = publish(kcfg, topics["subscribers"], str(work / "data" / "subscribers.jsonl"))
    exe = ROOT / ".venv" / "bin" / "cdr-detector"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "detector.cli"]
    log_path = work / "daemon.log"
    log_f = open(log_path, "wb")
    daemon = subprocess.Popen(cmd + ["run"], env=env, stdout=log_f, stderr=subprocess.STDOUT, cwd=ROOT,
                              start_new_session=True)
    print(f"soak: daemon pid {daemon.pid}, metrics :{port}, topics soak-{tag}.*, {n_subs} profiles; "
          f"log {log_path}", flush=True)

    state = {"ok": 0}

    def backlog() -> int:  # what the producer has handed over and the daemon not yet processed
        return replayer.sent - state["ok"]

    replayer = Replayer(kcfg, topics["records"], work / "data" / "cdrs.jsonl.gz", backlog, a.max_backlog, a.rate)
    fc, sc = cfg["features"], cfg["state"]
    a.warm_hours = (max(float(fc["shared_window_hours"]), float(fc.get("cell_window_hours", 24)))
                    + float(sc["allowed_lateness_minutes"]) / 60 + 6)  # + the Enricher's sweep interval
    a.warm_records = int(a.warm_hours * 3_600_000 / replayer.span * len(replayer.records))
    print(f"soak: {len(replayer.records):,} records per loop over {replayer.span / 3_600_000:.1f} h of event time; "
          f"warm-up {a.warm_hours:g} h = {a.warm_records:,} records", flush=True)
    samples = []
    rc = 0
    ends = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # ready: assigned and serving
            if daemon.poll() is not None:
                raise RuntimeError(f"daemon exited with {daemon.returncode}; see {log_path}")
            h = http_json(f"http://127.0.0.1:{port}/healthz")
            if h and h.get("assigned"):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("daemon not ready within 60 s")
        from kafka import TopicPartition
        ends = kafka_io.consumer(kcfg, group=False)
        tps = [TopicPartition(topics["records"], p) for p in sorted(ends.partitions_for_topic(topics["records"]))]

        def in_topic() -> int | None:
            try:
                return sum(ends.end_offsets(tps).values())
            except Exception:
                return None
        start = time.monotonic()
        replayer.start()
        print(f"{'t_s':>6} {'rss_mb':>8} {'lag':>9} {'backlog':>9} {'processed':>10} {'in_topic':>10} {'rec/s':>8} "
              f"{'throttled_s':>11}", flush=True)
        next_at = start
        last_ok, last_t = 0, start
        while True:
            now = time.monotonic()
            if now >= next_at:
                if daemon.poll() is not None:
                    raise RuntimeError(f"daemon exited with {daemon.returncode} during the soak; see {log_path}")
                h = http_json(f"http://127.0.0.1:{port}/healthz") or {}
                ok = records_ok(port)
                if ok is not None:
                    state["ok"] = ok
                rate = (state["ok"] - last_ok) / max(1e-9, now - last_t)
                topic_end = in_topic()
                last_ok, last_t = state["ok"], now
                s = {"t": round(now - start, 1), "rss_mb": rss_mb(daemon.pid), "lag": h.get("lag"),
                     "processed": state["ok"], "produced": replayer.sent, "in_topic": topic_end,
                     "backlog": None if topic_end is None else topic_end - state["ok"], "rate": round(rate),
                     "throttled_s": round(replayer.throttled_s, 1), "status": h.get("status")}
                samples.append(s)
                print(f"{s['t']:>6.0f} {s['rss_mb'] or 0:>8.1f} {s['lag'] if s['lag'] is not None else '-':>9} "
                      f"{s['backlog'] if s['backlog'] is not None else '-':>9} {s['processed']:>10} "
                      f"{s['in_topic'] if s['in_topic'] is not None else '-':>10} {s['rate']:>8} "
                      f"{s['throttled_s']:>11}", flush=True)
                next_at += a.every
                if now - start >= a.seconds:
                    break
            if replayer.error:
                raise RuntimeError(f"replayer failed: {replayer.error!r}")
            time.sleep(0.2)
    except Exception as exc:
        print(f"soak: FAILED: {exc}", file=sys.stderr)
        rc = 1
    finally:
        replayer.stop.set()
        if ends is not None:
            ends.close()
        if replayer.is_alive():
            replayer.join(timeout=90)
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=30)
        log_f.close()
        if not a.keep_topics:
            try:
                from kafka import KafkaAdminClient
                admin = KafkaAdminClient(**kafka_io.common(kcfg))
                try:
                    existing = set(admin.list_topics())
                    admin.delete_topics([t for t in topics.values() if t in existing])
                    try:
                        admin.delete_groups([kcfg["group_id"]])
                    except Exception:
                        pass
                finally:
                    admin.close()
            except Exception as exc:
                print(f"soak: could not delete topics: {exc}", file=sys.stderr)

    verdict = judge(samples, a)
    print()
    for line in verdict["lines"]:
        print(line)
    print(f"daemon exit code {daemon.returncode} (SIGTERM at the end; 0 = clean)")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "dataset": counts, "samples": samples,
                                            "verdict": verdict, "daemon_rc": daemon.returncode}, indent=1))
    return rc or (0 if daemon.returncode == 0 else 1)


def judge(samples: list[dict], a) -> dict:
    rows = [s for s in samples if s["rss_mb"] is not None]
    if len(rows) < 3:
        return {"lines": ["verdict: too few samples"], "memory": None, "lag": None}
    # Warm-up is in event time: state keeps growing until the stream has covered the longest window
    # anything is kept for (the 72 h handset window, lateness, one sweep interval). After that the
    # same subscribers only replace what they had, so memory must stay flat.
    warm = [s for s in rows if s["processed"] >= a.warm_records]
    if len(warm) < max(3, len(rows) // 3):
        return {"lines": [f"verdict: not warmed up — only {len(warm)} of {len(rows)} samples came after "
                          f"{a.warm_records:,} records ({a.warm_hours:g} h of event time); run longer or faster"],
                "memory": None, "lag": None}
    t_min = [s["t"] / 60 for s in warm]
    mem_slope = slope(t_min, [s["rss_mb"] for s in warm])  # MB per minute
    rss0, rss1, rss_max = warm[0]["rss_mb"], warm[-1]["rss_mb"], max(s["rss_mb"] for s in rows)
    mem_ok = mem_slope < 1.0 or (rss1 - rss0) < 0.05 * rss0
    lags = [s for s in rows if s["lag"] is not None]
    half = lags[len(lags) // 2:]
    lag_slope = slope([s["t"] / 60 for s in half], [s["lag"] for s in half]) if half else 0.0
    elapsed = rows[-1]["t"] - rows[0]["t"]
    throughput = (rows[-1]["processed"] - rows[0]["processed"]) / max(1e-9, elapsed)
    produced_rate = (rows[-1]["produced"] - rows[0]["produced"]) / max(1e-9, elapsed)
    throttled = rows[-1]["throttled_s"]
    final_lag = lags[-1]["lag"] if lags else None
    if final_lag is None:
        lag_verdict = "unknown (no /healthz lag)"
    elif lag_slope <= max(100.0, 0.01 * throughput * 60) and final_lag <= max(10_000, 2 * throughput * a.every):
        lag_verdict = "keeping up (lag flat and small)"
    elif throttled > 0:
        lag_verdict = ("falling behind the producer's maximum rate; backlog capped at --max-backlog "
                       f"(producer paused {throttled:.0f} s): the daemon's sustained throughput is the limit")
    else:
        lag_verdict = "falling behind (lag growing)"
    lines = [
        f"warm-up: {a.warm_hours:g} h of event time = {a.warm_records:,} records, reached at t={warm[0]['t']:.0f} s; "
        f"judged on the {len(warm)} samples after it",
        f"memory: RSS {rss0:.1f} → {rss1:.1f} MB after warm-up (max {rss_max:.1f}), slope {mem_slope:+.2f} MB/min "
        f"→ {'stable' if mem_ok else 'GROWING'}",
        f"lag: final {final_lag}, slope over the second half {lag_slope:+,.0f} records/min → {lag_verdict}",
        f"throughput: daemon {throughput:,.0f} records/s processed; producer {produced_rate:,.0f} records/s sent",
    ]
    return {"lines": lines, "warm_up": {"hours": a.warm_hours, "records": a.warm_records, "reached_at_s": warm[0]["t"]},
            "memory": {"slope_mb_per_min": round(mem_slope, 3), "rss_start": rss0, "rss_end": rss1,
                                       "rss_max": rss_max, "stable": mem_ok},
            "lag": {"final": final_lag, "slope_per_min": round(lag_slope), "verdict": lag_verdict},
            "throughput_rps": round(throughput), "producer_rps": round(produced_rate)}


if __name__ == "__main__":
    sys.exit(main())
