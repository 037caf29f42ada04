"""Kafka at the edge: clients built from settings (security passed through), topics ensured."""
from __future__ import annotations

import logging

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

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


PRODUCER_BACKENDS = ("kafka-python", "confluent")


def producer(kcfg: dict):
    """The producer the settings name: kafka-python (the default) or confluent-kafka (librdkafka).

    Both give the same surface — `send(topic, key=, value=, partition=, headers=)` returning a
    future with `failed()`/`exception`, `flush(timeout)` raising `KafkaTimeoutError` while the
    broker does not acknowledge, `close(timeout)` — so the daemon does not care which it has.
    Output must never be dropped because the broker was away for a while: both retry until it is
    back (no delivery timeout), idempotently, with acks from all replicas."""
    backend = kcfg.get("producer_backend", "kafka-python")
    if backend == "confluent":
        return ConfluentProducer(kcfg)
    if backend != "kafka-python":
        raise ValueError(f"kafka.producer_backend must be one of {PRODUCER_BACKENDS}, not {backend!r}")
    opts = dict(acks="all", enable_idempotence=True, linger_ms=int(kcfg.get("linger_ms", 5)), retries=2**31 - 1,
                delivery_timeout_ms=2**31 - 1)
    opts.update(kcfg.get("producer_options") or {})
    return KafkaProducer(**opts, **common(kcfg))


# kafka-python setting → librdkafka property, for the connection and security settings
_RDKAFKA_NAMES = {
    "client_id": "client.id", "security_protocol": "security.protocol", "sasl_mechanism": "sasl.mechanisms",
    "sasl_plain_username": "sasl.username", "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location", "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location", "ssl_password": "ssl.key.password",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
}


def rdkafka_config(kcfg: dict) -> dict:
    conf = {"bootstrap.servers": ",".join(common(kcfg)["bootstrap_servers"])}
    for k, name in _RDKAFKA_NAMES.items():
        if kcfg.get(k) is not None:
            conf[name] = kcfg[k]
    if kcfg.get("ssl_check_hostname") is False:
        conf["ssl.endpoint.identification.algorithm"] = "none"
    return conf


class _DeliveryFuture:
    """What `ConfluentProducer.send` returns: settled by librdkafka's delivery report."""

    __slots__ = ("done", "exception")

    def __init__(self):
        self.done = False
        self.exception = None

    def __call__(self, err, msg) -> None:
        self.done = True
        if err is not None:
            self.exception = KafkaError(str(err))

    def failed(self) -> bool:
        return self.exception is not None

    def succeeded(self) -> bool:
        return self.done and self.exception is None


class ConfluentProducer:
    """confluent-kafka's C producer behind kafka-python's producer surface (see `producer`).

    Sending is where kafka-python spends most of the daemon's time (tens of µs a record, and the
    changelog and shared facts add two or three sends per input record); librdkafka does it in a
    few µs. Keyed records without an explicit partition go where the Java client and kafka-python
    put them (murmur2), so the suspension topic stays partitioned by number."""

    def __init__(self, kcfg: dict):
        from confluent_kafka import Producer  # optional dependency: pip install 'cdr-detector[fast]'

        conf = rdkafka_config(kcfg)
        conf.update({"acks": "all", "enable.idempotence": True, "partitioner": "murmur2_random",
                     "linger.ms": int(kcfg.get("linger_ms", 5)), "message.timeout.ms": 0,  # 0: retry forever
                     "queue.buffering.max.messages": 1_000_000})
        conf.update(kcfg.get("rdkafka_options") or {})
        self._p = Producer(conf)
        self._unpolled = 0

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None,
             partition: int | None = None, headers=None) -> _DeliveryFuture:
        fut = _DeliveryFuture()
        kw = {"partition": partition} if partition is not None else {}
        if headers:
            kw["headers"] = headers
        while True:
            try:
                self._p.produce(topic, value, key, on_delivery=fut, **kw)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._p.poll(0.1)
        self._unpolled += 1
        if self._unpolled >= 1000:  # serve delivery reports now and then; flush serves the rest
            self._unpolled = 0
            self._p.poll(0)
        return fut

    def flush(self, timeout: float | None = None) -> None:
        left = self._p.flush(-1 if timeout is None else timeout)
        if left:
            raise KafkaTimeoutError(f"{left} messages not acknowledged within {timeout} s")

    def close(self, timeout: float | None = None) -> None:
        self._p.flush(-1 if timeout is None else timeout)


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
