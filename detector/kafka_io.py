"""Kafka at the edge: clients built from settings (security passed through), topics ensured."""
from __future__ import annotations

import logging

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

log = logging.getLogger("cdr_detector.kafka")

SECURITY_KEYS = ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
                 "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_check_hostname",
                 "sasl_kerberos_service_name", "sasl_oauth_token_provider")


def common(kcfg: dict) -> dict:
    """Connection settings shared by every client: servers, client id, SASL/SSL as configured."""
    out = {"bootstrap_servers": [s.strip() for s in str(kcfg["bootstrap_servers"]).split(",") if s.strip()],
           "client_id": kcfg.get("client_id", "cdr-detector")}
    for k in SECURITY_KEYS:
        if kcfg.get(k) is not None:
            out[k] = kcfg[k]
    out.update(kcfg.get("client_options") or {})
    return out


def producer(kcfg: dict) -> KafkaProducer:
    # Output must never be dropped because the broker was away for a while: retry until it is back.
    opts = dict(acks="all", enable_idempotence=True, linger_ms=int(kcfg.get("linger_ms", 5)), retries=2**31 - 1,
                delivery_timeout_ms=2**31 - 1)
    opts.update(kcfg.get("producer_options") or {})
    return KafkaProducer(**opts, **common(kcfg))


def consumer(kcfg: dict, group: bool = True, **extra) -> KafkaConsumer:
    opts = dict(enable_auto_commit=False, auto_offset_reset="earliest",
                max_poll_records=int(kcfg.get("max_poll_records", 2000)),
                max_poll_interval_ms=int(kcfg.get("max_poll_interval_ms", 300_000)))
    if group:
        opts["group_id"] = kcfg["group_id"]
        opts.update(kcfg.get("consumer_options") or {})  # e.g. session_timeout_ms
    opts.update(extra)
    return KafkaConsumer(**opts, **common(kcfg))


def topic_names(kcfg: dict) -> dict[str, str]:
    t = dict(kcfg["topics"])
    t.setdefault("changelog", f"{kcfg['group_id']}.state-changelog")
    t.setdefault("shared", f"{kcfg['group_id']}.shared-facts")
    return t


def ensure_topics(kcfg: dict) -> None:
    """Create the topics the detector reads and writes if they are missing."""
    t = topic_names(kcfg)
    parts = int(kcfg["partitions"])
    rf = int(kcfg["replication_factor"])
    compact = {"cleanup.policy": "compact"}
    wanted = [
        NewTopic(t["records"], parts, rf),
        NewTopic(t["outcomes"], parts, rf),
        NewTopic(t["subscribers"], parts, rf, topic_configs=compact),
        NewTopic(t["suspensions"], parts, rf),
        NewTopic(t["dlq"], parts, rf),
        NewTopic(t["changelog"], parts, rf, topic_configs=compact),
        NewTopic(t["shared"], parts, rf, topic_configs=compact),
    ]
    admin = KafkaAdminClient(**common(kcfg))
    try:
        existing = set(admin.list_topics())
        missing = [nt for nt in wanted if nt.name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
                log.info("created topics", extra={"topics": [nt.name for nt in missing]})
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
