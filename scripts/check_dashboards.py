#!/usr/bin/env python3
"""Check the Grafana dashboards and collect every PromQL query of deploy/.

Grafana cannot run here, so a dashboard is checked for what file provisioning
and our panels need: a JSON schema (deploy/grafana/dashboard.schema.json) for
the structure, plus what a schema cannot say (unique panel ids and uids,
panels inside the 24-column grid and not overlapping, only defined variables
used). ``all_queries()`` returns every expression of every dashboard and rule
file with the Grafana variables filled in, so that promtool (offline) or a real
Prometheus (tests/test_prometheus_server.py) can parse and evaluate them.

Usage: scripts/check_dashboards.py [--no-promtool]
Exit status 0 when everything is valid. Needs PyYAML; jsonschema for the
schema check; promtool (scripts/prometheus-local.sh install) for parsing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"
SCHEMA_PATH = ROOT / "deploy" / "grafana" / "dashboard.schema.json"
RULE_DIR = ROOT / "deploy" / "prometheus" / "rules"

# Grafana's built-in variables, set to what Grafana would use for a 15s scrape
# interval. $__rate_interval must cover at least two scrapes.
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__interval": "30s", "__range": "6h"}
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*\w+\s*\)$")


class Query(NamedTuple):
    """One PromQL expression, ready for Prometheus, and where it comes from."""

    source: str  # e.g. "overview.json: panel 3 'Records/s' A" or "alerts.yml: alert CdrDetectorDown"
    expr: str


def load_dashboards() -> dict[Path, dict]:
    return {path: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def rule_files() -> list[Path]:
    return sorted(RULE_DIR.glob("*.yml"))


def variable_values(dashboard: dict) -> dict[str, str]:
    """What each variable expands to: the "All" value for multi-selects, else the current one."""
    values = dict(BUILTIN_VARIABLES)
    for var in dashboard.get("templating", {}).get("list", []):
        current = (var.get("current") or {}).get("value")
        if isinstance(current, list):
            current = current[0] if current else None
        if var.get("includeAll") and var.get("allValue") and current in (None, "$__all"):
            values[var["name"]] = var["allValue"]
        elif current is not None:
            values[var["name"]] = str(current)
    return values


def expand(expr: str, values: dict[str, str]) -> str:
    """Replace $var and ${var} by their value; KeyError names an undefined variable."""
    return _VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)


def dashboard_queries(name: str, dashboard: dict) -> list[Query]:
    values = variable_values(dashboard)
    queries = []
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            source = f"{name}: panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}"
            queries.append(Query(source, expand(target["expr"], values)))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            queries.append(Query(f"{name}: annotation {annotation['name']!r}", expand(annotation["expr"], values)))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else (query or "")
        match = _LABEL_VALUES.match(text.strip())
        if match:  # label_values(selector, label): the selector is PromQL
            queries.append(Query(f"{name}: variable {var['name']}", expand(match.group(1), values)))
    return queries


def rule_queries(path: Path) -> list[Query]:
    queries = []
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            kind, name = ("alert", rule["alert"]) if "alert" in rule else ("record", rule["record"])
            queries.append(Query(f"{path.name}: {kind} {name}", rule["expr"].strip()))
    return queries


def all_queries() -> list[Query]:
    """Every PromQL expression in every dashboard and rule file, variables expanded."""
    queries = []
    for path, dashboard in load_dashboards().items():
        queries += dashboard_queries(path.name, dashboard)
    for path in rule_files():
        queries += rule_queries(path)
    return queries


def recording_rule_names() -> set[str]:
    return {q.source.split(": record ", 1)[1] for q in all_queries() if ": record " in q.source}


_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
             "offset", "bool", "inf", "nan", "atan2"}


def referenced_metrics(expr: str) -> set[str]:
    """Metric (or recording-rule) names an expression selects.

    Strings, label matchers, grouping clauses and durations are blanked out
    first; what remains as a bare identifier not followed by "(" is a name.
    """
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"#[^\n]*", " ", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", s):
        if match.group(1).lower() not in _KEYWORDS:
            names.add(match.group(1))
    return names


def _grid_errors(panels: list[dict]) -> list[str]:
    errors, placed = [], []
    for panel in panels:
        pos = panel.get("gridPos") or {}
        if not all(k in pos for k in "xywh"):
            continue  # reported by the schema
        x, y, w, h = pos["x"], pos["y"], pos["w"], pos["h"]
        if x + w > 24:
            errors.append(f"panel {panel.get('id')}: gridPos x+w = {x + w} > 24")
        for other, (ox, oy, ow, oh) in placed:
            if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                errors.append(f"panel {panel.get('id')} overlaps panel {other}")
        placed.append((panel.get("id"), (x, y, w, h)))
    return errors


def check_dashboard(dashboard: dict, schema: dict) -> list[str]:
    """Errors of one dashboard; empty when it is fine."""
    import jsonschema  # imported here: all_queries() must work without it

    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in sorted(validator.iter_errors(dashboard), key=lambda e: list(map(str, e.path)))]
    panels = dashboard.get("panels", [])
    ids = [p.get("id") for p in panels]
    errors += [f"panel id {i} used more than once" for i in sorted({i for i in ids if ids.count(i) > 1})]
    errors += _grid_errors(panels)
    try:
        dashboard_queries("", dashboard)
    except KeyError as exc:
        errors.append(f"undefined variable ${exc.args[0]}")
    return errors


def check_all_dashboards() -> dict[str, list[str]]:
    """Errors per dashboard file name (including uids shared between files)."""
    schema = json.loads(SCHEMA_PATH.read_text())
    dashboards = load_dashboards()
    result = {path.name: check_dashboard(d, schema) for path, d in dashboards.items()}
    seen: dict[str, str] = {}
    for path, d in dashboards.items():
        uid = d.get("uid")
        if uid in seen:
            result[path.name].append(f"uid {uid!r} also used by {seen[uid]}")
        seen.setdefault(uid, path.name)
    return result


def promtool_parse(queries: list[Query]) -> tuple[bool, str]:
    """Parse expressions with promtool, offline, by checking them as recording rules.

    promtool has no "parse this PromQL" command; `promtool check rules` parses
    every rule's expression without a server, which is what we need.
    """
    promtool = shutil.which("promtool")
    if promtool is None:
        return False, "promtool not found: run scripts/prometheus-local.sh install"
    rules = [{"record": f"check:query_{i}", "expr": q.expr} for i, q in enumerate(queries)]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}, f)
    try:
        proc = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    finally:
        Path(f.name).unlink()
    output = proc.stdout + proc.stderr
    for i, q in enumerate(queries):  # point at the source, not at the synthetic rule
        output = output.replace(f"check:query_{i}\"", f"check:query_{i}\" ({q.source})")
    return proc.returncode == 0, output


def promtool_check_rules() -> tuple[bool, str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        return False, "promtool not found: run scripts/prometheus-local.sh install"
    proc = subprocess.run([promtool, "check", "rules", *map(str, rule_files())], capture_output=True, text=True)
    return proc.returncode == 0, proc.stdout + proc.stderr


def main(argv: list[str]) -> int:
    ok = True
    for name, errors in check_all_dashboards().items():
        print(f"{name}: {'ok' if not errors else 'INVALID'}")
        for error in errors:
            print(f"  {error}")
        ok &= not errors
    queries = all_queries()
    print(f"{len(queries)} queries in dashboards and rule files")
    if "--no-promtool" not in argv:
        for label, (passed, output) in (("rule files", promtool_check_rules()),
                                        ("dashboard queries", promtool_parse(
                                            [q for q in queries if q.source.split(":")[0].endswith(".json")]))):
            print(f"promtool {label}: {'ok' if passed else 'FAILED'}")
            if not passed:
                print(output)
            ok &= passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
