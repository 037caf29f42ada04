"""deploy/Dockerfile, deploy/docker-compose.yml and deploy/systemd/cdr-detector.service.

Docker does not run here, so the compose file is checked for its structure with PyYAML (services,
KRaft settings, mounts pointing at files of this repository, Prometheus scraping the detector
service on its metrics port, Grafana's datasource pointing at the Prometheus service), the
Dockerfile by reading its instructions and running its HEALTHCHECK command against a live metrics
endpoint, and the systemd unit with `systemd-analyze verify` (or, without systemd, by parsing it).
"""
from __future__ import annotations

import base64
import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from detector import cli, config
from detector.metrics import Metrics, serve

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "systemd" / "cdr-detector.service"


# -- docker-compose.yml ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _binds(service: dict) -> list[tuple[str, str]]:
    """(source, target) of the bind mounts (a source starting with . or /), short or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            src, dst = parts[0], parts[1]
        else:
            src, dst = v.get("source", ""), v.get("target", "")
        if src.startswith((".", "/")):
            out.append((src, dst))
    return out


def _published(service: dict) -> dict[int, int]:
    out = {}
    for p in service.get("ports", []):
        host, _, container = str(p).rpartition(":")
        out[int(container.split("/")[0])] = int(host.rsplit(":", 1)[-1])
    return out


def test_compose_has_the_four_services(compose):
    assert {"kafka", "detector", "prometheus", "grafana"} <= set(compose["services"])


def test_kafka_runs_in_kraft_mode(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.0"
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node}@kafka:9093"
    assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"]
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert not any(k.startswith("KAFKA_ZOOKEEPER") for k in env)
    # the cluster id is a Kafka Uuid: 16 bytes, base64url without padding
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    # the detector's bootstrap address is one the broker advertises
    advertised = {a.split("://", 1)[1] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    bootstrap = _env(compose["services"]["detector"])["CDR_DETECTOR__KAFKA__BOOTSTRAP_SERVERS"]
    assert bootstrap == "kafka:9092" and bootstrap in advertised
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"  # one node
    host_port = {a.split("://", 1)[1] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")} - {bootstrap}
    assert all(int(a.rsplit(":", 1)[1]) in _published(kafka).values() for a in host_port)
    assert "healthcheck" in kafka


def test_detector_is_built_from_the_dockerfile(compose):
    det = compose["services"]["detector"]
    context = (DEPLOY / det["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / det["build"]["dockerfile"]).resolve() == DOCKERFILE
    env = _env(det)
    assert env["CDR_DETECTOR__KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["CDR_DETECTOR__METRICS__ADDRESS"] == "0.0.0.0"
    port = int(env.get("CDR_DETECTOR__METRICS__PORT", config.load(environ={})["metrics"]["port"]))
    assert _published(det).get(port) == port
    assert det["depends_on"]["kafka"]["condition"] == "service_healthy"
    # every CDR_DETECTOR__ variable names a real setting
    cfg = config.load(environ={})
    for name in env:
        section, key = name[len("CDR_DETECTOR__"):].lower().split("__", 1)
        node = cfg[section]
        for part in key.split("__"):
            assert part in node, name
            node = node[part]


def test_mounts_point_at_files_of_this_repository(compose):
    declared = set(compose.get("volumes", {}))
    for name, svc in compose["services"].items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v["source"]
            if src.startswith((".", "/")):
                assert (DEPLOY / src).resolve().exists(), f"{name}: {src} does not exist"
                assert (DEPLOY / src).resolve().is_relative_to(ROOT), f"{name}: {src} is outside the repository"
            else:
                assert src in declared, f"{name}: named volume {src} is not declared"


def _mount_of(service: dict, target: str) -> Path:
    for src, dst in _binds(service):
        if dst == target:
            return (DEPLOY / src).resolve()
    raise AssertionError(f"nothing mounted at {target}")


def test_prometheus_scrapes_the_detector_service(compose):
    prom = compose["services"]["prometheus"]
    args = prom.get("command", [])
    config_file = next(a.split("=", 1)[1] for a in args if a.startswith("--config.file="))
    mounted = _mount_of(prom, str(Path(config_file).parent))
    assert mounted == DEPLOY / "prometheus"
    pcfg = yaml.safe_load((mounted / Path(config_file).name).read_text())
    for rule_file in pcfg["rule_files"]:
        assert list(mounted.glob(rule_file)), rule_file
    job = next(j for j in pcfg["scrape_configs"] if j["job_name"] == "cdr-detector")
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    det_env = _env(compose["services"]["detector"])
    port = int(det_env.get("CDR_DETECTOR__METRICS__PORT", config.load(environ={})["metrics"]["port"]))
    assert targets == [f"detector:{port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert _published(prom).get(9090) == 9090


def test_grafana_is_provisioned_with_the_datasource_and_dashboards(compose):
    graf = compose["services"]["grafana"]
    prov = _mount_of(graf, "/etc/grafana/provisioning")
    assert prov == DEPLOY / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090"  # the compose service and its port
    providers = yaml.safe_load((prov / "dashboards" / "dashboards.yml").read_text())["providers"]
    path = providers[0]["options"]["path"]
    dashboards = _mount_of(graf, path)
    assert dashboards == DEPLOY / "grafana" / "dashboards"
    assert sorted(p.name for p in dashboards.glob("*.json")) == ["false-positives.json", "overview.json",
                                                                   "pipeline-health.json"]
    uids = {json.loads(p.read_text())["panels"][0]["datasource"]["uid"] for p in dashboards.glob("*.json")}
    assert uids == {ds["uid"]}
    assert _published(graf).get(3000) == 3000


# -- Dockerfile -----------------------------------------------------------------------------------
def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


def test_dockerfile_builds_on_python_slim_and_runs_the_daemon(dockerfile):
    froms = [a for i, a in dockerfile if i == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms)
    last_stage = max(n for n, (i, _) in enumerate(dockerfile) if i == "FROM")
    final = dockerfile[last_stage:]
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["cdr-detector"]
    assert json.loads(dict(final)["CMD"]) == ["run"]
    assert "9400" in dict(final)["EXPOSE"].split()
    user = dict(final)["USER"].split(":")[0]
    assert user not in ("root", "0")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "cdr-detector" in scripts


def test_dockerfile_copies_only_what_exists(dockerfile):
    for instr, args in dockerfile:
        if instr != "COPY" or "--from=" in args:
            continue
        *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
        for src in sources:
            matches = list(ROOT.glob(src))
            assert matches or "*" in src, f"COPY {src}: not in the repository"
    # the wheel needs the packaged defaults, a symlink into config/: both directories are copied
    copied = {shlex.split(a)[0] for i, a in dockerfile if i == "COPY" and "--from=" not in a}
    assert (ROOT / "detector" / "defaults.yaml").exists() and {"config", "detector"} <= copied


def _healthcheck_cmd(dockerfile) -> list[str]:
    args = dict(dockerfile)["HEALTHCHECK"]
    cmd = args.split("CMD", 1)[1].strip()
    return json.loads(cmd)


def test_dockerfile_healthcheck_probes_healthz(dockerfile, monkeypatch):
    cmd = _healthcheck_cmd(dockerfile)
    assert cmd[0] == "python" and "/healthz" in cmd[-1] and "urllib" in cmd[-1]
    healthy = {"ok": True}
    server = serve(Metrics(), "127.0.0.1", 0, health=lambda: (healthy["ok"], {}))
    try:
        env = {**os.environ, "CDR_DETECTOR__METRICS__PORT": str(server.port)}
        run = [sys.executable] + cmd[1:]
        assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode == 0
        healthy["ok"] = False  # /healthz answers 503: the check must fail
        assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode != 0
    finally:
        server.shutdown()


# -- systemd unit ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    cp.read_string(UNIT.read_text())
    return cp


def test_unit_runs_the_daemon_hardened(unit):
    s = unit["Service"]
    assert s["User"] and s["User"] != "root"
    assert s["EnvironmentFile"] == "/etc/cdr-detector/env"
    assert s["ExecStart"] == ("/opt/cdr-detector/.venv/bin/cdr-detector run --config "
                              "/etc/cdr-detector/detector.yaml")
    assert s["Restart"] == "on-failure"
    assert s["KillSignal"] == "SIGTERM"
    assert re.fullmatch(r"\d+s?", s["TimeoutStopSec"])
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectControlGroups", "RestrictSUIDSGID", "LockPersonality"):
        assert s[key] == "yes", key
    assert s["ProtectSystem"] == "strict"
    assert s["CapabilityBoundingSet"] == ""
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # the command line is one the CLI accepts
    args = cli.build_parser().parse_args(shlex.split(s["ExecStart"])[1:])
    assert args.command == "run" and args.config == "/etc/cdr-detector/detector.yaml"


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (the unit was parsed above)")
    # verify checks that ExecStart's program exists: point it at this checkout's console script
    exe = ROOT / ".venv" / "bin" / "cdr-detector"
    if not exe.exists():
        pytest.skip("no .venv/bin/cdr-detector to stand in for /opt/cdr-detector/.venv/bin/cdr-detector")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/cdr-detector/.venv/bin/cdr-detector", str(exe)))
    proc = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or bad values ("... ignoring"): any remark is a failure
    remarks = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 0 and remarks == [], "\n".join(remarks)


def test_systemd_analyze_verify_would_catch_a_typo(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    bad = tmp_path / "bad.service"
    bad.write_text(UNIT.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilegez=yes")
                   .replace("/opt/cdr-detector/.venv/bin/cdr-detector", str(ROOT / ".venv" / "bin" / "cdr-detector")))
    proc = subprocess.run([analyze, "verify", "--man=no", str(bad)], capture_output=True, text=True, timeout=60)
    assert "NoNewPrivilegez" in proc.stdout + proc.stderr
