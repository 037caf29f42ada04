"""Security: TLS (mutual) to Kafka, the metrics endpoint's bind address, no phone numbers in logs,
secrets from files never printed.

(a) needs Java (keytool) and openssl; it starts its own broker (free ports, own run/data dirs,
TLS listener added through KAFKA_EXTRA_PROPERTIES) and stops it in a `finally`.
"""
from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaAdminClient, TopicPartition

from conftest import load_cfg
from daemon_harness import (SAMPLE_DIR, DaemonProcess, KafkaSetup, backtest_events, cli, diff_events, isolated_env,
                            make_slice, read_lines, replay_cli)
from detector import config as config_mod
from detector import logs
from detector.contract import InvalidRecord, parse_cdr
from detector.daemon import Daemon, Item
from detector.metrics import Metrics, serve
from robust_harness import (ExtraBroker, event_violations, free_ports, http_get, non_loopback_ipv4, port_open,
                            wait_until)

# Random free ports (not fixed ones), so concurrent runs of this file do not collide.
TLS_PLAIN_PORT, TLS_PORT, TLS_CONTROLLER_PORT = free_ports(3, spacing=7)
STOREPASS = "changeit-test"
SECRET = "s3cr3t-Pa55w0rd-do-not-print"


# -- (a) TLS ----------------------------------------------------------------------------------------
def sh(*cmd: str, cwd: Path) -> None:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"


def make_pki(d: Path) -> dict[str, Path]:
    """A CA; a broker key pair in a PKCS12 keystore and the CA in a PKCS12 truststore (keytool);
    a client certificate and key as PEM files for kafka-python."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
       "-days", "2", "-subj", "/CN=cdr-test-ca", cwd=d)
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
       "-subj", "/CN=localhost", cwd=d)
    sh("openssl", "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "broker.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    sh("openssl", "pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
       "-name", "broker", "-out", "broker.keystore.p12", "-passout", f"pass:{STOREPASS}", cwd=d)
    sh("keytool", "-importcert", "-noprompt", "-alias", "cdr-test-ca", "-file", "ca.pem", "-keystore",
       "broker.truststore.p12", "-storetype", "PKCS12", "-storepass", STOREPASS, cwd=d)
    sh("keytool", "-list", "-keystore", "broker.keystore.p12", "-storetype", "PKCS12", "-storepass", STOREPASS, cwd=d)
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
       "-subj", "/CN=cdr-detector", cwd=d)
    sh("openssl", "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "client.pem", "-days", "2", cwd=d)
    return {n: d / n for n in ("ca.pem", "client.pem", "client.key", "broker.keystore.p12", "broker.truststore.p12")}


def tls_properties(path: Path, pki: dict[str, Path]) -> Path:
    """Appended after the template, so these keys win (last one wins in a .properties file).
    `listeners` is overridden in full: PLAINTEXT stays (the readiness check of kafka-local.sh and the
    inter-broker listener use it), SSL is added with client authentication required (mTLS)."""
    path.write_text("\n".join([
        f"listeners=PLAINTEXT://127.0.0.1:{TLS_PLAIN_PORT},SSL://127.0.0.1:{TLS_PORT},"
        f"CONTROLLER://127.0.0.1:{TLS_CONTROLLER_PORT}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{TLS_PLAIN_PORT},SSL://127.0.0.1:{TLS_PORT},"
        f"CONTROLLER://127.0.0.1:{TLS_CONTROLLER_PORT}",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL",
        "ssl.keystore.type=PKCS12",
        f"ssl.keystore.location={pki['broker.keystore.p12']}",
        f"ssl.keystore.password={STOREPASS}",
        f"ssl.key.password={STOREPASS}",
        "ssl.truststore.type=PKCS12",
        f"ssl.truststore.location={pki['broker.truststore.p12']}",
        f"ssl.truststore.password={STOREPASS}",
        "ssl.client.auth=required",
        "ssl.enabled.protocols=TLSv1.2,TLSv1.3",
    ]) + "\n")
    return path


def cannot_talk(**client) -> str:
    """Returns the error of an admin client that must fail to reach the TLS port."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{TLS_PORT}", request_timeout_ms=5000,
                                 bootstrap_timeout_ms=8000, client_id="cdr-test-intruder", **client)
    except Exception as exc:  # NoBrokersAvailable / KafkaTimeoutError / SSL errors
        return f"{type(exc).__name__}: {exc}"
    try:
        topics = admin.list_topics()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        admin.close()
    pytest.fail(f"a client with {client or 'PLAINTEXT'} listed topics over the TLS port: {topics}")


