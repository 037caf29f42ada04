"""Helpers for the end-to-end tests of the Kafka daemon (tests/test_daemon_kafka.py). Not a test module.

Each test gets its own topics and consumer group (uuid), so tests never see each other's data.
The daemon runs as a real subprocess (`cdr-detector run`), so SIGTERM and SIGKILL are real.
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from detector import config as config_mod
from detector import kafka_io
from detector.topic_dump import read_topic

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = REPO_ROOT / ".venv" / "bin"
SAMPLE_DIR = Path(os.environ.get("CDR_SHARED_DIR") or next((p for p in (Path(__file__).resolve().parents[1].parent / "shared", Path("/work/shared")) if p.exists()), "/work/shared")) / "data" / "sample"
SLICE_SCRIPT = REPO_ROOT / "scripts" / "slice_dataset.py"
PARTITIONS = 3


def cli() -> list[str]:
    """The console script of the venv, or (if it is missing) the module run by this interpreter."""
    exe = VENV_BIN / "cdr-detector"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "detector.cli"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- data ------------------------------------------------------------------------------------------
def make_slice(out_dir: Path, benign: int = 150, fraud_per_scheme: int = 3, seed: int = 1) -> dict:
    """`scripts/slice_dataset.py SAMPLE OUT --benign N --fraud-per-scheme M` (its function, in-process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("slice_dataset", SLICE_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.slice_dataset(str(SAMPLE_DIR), str(out_dir), benign, fraud_per_scheme, seed)


def read_lines(path: str | os.PathLike) -> list[bytes]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        return [line.strip() for line in f if line.strip()]


def write_lines(path: str | os.PathLike, lines: Iterable[bytes]) -> Path:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        for line in lines:
            f.write(line + b"\n")
    return Path(path)


def split_at_ts_boundary(lines: list[bytes], fraction: float = 0.5) -> int:
    """An index near `fraction` of the lines where the timestamp changes (records sorted by ts), so
    no group of equal timestamps is cut in two."""
    i = max(1, int(len(lines) * fraction))
    ts = [orjson.loads(x)["ts"] for x in lines]
    while i < len(lines) and ts[i] == ts[i - 1]:
        i += 1
    assert 0 < i < len(lines)
    return i


def backtest_events(cdrs: str | os.PathLike, subscribers: str | os.PathLike,
                    out: str | os.PathLike) -> dict[str, dict]:
    """The offline reference: `cdr-detector backtest ... --quiet`, events by event_id."""
    proc = subprocess.run(cli() + ["backtest", "--cdrs", str(cdrs), "--subscribers", str(subscribers),
                                   "--out", str(out), "--quiet"],
                          env=isolated_env({}), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"backtest failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    events: dict[str, dict] = {}
    for line in read_lines(out):
        e = orjson.loads(line)
        assert e["event_id"] not in events, f"backtest repeated event {e['event_id']}"
        events[e["event_id"]] = e
    return events


# -- settings --------------------------------------------------------------------------------------
def isolated_env(overrides: dict[str, str]) -> dict[str, str]:
    """os.environ without any CDR_DETECTOR settings of the caller, plus `overrides`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CDR_DETECTOR__") and k != "CDR_DETECTOR_CONFIG"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@dataclass
class KafkaSetup:
    """Unique topics and group of one test, as environment variables and as a loaded config."""

    bootstrap: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def group_id(self) -> str:
        return f"cdr-test-{self.tag}"

    @property
    def topics(self) -> dict[str, str]:
        """The topics set by env() and the changelog's documented default (the daemon may derive
        more from the group id; kafka_io.topic_names is the full list)."""
        t = {"records": f"t-{self.tag}.cdr.records",
             "subscribers": f"t-{self.tag}.cdr.subscribers",
             "outcomes": f"t-{self.tag}.cdr.verification-outcomes",
             "suspensions": f"t-{self.tag}.cdr.suspensions",
             "dlq": f"t-{self.tag}.cdr.records.dlq"}
        t["changelog"] = f"{self.group_id}.state-changelog"  # the documented default
        return t

    def env(self, **more: str) -> dict[str, str]:
        over = {"CDR_DETECTOR__KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
                "CDR_DETECTOR__KAFKA__GROUP_ID": self.group_id,
                "CDR_DETECTOR__KAFKA__CLIENT_ID": f"cdr-test-{self.tag}"}
        for kind in ("records", "subscribers", "outcomes", "suspensions", "dlq"):
            over[f"CDR_DETECTOR__KAFKA__TOPICS__{kind.upper()}"] = self.topics[kind]
        over.update(self.extra)
        over.update(more)
        return isolated_env(over)

    def cfg(self) -> dict:
        """What the daemon loads from env(): the same settings, for in-process helpers."""
        cfg = config_mod.load(environ=self.env())
        names = kafka_io.topic_names(cfg["kafka"])
        assert all(names.get(k) == v for k, v in self.topics.items()), \
            f"config does not resolve to the test topics: {names}"
        return cfg

    @property
    def kcfg(self) -> dict:
        return self.cfg()["kafka"]

    # -- Kafka views ---------------------------------------------------------------------------
    def ensure_topics(self) -> None:
        kafka_io.ensure_topics(self.kcfg)

    def end_offsets(self, kind: str) -> dict[int, int]:
        topic = self.topics[kind]
        c = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            parts = wait_until(lambda: c.partitions_for_topic(topic), 30, f"topic {topic} to exist")
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            return {tp.partition: off for tp, off in c.end_offsets(tps).items()}
        finally:
            c.close()

    def committed_offsets(self, kind: str = "records") -> dict[int, int]:
        """The group's committed offsets on one input topic, by partition (absent: none committed)."""
        topic = self.topics[kind]
        # A consumer of the group that never subscribes: committed() is an OffsetFetch, no join.
        c = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False,
                          client_id=f"cdr-test-offsets-{self.tag}")
        try:
            parts = wait_until(lambda: c.partitions_for_topic(topic), 30, f"topic {topic} to exist")
            out = {}
            for p in sorted(parts):
                off = c.committed(TopicPartition(topic, p))
                if off is not None and off >= 0:
                    out[p] = off
            return out
        finally:
            c.close(autocommit=False)

    def delete(self) -> None:
        """Best effort: drop this test's topics and consumer group from the broker."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"cdr-test-cleanup-{self.tag}")
        try:
            existing = set(admin.list_topics())
            names = set(self.topics.values()) | set(kafka_io.topic_names(self.kcfg).values())
            mine = sorted(t for t in names if t in existing)
            if mine:
                admin.delete_topics(mine)
            try:
                admin.delete_groups([self.group_id])
            except Exception:  # never created, or not empty yet: nothing to clean
                pass
        finally:
            admin.close()

    def messages(self, kind: str) -> list:
        return read_topic(self.kcfg, self.topics[kind])


# -- publishing ------------------------------------------------------------------------------------
def replay_cli(setup: KafkaSetup, cdrs: str | os.PathLike, subscribers: str | os.PathLike | None = None,
               speed: float | None = None, timeout: float = 120, env: dict[str, str] | None = None) -> dict:
    """`cdr-detector replay` as a subprocess; returns its printed counts."""
    cmd = cli() + ["replay", "--cdrs", str(cdrs)]
    if subscribers:
        cmd += ["--subscribers", str(subscribers)]
    if speed:
        cmd += ["--speed", str(speed)]
    proc = subprocess.run(cmd, env=env or setup.env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"replay failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def replay_inprocess(setup: KafkaSetup, cdrs: str | os.PathLike, subscribers: str | os.PathLike | None = None,
                     speed: float | None = None) -> dict:
    from detector.replay import replay

    return replay(setup.cfg(), str(cdrs), str(subscribers) if subscribers else None, speed=speed, progress=False)


# -- the daemon ------------------------------------------------------------------------------------
class DaemonProcess:
    """`cdr-detector run --plain-logs --metrics-port P` in a subprocess, logs in a file."""

    def __init__(self, setup: KafkaSetup, log_path: Path, env: dict[str, str] | None = None):
        self.setup = setup
        self.port = free_port()
        self.log_path = log_path
        self.env = env if env is not None else setup.env()
        self.env["CDR_DETECTOR__METRICS__PORT"] = str(self.port)
        self.proc: subprocess.Popen | None = None
        self._log = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "DaemonProcess":
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n===== start {time.strftime('%H:%M:%S')} port {self.port} =====\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(cli() + ["run", "--plain-logs", "--metrics-port", str(self.port)],
                                     env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(REPO_ROOT), start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"daemon exited with {self.proc.returncode if self.proc else None}:\n{self.log_tail()}")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM; the exit code (TimeoutError if it did not exit within `timeout` s)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"daemon did not exit within {timeout}s of SIGTERM:\n{self.log_tail()}") from None
        self.stop_seconds = time.monotonic() - t0
        self._close_log()
        return rc

    def kill9(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(timeout=30)
        self._close_log()
        return rc

    def cleanup(self) -> None:
        """Never leave a daemon running: SIGKILL whatever is still alive (by our own pid)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()
                self.proc.wait(timeout=30)
            except Exception:  # already gone
                pass
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "DaemonProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- HTTP ------------------------------------------------------------------------------------
    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:  # 503: the body still says why
            return err.code, err.read()

    def healthz(self) -> dict | None:
        """/healthz as a dict (with the HTTP status under `http`), or None while it does not answer."""
        try:
            status, body = self._get("/healthz")
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
            return None
        out = json.loads(body)
        out["http"] = status
        return out

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """/metrics as {(sample name, sorted label items): value}."""
        status, body = self._get("/metrics")
        assert status == 200, status
        out = {}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value (0.0 when absent); labels must match exactly."""
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def metric_by(self, name: str, label: str) -> dict[str, float]:
        return {dict(lbls)[label]: v for (n, lbls), v in self.metrics().items()
                if n == name and label in dict(lbls)}

    def records_total(self) -> dict[str, float]:
        return self.metric_by("cdr_detector_records_total", "result")

    # -- waiting ---------------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 45) -> dict:
        """Until /healthz says live and ready with every partition assigned."""
        def ready():
            self.assert_alive()
            h = self.healthz()
            if h and h.get("live") and h.get("ready") and h.get("assigned") == list(range(PARTITIONS)):
                return h
            return None
        return wait_until(ready, timeout, "the daemon to become ready", self.log_tail)

    def wait_caught_up(self, timeout: float = 60, quiet_s: float = 2.0) -> dict:
        """Until the daemon has processed and committed every record of the records topic: /healthz
        ready with lag 0, the group's committed offsets at the end of every partition, and the
        suspensions topic no longer growing for `quiet_s` seconds."""
        s = self.setup
        deadline = time.monotonic() + timeout
        last_out = None
        stable_since = None
        while True:
            self.assert_alive()
            h = self.healthz()
            ok = bool(h and h.get("ready") and h.get("lag") == 0 and h.get("assigned") == list(range(PARTITIONS)))
            if ok:
                end = s.end_offsets("records")
                committed = s.committed_offsets("records")
                ok = all(committed.get(p, 0 if off == 0 else -1) == off for p, off in end.items())
            if ok:
                out = s.end_offsets("suspensions")
                if out != last_out:
                    last_out, stable_since = out, time.monotonic()
                elif time.monotonic() - stable_since >= quiet_s:
                    return h
            else:
                last_out = stable_since = None
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon not caught up within {timeout}s; healthz {h}; "
                                   f"end {s.end_offsets('records')} committed {s.committed_offsets('records')}\n"
                                   f"{self.log_tail()}")
            time.sleep(0.25)


def wait_until(pred: Callable[[], Any], timeout: float, what: str, detail: Callable[[], str] | None = None,
               interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f"\n{detail()}" if detail else ""))
        time.sleep(interval)


# -- checking events -------------------------------------------------------------------------------
EVENT_KEYS = {"event_id", "ts", "msisdn", "action", "tier", "verification", "score", "reasons", "mode", "model"}
REASON_KEYS = {"code", "value", "typical", "text"}


def contract_violations(event: Any, cfg: dict, breaker_may_shadow: bool = False) -> list[str]:
    """What is wrong with one suspension event under the v1 contract and the tier settings.

    Internal `_` keys (the core's annotations, stripped before events leave) are ignored. With
    `breaker_may_shadow`, `shadow` on an enforce tier is accepted (the storm breaker's doing),
    never `enforce` on a shadow tier."""
    if not isinstance(event, dict):
        return [f"not an object: {event!r}"]
    event = {k: v for k, v in event.items() if not k.startswith("_")}
    bad = []
    if set(event) != EVENT_KEYS:
        bad.append(f"fields {sorted(event)} != {sorted(EVENT_KEYS)}")
    eid = event.get("event_id")
    if not (isinstance(eid, str) and eid):
        bad.append(f"event_id {eid!r}")
    ts = event.get("ts")
    if not (isinstance(ts, int) and not isinstance(ts, bool) and ts > 0):
        bad.append(f"ts {ts!r}")
    m = event.get("msisdn")
    if not (isinstance(m, str) and m.isascii() and m.isdigit() and 5 <= len(m) <= 15):
        bad.append(f"msisdn {m!r}")
    action, tier = event.get("action"), event.get("tier")
    if action not in ("suspend", "escalate", "restore"):
        bad.append(f"action {action!r}")
    if tier not in ("low", "high", "extreme"):
        bad.append(f"tier {tier!r}")
    else:
        tc = cfg["tiers"][tier]
        if event.get("verification") != tc["verification"]:
            bad.append(f"tier {tier} with verification {event.get('verification')!r} (config: {tc['verification']!r})")
        shadowed = breaker_may_shadow and tc["mode"] == "enforce" and event.get("mode") == "shadow"
        if event.get("mode") != tc["mode"] and not shadowed:
            bad.append(f"tier {tier} with mode {event.get('mode')!r} (config: {tc['mode']!r})")
    if event.get("mode") not in ("enforce", "shadow"):
        bad.append(f"mode {event.get('mode')!r}")
    score = event.get("score")
    if not (isinstance(score, (int, float)) and not isinstance(score, bool) and 0.0 <= score <= 1.0):
        bad.append(f"score {score!r}")
    reasons = event.get("reasons")
    if not isinstance(reasons, list):
        bad.append(f"reasons {reasons!r}")
    else:
        if action in ("suspend", "escalate") and not reasons:
            bad.append(f"{action} without reasons")
        for r in reasons:
            if not (isinstance(r, dict) and REASON_KEYS <= set(r) and isinstance(r.get("code"), str)
                    and r["code"] and isinstance(r.get("text"), str) and r["text"].strip()):
                bad.append(f"reason {r!r}")
    if event.get("model") != config_mod.model_id(cfg):
        bad.append(f"model {event.get('model')!r} (expected {config_mod.model_id(cfg)!r})")
    return bad


def diff_events(expected: dict[str, dict], got: dict[str, dict], limit: int = 10) -> str:
    """A readable difference between two event sets keyed by event_id ('' when equal)."""
    only_exp = sorted(set(expected) - set(got))
    only_got = sorted(set(got) - set(expected))
    differ = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if not (only_exp or only_got or differ):
        return ""
    lines = [f"backtest {len(expected)} events, daemon {len(got)} distinct: only in backtest {len(only_exp)}, "
             f"only in daemon {len(only_got)}, differing {len(differ)}"]
    for tag, keys, src in (("backtest only", only_exp, expected), ("daemon only", only_got, got)):
        for k in keys[:limit]:
            e = src[k]
            lines.append(f"  {tag}: {k} {e['msisdn']} {e['action']} {e['tier']} ts={e['ts']} score={e['score']}")
    for k in differ[:limit]:
        lines.append(f"  differ: {k}\n    backtest {expected[k]}\n    daemon   {got[k]}")
    return "\n".join(lines)


def decode_events(messages: list) -> list[dict]:
    return [orjson.loads(m.value) for m in messages]
