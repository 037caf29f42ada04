"""Every dashboard panel and every rule of deploy/, against a real Prometheus scraping the REAL daemon.

The stack (`live_stack`): the local Kafka broker (tests/kafka_broker.py), a slice of the labelled
sample plus verification outcomes derived from a backtest of that slice (scripts/derive_outcomes.py)
and a few invalid records, published with `cdr-detector replay --cdrs --subscribers --outcomes`; then
`cdr-detector run` as a subprocess on unique topics and group (environment variables) consumes it
all, while Prometheus (scripts/prometheus-local.sh, a generated config scraping the daemon every
second and loading deploy/prometheus/rules/, on a free port) records the metrics.

Driving the data so that every panel has something to show:
- The low tier runs at 0.1 (and automatic restore below 0.05) so that some legitimate lines ARE
  suspended: verification clears them, lines are restored (by outcome and automatically), some are
  suspended again — the false-positive dashboard is about exactly that and would otherwise be flat.
- A second replica joins the consumer group after the first has caught up and leaves again: the
  group rebalances twice and each replica restores partitions' state from the changelog, so the
  rebalance and state-restore panels have data (a restore at start-up, on an empty changelog and
  before the first scrape, would leave them at zero).
The records are published before the daemon starts, so it merges records and outcomes in exact event
time (published while it runs, outcomes could overtake the records they follow).

What must hold:
- dashboard panel queries, variable queries and recording rules: accepted, a non-empty result now,
  and at least one finite value over the run (a panel showing only NaN shows nothing);
- alert expressions and alert-like annotations (they select only what is wrong, so on a healthy run
  they are rightly empty): accepted as written, and non-empty once every comparison is given the
  `bool` modifier (comparisons return 0/1 instead of filtering) and `offset` look-backs are dropped
  (a run of minutes has no data an hour ago) — i.e. every series the alert reads exists and joins;
  every metric an alert names returns data; Prometheus evaluates every rule with health "ok".
"""
from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

try:  # tests/ on sys.path (no tests/__init__.py) or the repo root (a package)
    from daemon_harness import (DaemonProcess, KafkaSetup, cli, free_port, make_slice, read_lines, wait_until,
                                write_lines)
    from kafka_broker import ensure_broker
except ImportError:  # pragma: no cover
    from tests.daemon_harness import (DaemonProcess, KafkaSetup, cli, free_port, make_slice, read_lines,
                                      wait_until, write_lines)
    from tests.kafka_broker import ensure_broker

pytestmark = [pytest.mark.kafka, pytest.mark.prometheus]

ROOT = Path(__file__).resolve().parent.parent
PROM_SCRIPT = ROOT / "scripts" / "prometheus-local.sh"
SAMPLE = Path(os.environ.get("CDR_SHARED_DIR") or next((p for p in (Path(__file__).resolve().parents[1].parent / "shared", Path("/work/shared")) if p.exists()), "/work/shared")) / "data" / "sample"
PARTITIONS = 3

