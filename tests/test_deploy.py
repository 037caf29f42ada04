"""deploy/: Prometheus config, rules and their unit tests, Grafana provisioning and dashboards.

promtool is required, not optional: a missing promtool FAILS these tests (CI
installs it with `scripts/prometheus-local.sh install`), so broken rules can
never pass unnoticed because a tool was absent.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from detector.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"


def _load_check_dashboards():
    spec = importlib.util.spec_from_file_location("check_dashboards", ROOT / "scripts" / "check_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # NamedTuple needs its module registered
    spec.loader.exec_module(module)
    return module


cd = _load_check_dashboards()


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install it with `scripts/prometheus-local.sh install` "
                    "(Debian package prometheus); these checks must not be skipped")
    return path


def run(*cmd: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=ROOT)


def exposed_metric_names() -> set[str]:
    """Every sample name detector/metrics.py can expose, derived from each family's type."""
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created")}
    return {fam.name + s for fam in Metrics().registry.collect() for s in suffixes[fam.type]}


def rules(kind: str) -> list[dict]:
    found = []
    for path in sorted((PROM / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [r for r in group["rules"] if kind in r]
    return found


def rule_tests() -> list[dict]:
    groups = []
    for path in sorted((PROM / "tests").glob("*.yml")):
        groups += yaml.safe_load(path.read_text())["tests"]
    return groups


# --- promtool --------------------------------------------------------------------

def test_rule_files_are_valid(promtool):
    proc = run(promtool, "check", "rules", *map(str, sorted((PROM / "rules").glob("*.yml"))))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_pass(promtool):
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests
    proc = run(promtool, "test", "rules", *map(str, tests))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_config_is_valid(promtool):
    proc = run(promtool, "check", "config", str(PROM / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_config_scrapes_the_detector_with_all_rule_files():
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "cdr-detector"]
    assert job["static_configs"][0]["targets"] == ["detector:9400"]
    assert sorted(config["rule_files"]) == sorted(f"rules/{p.name}" for p in (PROM / "rules").glob("*.yml"))


def test_exposition_passes_promtool_lint(promtool):
    m = Metrics()
    m.lag.labels(partition="3").set(7)
    proc = run(promtool, "check", "metrics", stdin=generate_latest(m.registry).decode())
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_dashboard_queries_parse(promtool):
    queries = [q for q in cd.all_queries() if ".json:" in q.source]
    assert len(queries) > 20
    ok, output = cd.promtool_parse(queries)
    assert ok, output


# --- what the rules and their tests cover -------------------------------------------

def test_every_alert_is_tested_firing_and_not_firing():
    firing, quiet = set(), set()
    for group in rule_tests():
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {r["alert"] for r in rules("alert")}
    assert alerts == {"CdrDetectorDown", "ConsumerLagHigh", "InvalidRecordRateHigh",
                      "OverturnRateAboveBudget", "SuspensionRateSpike", "StormBreakerTripped",
                      "SharedFactsRecordsSkipped"}
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested quiet"


def test_every_recording_rule_is_tested():
    tested = " ".join(case["expr"] for group in rule_tests() for case in group.get("promql_expr_test", []))
    untested = {r["record"] for r in rules("record") if r["record"] not in tested}
    assert untested == set()


def test_alerts_carry_severity_summary_description_and_runbook():
    for rule in rules("alert"):
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_every_metric_used_in_rules_and_dashboards_exists():
    known = exposed_metric_names() | cd.recording_rule_names() | {"up"}
    used: dict[str, list[str]] = {}
    for query in cd.all_queries():
        for name in cd.referenced_metrics(query.expr):
            used.setdefault(name, []).append(query.source)
    assert len(used) > 20
    unknown = {name: sources for name, sources in used.items() if name not in known}
    assert unknown == {}, "names used in deploy/ but not defined in detector/metrics.py or recording.yml"


def test_referenced_metrics_parser():
    expr = ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="b{c} d"}[5m] offset 1h)))'
            ' / on (job) group_left (tier) rec:rule:rate5m > bool 1e-9 and time() - up')
    assert cd.referenced_metrics(expr) == {"a_bucket", "rec:rule:rate5m", "up"}


# --- Grafana --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["overview.json", "false-positives.json", "pipeline-health.json"])
def test_dashboard_is_valid(name):
    errors = cd.check_all_dashboards()
    assert name in errors, f"missing dashboard {name}"
    assert errors[name] == []


def test_dashboard_checker_catches_mistakes():
    import copy
    import json

    schema = json.loads(cd.SCHEMA_PATH.read_text())
    good = json.loads((GRAFANA / "dashboards" / "overview.json").read_text())
    assert cd.check_dashboard(good, schema) == []
    bad = copy.deepcopy(good)
    bad["panels"][1]["id"] = bad["panels"][0]["id"]
    bad["panels"][2]["gridPos"] = dict(bad["panels"][3]["gridPos"])
    bad["panels"][4]["targets"][0]["expr"] += ' + foo{x="$nope"}'
    del bad["panels"][5]["targets"][0]["datasource"]
    del bad["uid"]
    errors = "\n".join(cd.check_dashboard(bad, schema))
    for expected in ("used more than once", "overlaps", "undefined variable $nope", "'datasource' is a required",
                     "'uid' is a required"):
        assert expected in errors


def test_grafana_provisioning():
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [ds] = datasources["datasources"]
    assert (ds["type"], ds["uid"]) == ("prometheus", "prometheus")
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_check_dashboards_script_passes(promtool):
    proc = run(sys.executable, str(ROOT / "scripts" / "check_dashboards.py"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
