"""Round trip through the real local Kafka broker started by scripts/kafka-local.sh."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

try:  # tests/ on sys.path (no tests/__init__.py) or the repo root (a package)
    from kafka_broker import ensure_broker, unique_topic, wait_for
except ImportError:  # pragma: no cover
    from tests.kafka_broker import ensure_broker, unique_topic, wait_for

N_MESSAGES = 100
N_PARTITIONS = 3


@pytest.mark.kafka
def test_keyed_round_trip_through_local_broker():
    bootstrap = ensure_broker()
    topic = unique_topic("broker-smoke")

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-kafka-broker")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=N_PARTITIONS, replication_factor=1)])
        wait_for(lambda: topic in admin.list_topics(), timeout=30)

        producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )
        try:
            sent = {}
            futures = []
            for i in range(N_MESSAGES):
                key = f"msisdn-{i:04d}".encode()
                value = f"cdr-{i}".encode()
                sent[key] = value
                futures.append(producer.send(topic, key=key, value=value))
            producer.flush(timeout=30)
            partitions_written = {f.get(timeout=30).partition for f in futures}
        finally:
            producer.close(timeout=10)

        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=unique_topic("broker-smoke-group"),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        received = {}
        partitions_read = set()
        try:

            def all_arrived() -> bool:
                for tp, records in consumer.poll(timeout_ms=500).items():
                    partitions_read.add(tp.partition)
                    for r in records:
                        received[r.key] = r.value
                return len(received) >= N_MESSAGES

            wait_for(all_arrived, timeout=60, interval=0)
        finally:
            consumer.close()

        assert received == sent
        # 100 distinct keys hash onto every one of the 3 partitions
        assert partitions_written == set(range(N_PARTITIONS))
        assert partitions_read == partitions_written
    finally:
        try:
            admin.delete_topics([topic])
        finally:
            admin.close()