@pytest.mark.kafka
def test_tls_replay_and_daemon_over_mutual_tls(tmp_path):
    if not (SAMPLE_DIR / "cdrs.jsonl.gz").exists():
        pytest.fail(f"labelled sample not found in {SAMPLE_DIR}")
    for p in (TLS_PLAIN_PORT, TLS_PORT, TLS_CONTROLLER_PORT):
        assert not port_open(p), f"port {p} is in use"
    pki = make_pki(tmp_path / "pki")
    props = tls_properties(tmp_path / "tls.properties", pki)
    data = tmp_path / "slice"
    make_slice(data, benign=60, fraud_per_scheme=3, seed=3)
    n_records = len(read_lines(data / "cdrs.jsonl.gz"))
    reference = backtest_events(data / "cdrs.jsonl.gz", data / "subscribers.jsonl", tmp_path / "ref.jsonl")
    assert reference, "the slice should make the detector decide something"
    secret_file = tmp_path / "sasl-password"
    secret_file.write_text(SECRET + "\n")

    broker = ExtraBroker(tmp_path / "kafka", TLS_PLAIN_PORT, extra_properties=props,
                         controller_port=TLS_CONTROLLER_PORT)
    d = None
    try:
        broker.start()
        server_props = (broker.run_dir / "server.properties").read_text()
        assert f"SSL://127.0.0.1:{TLS_PORT}" in server_props.split("---- appended from")[-1]
        assert port_open(TLS_PORT), "the SSL listener is not up"

        tls_env = {"CDR_DETECTOR__KAFKA__SECURITY_PROTOCOL": "SSL",
                   "CDR_DETECTOR__KAFKA__SSL_CAFILE": str(pki["ca.pem"]),
                   "CDR_DETECTOR__KAFKA__SSL_CERTFILE": str(pki["client.pem"]),
                   "CDR_DETECTOR__KAFKA__SSL_KEYFILE": str(pki["client.key"]),
                   # a secret that must never be printed (unused over SSL, but loaded)
                   "CDR_DETECTOR__KAFKA__SASL_PLAIN_PASSWORD_FILE": str(secret_file)}
        setup = KafkaSetup(f"127.0.0.1:{TLS_PORT}", extra=tls_env)
        assert setup.cfg()["kafka"]["sasl_plain_password"] == SECRET

        counts = replay_cli(setup, data / "cdrs.jsonl.gz", data / "subscribers.jsonl")  # creates the topics
        assert counts["records"] == n_records

        d = DaemonProcess(setup, tmp_path / "daemon.log").start()
        d.wait_ready(timeout=90)

        def done():
            d.assert_alive()
            h = d.healthz() or {}
            return h.get("lag") == 0 and d.records_total().get("ok") == n_records
        wait_until(done, 120, "the daemon to process the slice over TLS", d.log_tail, interval=0.5)

        def events():
            return {e["event_id"]: e for e in (orjson.loads(m.value) for m in setup.messages("suspensions"))}
        online = wait_until(lambda: (lambda ev: ev if len(ev) >= len(reference) else None)(events()), 30,
                            "the suspension events over TLS", d.log_tail)
        cfg = setup.cfg()
        for e in online.values():
            assert not event_violations(e, cfg), e
        assert online == reference, diff_events(reference, online)
        assert d.terminate(timeout=30) == 0, d.log_tail()

        # (d) the secret never reaches the daemon's log.
        daemon_log = d.log_path.read_text(errors="replace")
        assert SECRET not in daemon_log

        # A PLAINTEXT client, and a TLS client without a certificate (mTLS), cannot use the TLS port.
        plain_err = cannot_talk()
        nocert_err = cannot_talk(security_protocol="SSL", ssl_cafile=str(pki["ca.pem"]))
        print("PLAINTEXT client on the TLS port:", plain_err, "| TLS client without a certificate:", nocert_err)
        # ... while the same PLAINTEXT client does work on the PLAINTEXT port (so the failure is TLS).
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{TLS_PLAIN_PORT}", request_timeout_ms=10000)
        try:
            assert setup.topics["suspensions"] in admin.list_topics()
        finally:
            admin.close()
    finally:
        if d is not None:
            d.cleanup()
        broker.cleanup()
    assert not port_open(TLS_PORT)


