"""Every PromQL query of deploy/ against a real Prometheus scraping detector.metrics.

scripts/prometheus-local.sh starts Prometheus (installing it if needed) with a
config that scrapes a `serve()` endpoint of this test process every second and
loads deploy/prometheus/rules/. Each query of scripts/check_dashboards.py's
all_queries() must then be accepted by the HTTP API. Queries that return no data
are reported as a warning, not a failure: some only have data with real traffic
(an hour of history, an alert that should not fire); asserting data will come
with the real daemon.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import pytest

from detector.metrics import DLQ_REASONS, INVALID_REASONS, REBALANCE_KINDS, TIERS, Metrics, serve

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "prometheus-local.sh"


def _load_check_dashboards():
    spec = importlib.util.spec_from_file_location("check_dashboards", ROOT / "scripts" / "check_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cd = _load_check_dashboards()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def traffic(m: Metrics, stop: threading.Event) -> None:
    """Keep every metric moving, so that rate() and histogram_quantile() have something to show."""
    rng = random.Random(7)
    m.storm_breaker.set(0)
    for p in range(3):
        m.lag.labels(partition=str(p)).set(rng.randint(0, 500))
    while not stop.is_set():
        m.records.labels(result="ok").inc(rng.randint(50, 100))
        m.records.labels(result="invalid").inc(rng.randint(0, 3))
        m.records.labels(result="duplicate").inc(rng.randint(0, 1))
        m.invalid.labels(reason=rng.choice(INVALID_REASONS)).inc()
        m.dlq.labels(reason=rng.choice(DLQ_REASONS)).inc()
        for _ in range(20):
            m.score.observe(rng.random())
        tier = rng.choice(TIERS)
        for action in ("suspend", "escalate", "restore"):
            m.decisions.labels(action=action, tier=tier, mode="enforce").inc(rng.randint(1, 3))
        m.decisions.labels(action="suspend", tier=tier, mode="shadow").inc()
        m.decision_latency.observe(rng.uniform(0.001, 2))
        m.outcomes.labels(tier=tier, outcome=rng.choice(("cleared", "confirmed_fraud"))).inc()
        m.restores.labels(tier=tier, cause=rng.choice(("cleared", "automatic"))).inc()
        m.suspension_to_restore.labels(tier=tier).observe(rng.uniform(60, 86400))
        m.resuspensions.labels(tier=tier).inc()
        m.suspended_lines.labels(tier=tier).set(rng.randint(0, 50))
        m.numbers_tracked.set(rng.randint(10_000, 20_000))
        m.batch_seconds.observe(rng.uniform(0.001, 0.2))
        m.commit_seconds.observe(rng.uniform(0.001, 0.05))
        m.checkpoint_seconds.observe(rng.uniform(0.01, 1))
        m.restore_records.inc(rng.randint(100, 1000))
        m.restore_seconds.observe(rng.uniform(0.5, 5))
        m.rebalances.labels(kind=rng.choice(REBALANCE_KINDS)).inc()
        m.last_event_ts.set(time.time() - rng.uniform(0, 2))
        stop.wait(0.2)


def query(prom_url: str, expr: str) -> dict:
    url = f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as err:  # 400 for a bad query, with a JSON error body
        return json.load(err)


def wait_for(prom_url: str, expr: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if query(prom_url, expr).get("data", {}).get("result"):
            return
        time.sleep(0.5)
    pytest.fail(f"Prometheus had no result for {expr} after {timeout}s")


@pytest.fixture
def prometheus(tmp_path):
    """A Prometheus scraping a live Metrics endpoint of this process; yields its URL."""
    metrics = Metrics(version="test", model="test-model")
    stop = threading.Event()
    feeder = threading.Thread(target=traffic, args=(metrics, stop), daemon=True)
    feeder.start()
    server = serve(metrics, "127.0.0.1", 0)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {ROOT}/deploy/prometheus/rules/*.yml
scrape_configs:
  - job_name: cdr-detector
    static_configs:
      - targets: ["127.0.0.1:{server.port}"]
""")
    env = {**os.environ, "PROM_PORT": str(port), "PROM_CONFIG": str(config)}
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(ROOT / "var" / "prometheus" / str(port), ignore_errors=True)
        server.shutdown()
        stop.set()
        feeder.join(timeout=5)


def test_every_query_is_valid_on_a_real_prometheus(prometheus):
    wait_for(prometheus, 'up{job="cdr-detector"} == 1')
    # Recording rules need two scrapes for rate(), then one evaluation.
    wait_for(prometheus, "cdr_detector:records:rate5m > 0")

    queries = cd.all_queries()
    assert len(queries) > 50
    errors, empty = [], []
    for q in queries:
        answer = query(prometheus, q.expr)
        if answer.get("status") != "success":
            errors.append(f"{q.source}: {answer.get('errorType')}: {answer.get('error')}")
        elif not answer["data"]["result"]:
            empty.append(q.source)
    assert errors == [], "\n".join(errors)
    if empty:
        warnings.warn(f"{len(empty)} of {len(queries)} queries returned no data (expected for alerts "
                      "that should not fire and for long look-backs):\n  " + "\n  ".join(empty))
