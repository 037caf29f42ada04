"""Helpers for the robustness tests (fuzz, disorder, storm, broker faults, security). Not a test module.

Complements tests/daemon_harness.py (imported, never edited): an extra, separately-run Kafka broker
(own port, run and data dirs, optional TLS listener), a contract checker that also accepts
breaker-shadowed decisions, the "broken feed" corruption of a CDR stream, and small HTTP helpers.
"""
from __future__ import annotations

import bisect
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson

try:  # tests/ on sys.path, or the repo root
    from daemon_harness import contract_violations, wait_until
except ImportError:  # pragma: no cover
    from tests.daemon_harness import contract_violations, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO_ROOT / "scripts" / "kafka-local.sh"



# -- events ---------------------------------------------------------------------------------------
def event_violations(event: Any, cfg: dict) -> list[str]:
    """The v1 contract check, accepting the storm breaker's shadow mode on enforce tiers."""
    return contract_violations(event, cfg, breaker_may_shadow=True)


def is_enforced_block(e: dict) -> bool:
    """An enforced suspension or escalation: what the storm breaker bounds."""
    return e["action"] in ("suspend", "escalate") and e["mode"] == "enforce"


def max_per_window(timestamps: Iterable[int], window_ms: int = 60_000) -> int:
    """The largest number of timestamps in any window (t - window_ms, t] of event time."""
    ts = sorted(timestamps)
    return max((bisect.bisect_right(ts, t) - bisect.bisect_right(ts, t - window_ms) for t in ts), default=0)


# -- data -----------------------------------------------------------------------------------------
# A broken feed: every call appears to go to a far province or a premium foreign destination,
# and nothing is answered (e.g. a mediation system that lost the peer-region lookup table).
BROKEN_REGIONS = ("INTL-881", "XJ", "INTL-882", "XZ", "INTL-53")


def corrupt(lines: Iterable[bytes], regions: tuple[str, ...] = BROKEN_REGIONS) -> list[bytes]:
    out = []
    for i, line in enumerate(lines):
        r = orjson.loads(line)
        r["peer_region"] = regions[i % len(regions)]
        r["answered"] = False
        r["duration_s"] = 0
        out.append(orjson.dumps(r))
    return out


# -- network --------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int = 2, spacing: int = 1000, lo: int = 20000, hi: int = 40000) -> list[int]:
    """n free ports p, p+spacing, ... (a broker's client/SSL and controller ports), chosen at random so
    that concurrent runs of the same test (other developers, CI) do not collide on fixed ports."""
    import random
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(lo, hi - spacing * n)
        ports = [base + i * spacing for i in range(n)]
        if not any(port_open(p) for p in ports):
            try:
                socks = []
                for p in ports:
                    s = socket.socket()
                    socks.append(s)
                    s.bind(("127.0.0.1", p))
            except OSError:
                continue
            finally:
                for s in socks:
                    s.close()
            return ports
    raise RuntimeError("no free ports")


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not 127.x (None if there is none)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            ip = s.getsockname()[0]
            if not ip.startswith("127."):
                return ip
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            ip = info[4][0]
            if not ip.startswith("127."):
                return ip
    except OSError:
        pass
    return None




# -- an extra broker ------------------------------------------------------------------------------
class ExtraBroker:
    """A second local broker (scripts/kafka-local.sh with its own port, run and data dirs), so the
    shared broker on 9092 is never touched. `stop()` keeps the data (a restart resumes it);
    `cleanup()` stops it (idempotent) — call it in a `finally`."""

    def __init__(self, run_dir: Path, port: int, extra_properties: Path | None = None,
                 controller_port: int | None = None):
        self.run_dir = Path(run_dir)
        self.port = port
        self.controller_port = controller_port or port + 1000
        self.extra_properties = extra_properties
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"KAFKA_PORT": str(self.port), "KAFKA_CONTROLLER_PORT": str(self.controller_port),
                    "KAFKA_RUN_DIR": str(self.run_dir), "KAFKA_DATA_DIR": str(self.run_dir / "data"),
                    "KAFKA_HEAP_OPTS": "-Xmx384m -Xms128m"})
        # The shared jar cache (var/kafka/lib) is reused: no second Maven resolution.
        if self.extra_properties is not None:
            env["KAFKA_EXTRA_PROPERTIES"] = str(self.extra_properties)
        else:
            env.pop("KAFKA_EXTRA_PROPERTIES", None)
        return env

    def _script(self, cmd: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(KAFKA_SCRIPT), cmd], cwd=REPO_ROOT, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def start(self, attempts: int = 3) -> float:
        """Start and wait until it answers; returns the seconds it took. Retried: right after a stop
        the old JVM's listening sockets can still hold the ports for a moment."""
        t0 = time.monotonic()
        for attempt in range(attempts):
            proc = self._script("start")
            if proc.returncode == 0:
                return time.monotonic() - t0
            if "in use" not in proc.stdout + proc.stderr + self.log_tail() or attempt == attempts - 1:
                break
            self._script("stop", timeout=120)
            time.sleep(5)
        raise RuntimeError(f"kafka-local.sh start (port {self.port}) failed ({proc.returncode}):\n"
                           f"{proc.stdout}\n{proc.stderr}\n{self.log_tail()}")

    def stop(self) -> float:
        t0 = time.monotonic()
        proc = self._script("stop", timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"kafka-local.sh stop (port {self.port}) failed:\n{proc.stdout}\n{proc.stderr}")
        return time.monotonic() - t0

    def running(self) -> bool:
        return self._script("status", timeout=30).returncode == 0

    def pid(self) -> int | None:
        try:
            return int((self.run_dir / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def log_tail(self, n: int = 40) -> str:
        out = []
        for name in ("kafka.out", "server.log"):
            p = self.run_dir / name
            if p.exists():
                out.append(f"--- {p} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(out)

    def cleanup(self, remove: bool = True) -> None:
        try:
            self._script("stop", timeout=120)
        finally:
            if remove:
                shutil.rmtree(self.run_dir / "data", ignore_errors=True)