# -- (b) the metrics endpoint binds where it is told ---------------------------------------------------
def test_metrics_binds_to_configured_address_only():
    m = Metrics()
    with serve(m, "127.0.0.2", 0) as srv:
        assert srv.address == "127.0.0.2"
        status, body = http_get(f"http://127.0.0.2:{srv.port}/metrics")
        assert status == 200 and b"cdr_detector_records_total" in body
        assert not port_open(srv.port, "127.0.0.1"), "bound to 127.0.0.2 but 127.0.0.1 answers"
    with serve(m, "127.0.0.1", 0) as srv:
        assert http_get(f"http://127.0.0.1:{srv.port}/healthz")[0] == 200
        ip = non_loopback_ipv4()
        assert ip is not None, "this machine has no non-loopback IPv4 address to check against"
        assert not port_open(srv.port, ip), f"bound to loopback but {ip}:{srv.port} answers"


def test_metrics_address_from_config_reaches_the_daemon():
    """The default is loopback, and the daemon passes metrics.address on to serve()."""
    cfg = load_cfg()
    assert cfg["metrics"]["address"] == "127.0.0.1"
    cfg2 = config_mod.load(environ={"CDR_DETECTOR__METRICS__ADDRESS": "127.0.0.2"})
    assert cfg2["metrics"]["address"] == "127.0.0.2"


# -- (c) no phone number in the logs ----------------------------------------------------------------------
class FakeProducer:
    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None, headers=None, partition=None):
        self.sent.append((topic, key, value, headers))