SLICE = {"benign": 500, "fraud_per_scheme": 5, "seed": 11}
DETECTOR_SETTINGS = {"CDR_DETECTOR__TIERS__LOW__THRESHOLD": "0.1", "CDR_DETECTOR__RESTORE__BELOW_SCORE": "0.05"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


cd = _load("check_dashboards")


# -- Prometheus HTTP API -------------------------------------------------------------------------
def api(prom: str, path: str, **params) -> dict:
    url = f"{prom}{path}" + (("?" + urllib.parse.urlencode(params)) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as err:  # 400/422 for a bad query, with a JSON error body
        return json.load(err)


def instant(prom: str, expr: str) -> dict:
    return api(prom, "/api/v1/query", query=expr)


def finite_over(prom: str, expr: str, start: float, end: float, step: float = 2.0) -> bool:
    ans = api(prom, "/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=str(step))
    return any(not math.isnan(float(v)) for s in ans.get("data", {}).get("result", []) for _, v in s["values"])


def wait_prom(prom: str, expr: str, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    while True:
        res = instant(prom, expr).get("data", {}).get("result")
        if res:
            return res
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prometheus had no result for {expr} after {timeout}s")
        time.sleep(0.5)


# -- alert expressions ----------------------------------------------------------------------------
_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")
_OFFSET = re.compile(r"\s+offset\s+-?(?:\d+(?:ms|[smhdwy]))+")


def non_filtering(expr: str) -> str:
    """The expression with every comparison made non-filtering (`bool`) and offsets dropped.

    Label matchers ({...}), ranges ([...]) and string literals are left alone: only binary
    comparison operators between expressions get the modifier.
    """
    out, i, braces, brackets = [], 0, 0, 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            j = i + 1
            while j < len(expr) and expr[j] != c:
                j += 2 if expr[j] == "\\" and c != "`" else 1
            out.append(expr[i:j + 1])
            i = j + 1
            continue
        braces += (c == "{") - (c == "}")
        brackets += (c == "[") - (c == "]")
        m = _COMPARISON.match(expr, i) if braces == 0 and brackets == 0 else None
        if m:
            out.append(m.group())
            i = m.end()
            if not re.match(r"\s*bool\b", expr[i:]):
                out.append(" bool")
            continue
        out.append(c)
        i += 1
    return _OFFSET.sub("", "".join(out))


def test_non_filtering_rewrite():
    assert non_filtering('up{job="a"} == 0 or absent(up{job=~"a|b"})') == 'up{job="a"} == bool 0 or absent(up{job=~"a|b"})'
    assert non_filtering("a > 3 * sum(rate(x{m!=\"s\"}[1h] offset 5m)) and b >= bool 2") == \
        'a > bool 3 * sum(rate(x{m!="s"}[1h])) and b >= bool 2'
    assert non_filtering("x <= 1 unless y != 2") == "x <= bool 1 unless y != bool 2"


def is_alert_like(q) -> bool:
    return ": alert " in q.source or ": annotation " in q.source


# -- the stack ------------------------------------------------------------------------------------
INVALID = [
    b"this is not json",
    b"[1, 2, 3]",
    b'{"record_id": "poison-missing-fields"}',
    b"\xff\xfe\xfd not utf-8",
]


@dataclass
class Stack:
    prom: str
    start: float
    daemons: list
    setup: KafkaSetup
    workdir: Path
    counts: dict


def _prom_config(path: Path, ports: list[int]) -> Path:
    targets = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    path.write_text(f"""\
# Generated by tests/test_prometheus_daemon.py: deploy/prometheus/prometheus.yml with 1 s intervals,
# scraping the test's two daemon replicas.
global:
  scrape_interval: 1s
  evaluation_interval: 1s
  external_labels:
    service: cdr-detector
rule_files:
  - {ROOT}/deploy/prometheus/rules/*.yml
scrape_configs:
  - job_name: cdr-detector
    metrics_path: /metrics
    static_configs:
      - targets: [{targets}]
""")
    return path


def _run(cmd: list[str], env: dict, timeout: float = 300) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _assigned(d: DaemonProcess) -> list[int] | None:
    h = d.healthz()
    return h.get("assigned") if h and h.get("ready") else None


@contextlib.contextmanager
def live_stack(workdir: Path):
    """The whole stack, fed and settled; everything it started is stopped on exit."""
    if not (SAMPLE / "cdrs.jsonl.gz").exists():
        pytest.skip(f"labelled sample not found in {SAMPLE}")
    workdir.mkdir(parents=True, exist_ok=True)
    setup = KafkaSetup(ensure_broker())
    env = setup.env(**DETECTOR_SETTINGS)

    # data: the slice, a backtest of it, outcomes derived from that backtest, invalid records
    sl = workdir / "slice"
    make_slice(sl, **SLICE)
    events = workdir / "backtest-events.jsonl"
    _run(cli() + ["backtest", "--cdrs", str(sl / "cdrs.jsonl.gz"), "--subscribers", str(sl / "subscribers.jsonl"),
                  "--out", str(events), "--quiet"], env)
    outcomes = workdir / "outcomes.jsonl"
    _run([sys.executable, str(ROOT / "scripts" / "derive_outcomes.py"), "--labels", str(sl / "labels.csv"),
          "--events", str(events), "--out", str(outcomes)], env)
    template = orjson.loads(read_lines(sl / "cdrs.jsonl.gz")[0])
    bad_value = orjson.dumps(dict(template, record_id="poison-negative-duration", duration_s=-5))
    cdrs = write_lines(workdir / "cdrs-with-invalid.jsonl.gz", read_lines(sl / "cdrs.jsonl.gz") + INVALID + [bad_value])
    counts = {"records": len(read_lines(sl / "cdrs.jsonl.gz")), "invalid": len(INVALID) + 1,
              "outcomes": len(read_lines(outcomes)),
              "cleared": sum(orjson.loads(x)["outcome"] == "cleared" for x in read_lines(outcomes))}

    daemons = [DaemonProcess(setup, workdir / f"daemon-{i}.log", env=dict(env)) for i in (1, 2)]
    prom_port = free_port()
    prom_env = {**os.environ, "PROM_PORT": str(prom_port),
                "PROM_CONFIG": str(_prom_config(workdir / "prometheus.yml", [d.port for d in daemons]))}
    prom = f"http://127.0.0.1:{prom_port}"
    try:
        proc = subprocess.run(["bash", str(PROM_SCRIPT), "start"], env=prom_env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        start = time.time()
        # The daemon is up and scraped before any record is sent: a fast daemon would otherwise
        # finish the slice before Prometheus first scrapes it, and every rate() would be flat.
        first, second = daemons
        first.start()
        first.wait_ready(timeout=90)
        wait_prom(prom, f'up{{instance="127.0.0.1:{first.port}"}} == 1')
        out = _run(cli() + ["replay", "--cdrs", str(cdrs), "--subscribers", str(sl / "subscribers.jsonl"),
                            "--outcomes", str(outcomes)], env)
        sent = json.loads(out.strip().splitlines()[-1])
        assert sent["records"] == counts["records"] + counts["invalid"] and sent["outcomes"] == counts["outcomes"]
        first.wait_caught_up(timeout=300)
        # scale out: the second replica takes partitions and restores their state from the changelog ...
        second.start()
        wait_until(lambda: (_assigned(second) or None) and (len(_assigned(first) or []) < PARTITIONS),
                   90, "the second replica to take partitions", second.log_tail)
        wait_prom(prom, f'cdr_detector_state_restore_records_total{{instance="127.0.0.1:{second.port}"}} > 0', 30)
        time.sleep(3)
        # ... and in again: it stops cleanly and the first replica takes everything back
        assert second.terminate(timeout=60) == 0, second.log_tail()
        wait_until(lambda: _assigned(first) == list(range(PARTITIONS)), 90, "the first replica to own all partitions",
                   first.log_tail)
        first.wait_caught_up(timeout=120)
        time.sleep(4)  # a few scrapes and rule evaluations after the last change
        yield Stack(prom, start, daemons, setup, workdir, counts)
    finally:
        for d in daemons:
            if d.alive():
                try:
                    d.terminate(timeout=60)
                except Exception:
                    pass
            d.cleanup()
        subprocess.run(["bash", str(PROM_SCRIPT), "stop"], env=prom_env, capture_output=True, timeout=120)
        shutil.rmtree(ROOT / "var" / "prometheus" / str(prom_port), ignore_errors=True)
        if hasattr(setup, "delete"):
            try:
                setup.delete()
            except Exception as exc:  # cleanup must not turn a passing test into an error
                print(f"could not delete the test topics: {exc!r}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with live_stack(tmp_path_factory.mktemp("prometheus-daemon")) as s:
        yield s


# -- the checks -----------------------------------------------------------------------------------
def test_the_run_produced_what_the_panels_need(stack):
    prom, first = stack.prom, stack.daemons[0]
    assert stack.counts["cleared"] > 0, "the slice must make the detector suspend legitimate lines"
    ok = first.metric("cdr_detector_records_total", result="ok")
    assert ok > 0
    dlq = {k: v for k, v in first.metric_by("cdr_detector_dlq_records_total", "reason").items() if v}
    assert dlq == {"not_json": 1, "not_object": 1, "missing_field": 1, "bad_utf8": 1, "bad_value": 1}
    total = instant(prom, 'sum(cdr_detector_decisions_total{action="restore"})')["data"]["result"]
    assert total and float(total[0]["value"][1]) > 0, "no line was restored"
    assert first.alive()


def test_rejected_records_reach_the_invalid_record_panels(stack):
    """Rejected CDRs count as invalid records too, not only as dead letters (fixed in ef540ae: before,
    the daemon parsed outside Pipeline.parse and the invalid-ratio panels, rule and alert saw 0)."""
    first = stack.daemons[0]
    assert first.metric("cdr_detector_records_total", result="invalid") == stack.counts["invalid"]
    assert sum(first.metric_by("cdr_detector_invalid_records_total", "reason").values()) == stack.counts["invalid"]
    res = instant(stack.prom, "sum(cdr_detector:invalid_records:rate5m)")["data"]["result"]
    assert res and float(res[0]["value"][1]) > 0


def test_every_dashboard_and_rule_query_returns_data(stack):
    prom, end = stack.prom, time.time()
    queries = cd.all_queries()
    assert len(queries) > 50
    errors, empty, nan_only, missing_series = [], [], [], []
    for q in queries:
        answer = instant(prom, q.expr)
        if answer.get("status") != "success":
            errors.append(f"{q.source}: {answer.get('errorType')}: {answer.get('error')}")
            continue
        if is_alert_like(q):
            probe = non_filtering(q.expr)
            ans = instant(prom, probe)
            if ans.get("status") != "success" or not ans["data"]["result"]:
                empty.append(f"{q.source} (as `{probe}`): {ans.get('error') or 'no data'}")
            for name in sorted(cd.referenced_metrics(q.expr)):
                if not instant(prom, f'{{__name__="{name}"}}').get("data", {}).get("result"):
                    missing_series.append(f"{q.source}: {name}")
            continue
        if not answer["data"]["result"]:
            empty.append(q.source)
        elif not finite_over(prom, q.expr, stack.start, end):
            nan_only.append(q.source)
    assert errors == [], "\n".join(errors)
    assert empty == [], "queries without data:\n" + "\n".join(empty)
    assert missing_series == [], "series read by alerts that do not exist:\n" + "\n".join(missing_series)
    assert nan_only == [], "queries whose every value over the run is NaN:\n" + "\n".join(nan_only)


def test_prometheus_evaluates_every_rule_cleanly(stack):
    groups = api(stack.prom, "/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    expected = {q.source.split(": ", 1)[1].split(" ", 1)[1] for q in cd.all_queries()
                if ": alert " in q.source or ": record " in q.source}
    assert {r["name"] for r in rules} == expected
    bad = [f"{r['name']}: {r.get('health')} {r.get('lastError')}" for r in rules if r.get("health") != "ok" or r.get("lastError")]
    assert bad == []


def test_render_dashboards_draws_every_dashboard(stack, tmp_path):
    rd = _load("render_dashboards")
    out = tmp_path / "png"
    assert rd.main(["--prometheus", stack.prom, "--minutes", str(max(2.0, (time.time() - stack.start) / 60 + 0.5)),
                    "--out-dir", str(out)]) == 0
    for path in sorted(cd.DASHBOARD_DIR.glob("*.json")):
        png = out / f"dashboard-{path.stem}.png"
        blob = png.read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 50_000, png
        res = rd.render(json.loads(path.read_text()), stack.prom, tmp_path / "again.png",
                        minutes=(time.time() - stack.start) / 60 + 0.5)
        assert res["empty"] == [], f"{path.name}: panels without data {res['empty']}"