@pytest.fixture
def json_log():
    """The daemon's logs through logs.JsonFormatter at INFO, captured."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    old = (root.handlers[:], root.level)
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield buf
    finally:
        root.handlers[:], root.level = old


PHONE = re.compile(r"(?<!\d)\+?(?:86)?1\d{10}(?!\d)")


def fake_daemon(cfg: dict) -> Daemon:
    from detector.core import Detector
    from detector.pipeline import Pipeline
    d = Daemon(cfg, Metrics(), serve_http=False)
    d.producer = FakeProducer()
    d.detector = Detector(cfg)
    d.pipeline = Pipeline(d.detector, d.metrics)
    return d


def decisions_from_sample(cfg: dict, tmp_path: Path, n: int = 40) -> list[dict]:
    from detector.backtest import backtest
    data = tmp_path / "slice"
    make_slice(data, benign=40, fraud_per_scheme=3, seed=4)
    res, _ = backtest(cfg, str(data / "cdrs.jsonl.gz"), str(data / "subscribers.jsonl"), str(tmp_path / "ev.jsonl"),
                      show_progress=False)
    assert res.events
    return res.events[:n]


def test_decision_logs_mask_phone_numbers(tmp_path, json_log):
    cfg = load_cfg()
    d = fake_daemon(cfg)
    events = decisions_from_sample(cfg, tmp_path)
    for e in events:
        d._emit(e)
    lines = [json.loads(x) for x in json_log.getvalue().splitlines()]
    decisions = [x for x in lines if x["msg"] == "decision"]
    assert len(decisions) == len(events), "every decision is logged"
    assert all(x["level"] == "info" for x in decisions)
    text = json_log.getvalue()
    for e in events:
        assert e["msisdn"] not in text, f"full number {e['msisdn']} in the logs"
    assert not PHONE.search(text), PHONE.search(text)
    masked = {x["msisdn"] for x in decisions}
    assert all("*" in m for m in masked), masked
    # ... but the events on the topic keep the number (the consumer must act on it).
    assert all(orjson.loads(v)["msisdn"] == e["msisdn"] for (_, _, v, _), e in zip(d.producer.sent, events))


def test_rejected_record_logs_mask_phone_numbers(json_log):
    cfg = load_cfg()
    d = fake_daemon(cfg)
    good = {"record_id": "x1", "ts": 1783872013233, "msisdn": "13812345678", "direction": "MO", "peer": "13987654321",
            "service": "voice", "duration_s": 5, "answered": True, "cell_id": "c1", "cell_region": "GD-SZ",
            "peer_region": "GD-GZ", "imei": "861231580138492"}
    bad = [dict(good, msisdn="+8613812345678"), dict(good, peer="008613987654321000000"),
           dict(good, msisdn="13812345678 ")]
    tp = TopicPartition(d.topics["records"], 0)
    for i, rec in enumerate(bad):
        raw = orjson.dumps(rec)
        try:
            parse_cdr(raw)
            pytest.fail(f"accepted {rec}")
        except InvalidRecord as err:
            d._dead_letter(tp, Item((-1,), i, err, raw, None), err)
    text = json_log.getvalue()
    assert "record rejected" in text
    leaks = PHONE.findall(text) + re.findall(r"\d{12,}", text)
    assert not leaks, f"phone numbers in the logs: {leaks}"


# -- (d) secrets from files ------------------------------------------------------------------------------
def test_secret_file_is_read_and_never_printed(tmp_path):
    secret_file = tmp_path / "sasl-password"
    secret_file.write_text(SECRET + "\n")
    env = {"CDR_DETECTOR__KAFKA__SASL_PLAIN_PASSWORD_FILE": str(secret_file),
           "CDR_DETECTOR__KAFKA__SASL_MECHANISM": "PLAIN",
           "CDR_DETECTOR__KAFKA__SASL_PLAIN_USERNAME": "cdr-detector"}
    cfg = config_mod.load(environ=env)
    assert cfg["kafka"]["sasl_plain_password"] == SECRET, "the secret was not read from the file"
    assert SECRET not in json.dumps(config_mod.redacted(cfg))
    assert config_mod.redacted(cfg)["kafka"]["sasl_plain_password"] == "***"

    proc = subprocess.run(cli() + ["config"], env=isolated_env(env), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["kafka"]["sasl_plain_password"] == "***"
    assert shown["kafka"]["sasl_plain_password_file"] == str(secret_file)  # the path is not secret
    assert SECRET not in proc.stdout + proc.stderr


def test_secret_never_in_daemon_logs_even_when_kafka_fails(tmp_path):
    """A daemon that cannot connect (SASL against nothing) logs errors, but never the password."""
    secret_file = tmp_path / "sasl-password"
    secret_file.write_text(SECRET)
    env = isolated_env({"CDR_DETECTOR__KAFKA__SASL_PLAIN_PASSWORD_FILE": str(secret_file),
                        "CDR_DETECTOR__KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                        "CDR_DETECTOR__KAFKA__SASL_MECHANISM": "PLAIN",
                        "CDR_DETECTOR__KAFKA__SASL_PLAIN_USERNAME": "cdr-detector",
                        "CDR_DETECTOR__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nothing listens there
                        "CDR_DETECTOR__METRICS__PORT": "0"})
    env["CDR_DETECTOR__KAFKA__CLIENT_OPTIONS"] = "{bootstrap_timeout_ms: 3000}"  # fail fast
    proc = subprocess.Popen(cli() + ["run", "--log-level", "DEBUG"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the daemon neither connected nor gave up within 45 s:\n{out.decode(errors='replace')[-2000:]}")
    assert proc.returncode != 0, "the daemon cannot reach Kafka: it should exit with an error"
    text = out.decode(errors="replace")
    assert text.strip(), "the daemon logged nothing"
    assert SECRET not in text, "the SASL password appears in the daemon's output"


def test_ssl_password_is_masked_and_can_come_from_a_file(tmp_path):
    f = tmp_path / "key-pass"
    f.write_text(SECRET)
    cfg = config_mod.load(environ={"CDR_DETECTOR__KAFKA__SSL_PASSWORD": SECRET})
    assert SECRET not in json.dumps(config_mod.redacted(cfg))
    cfg = config_mod.load(environ={"CDR_DETECTOR__KAFKA__SSL_PASSWORD_FILE": str(f)})
    assert cfg["kafka"].get("ssl_password") == SECRET
