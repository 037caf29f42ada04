"""Kafka at the edge: clients built from settings (security passed through), topics ensured."""
from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
import time
from typing import NamedTuple

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

log = logging.getLogger("cdr_detector.kafka")
# librdkafka's own log lines (connection failures, broker state) through Python logging, so they
# come out as the daemon's JSON lines instead of syslog-style text on stderr. librdkafka queues
# them; each client's poll()/consume()/flush() emits them on the calling thread.
rdkafka_log = logging.getLogger("cdr_detector.kafka.librdkafka")

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


def producer(kcfg: dict, max_block_ms: int | None = None):
    """The producer the settings name: kafka-python (the default) or confluent-kafka (librdkafka).

    Both give the same surface — `send(topic, key=, value=, partition=, headers=)` returning a
    future with `failed()`/`exception`, `flush(timeout)` raising `KafkaTimeoutError` while the
    broker does not acknowledge, `close(timeout)` — so the daemon does not care which it has.
    Output must never be dropped because the broker was away for a while: both retry until it is
    back (no delivery timeout), idempotently, with acks from all replicas.

    `max_block_ms`: how long one send() may wait for room in a full buffer (or for unknown
    metadata) before it raises `KafkaTimeoutError` having queued nothing. The daemon keeps it
    short and sends again, so it stays live and hears a stop; None leaves kafka-python's 60 s
    and lets the confluent adapter wait for as long as it takes (the replay tools)."""
    backend = kcfg.get("producer_backend", "kafka-python")
    if backend == "confluent":
        return ConfluentProducer(kcfg, max_block_ms)
    if backend != "kafka-python":
        raise ValueError(f"kafka.producer_backend must be one of {PRODUCER_BACKENDS}, not {backend!r}")
    opts = dict(acks="all", enable_idempotence=True, linger_ms=int(kcfg.get("linger_ms", 5)), retries=2**31 - 1,
                delivery_timeout_ms=2**31 - 1)
    if max_block_ms is not None:
        opts["max_block_ms"] = int(max_block_ms)
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
    conf = {"bootstrap.servers": ",".join(common(kcfg)["bootstrap_servers"]), "logger": rdkafka_log}
    for k, name in _RDKAFKA_NAMES.items():
        if kcfg.get(k) is not None:
            conf[name] = kcfg[k]
    if kcfg.get("ssl_check_hostname") is False:
        conf["ssl.endpoint.identification.algorithm"] = "none"
    return conf


class _DeliveryFuture:
    """What `ConfluentProducer.send` returns: failed once librdkafka reports any of its sends failed.

    One is shared by every send between two flushes (a new one starts when a flush has seen
    every send acknowledged or refused), so a send costs no allocation and the delivery reports
    set one flag; the daemon asks only "did anything sent since the last commit fail?"."""

    __slots__ = ("exception",)

    def __init__(self):
        self.exception = None

    def __call__(self, err, msg) -> None:
        if err is not None and self.exception is None:
            self.exception = KafkaError(str(err))

    def failed(self) -> bool:
        return self.exception is not None


class ConfluentProducer:
    """confluent-kafka's C producer behind kafka-python's producer surface (see `producer`).

    Sending is where kafka-python spends most of the daemon's time (tens of µs a record, and the
    changelog and shared facts add two or three sends per input record); librdkafka does it in a
    few µs. Keyed records without an explicit partition go where the Java client and kafka-python
    put them (murmur2), so the suspension topic stays partitioned by number."""

    def __init__(self, kcfg: dict, max_block_ms: int | None = None):
        from confluent_kafka import Producer  # optional dependency: pip install 'cdr-detector[fast]'

        conf = rdkafka_config(kcfg)
        conf.update({"acks": "all", "enable.idempotence": True, "partitioner": "murmur2_random",
                     "linger.ms": int(kcfg.get("linger_ms", 5)), "message.timeout.ms": 0,  # 0: retry forever
                     "queue.buffering.max.messages": 1_000_000})
        conf.update(kcfg.get("rdkafka_options") or {})
        self._p = Producer(conf)
        self._unpolled = 0
        self._since_flush = _DeliveryFuture()
        self.max_block_s = None if max_block_ms is None else max_block_ms / 1000

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None,
             partition: int | None = None, headers=None) -> _DeliveryFuture:
        fut = self._since_flush
        produce = self._p.produce
        part = -1 if partition is None else partition  # -1: librdkafka's partitioner chooses
        give_up = None
        while True:
            try:
                if headers:
                    produce(topic, value, key, part, on_delivery=fut, headers=headers)
                else:
                    produce(topic, value, key, part, on_delivery=fut)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                if self.max_block_s is not None:  # as kafka-python's send after max_block_ms
                    now = time.monotonic()
                    give_up = give_up or now + self.max_block_s
                    if now >= give_up:  # nothing was queued: the caller sends again
                        raise KafkaTimeoutError(f"local queue full for {self.max_block_s:g} s: "
                                                "the broker is not taking records") from None
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
        self._since_flush = _DeliveryFuture()  # every send so far is settled on the old one

    def close(self, timeout: float | None = None) -> None:
        self._p.flush(-1 if timeout is None else timeout)


CONSUMER_BACKENDS = ("kafka-python", "confluent")


def consumer(kcfg: dict, group: bool = True, **extra):
    """A consumer of the backend the settings name: kafka-python's KafkaConsumer (the default) or
    `ConfluentConsumer` (librdkafka) behind the part of KafkaConsumer's surface the daemon uses.

    `group=True`: the group's consumer (group id, `kafka.consumer_options`); `group=False`: a
    reader that is only ever assigned partitions and never commits. `extra` are kafka-python
    consumer settings (translated for the confluent backend). Offsets are never committed
    automatically; without a committed offset a partition is read from its beginning."""
    backend = kcfg.get("consumer_backend", "kafka-python")
    if backend == "confluent":
        return ConfluentConsumer(kcfg, group=group, **extra)
    if backend != "kafka-python":
        raise ValueError(f"kafka.consumer_backend must be one of {CONSUMER_BACKENDS}, not {backend!r}")
    opts = dict(enable_auto_commit=False, auto_offset_reset="earliest",
                max_poll_records=int(kcfg.get("max_poll_records", 2000)),
                max_poll_interval_ms=int(kcfg.get("max_poll_interval_ms", 300_000)))
    if group:
        opts["group_id"] = kcfg["group_id"]
        opts.update(kcfg.get("consumer_options") or {})  # e.g. session_timeout_ms
    opts.update(extra)
    return KafkaConsumer(**opts, **common(kcfg))


class ConsumerRecord(NamedTuple):
    """What `ConfluentConsumer.poll` returns per record: the fields of kafka-python's
    ConsumerRecord that the detector reads (timestamp in ms, headers a list of (str, bytes))."""
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list | tuple


@functools.cache
def _rd_codes() -> tuple[frozenset, frozenset]:
    """librdkafka error codes: (worth retrying, a commit refused because the group rebalances)."""
    from confluent_kafka import KafkaError as E
    retriable = frozenset((E._TRANSPORT, E._TIMED_OUT, E._WAIT_COORD, E._ALL_BROKERS_DOWN, E.REQUEST_TIMED_OUT,
                           E.COORDINATOR_NOT_AVAILABLE, E.NOT_COORDINATOR, E.COORDINATOR_LOAD_IN_PROGRESS,
                           E.NOT_LEADER_FOR_PARTITION, E.LEADER_NOT_AVAILABLE))
    rebalancing = frozenset((E.REBALANCE_IN_PROGRESS, E.ILLEGAL_GENERATION, E.UNKNOWN_MEMBER_ID,
                             E._ASSIGNMENT_LOST, E.FENCED_INSTANCE_ID, E.STALE_MEMBER_EPOCH, E._FENCED))
    return retriable, rebalancing


class RdKafkaError(KafkaError):
    """A librdkafka error as a kafka-python `KafkaError`, so callers catch one family of errors;
    `retriable` is librdkafka's verdict for this error (kafka-python has it per class)."""

    def __init__(self, err, context: str = ""):
        super().__init__(f"{context}: {err}" if context else str(err))
        self.rd_error = err
        try:
            self.retriable = bool(err.retriable()) or err.code() in _rd_codes()[0]
        except AttributeError:  # not a confluent KafkaError
            self.retriable = False


# kafka-python consumer setting → librdkafka property (for kafka.consumer_options and `extra`)
_RDKAFKA_CONSUMER_NAMES = {
    "session_timeout_ms": "session.timeout.ms", "heartbeat_interval_ms": "heartbeat.interval.ms",
    "max_poll_interval_ms": "max.poll.interval.ms", "fetch_max_wait_ms": "fetch.wait.max.ms",
    "fetch_min_bytes": "fetch.min.bytes", "fetch_max_bytes": "fetch.max.bytes",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes", "isolation_level": "isolation.level",
    "group_instance_id": "group.instance.id", "auto_offset_reset": "auto.offset.reset",
    "metadata_max_age_ms": "metadata.max.age.ms", "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms", "retry_backoff_ms": "retry.backoff.ms",
    "connections_max_idle_ms": "connections.max.idle.ms", "receive_buffer_bytes": "socket.receive.buffer.bytes",
    "send_buffer_bytes": "socket.send.buffer.bytes", "check_crcs": "check.crcs", "client_id": "client.id",
    "group_id": "group.id",
}
_announced = False  # the first ConfluentConsumer of the process logs the library version
_admins: dict[tuple, list] = {}  # connection settings → [admin client, consumers using it]
_admins_lock = threading.Lock()


def _admin_key(conf: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in conf.items() if k != "logger"))


def _shared_admin(conf: dict):
    """One librdkafka admin client per connection settings, shared by the consumers open in the
    process for their offset and metadata requests (thread-safe); `_release_admin` drops it with
    the last of them (librdkafka destroys it when it is no longer referenced)."""
    with _admins_lock:
        entry = _admins.get(_admin_key(conf))
        if entry is None:
            from confluent_kafka.admin import AdminClient
            entry = _admins[_admin_key(conf)] = [AdminClient(dict(conf)), 0]
        entry[1] += 1
        return entry[0]


def _release_admin(conf: dict) -> None:
    with _admins_lock:
        entry = _admins.get(_admin_key(conf))
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del _admins[_admin_key(conf)]


class ConfluentConsumer:
    """confluent-kafka's C consumer behind the part of kafka-python's KafkaConsumer surface the
    daemon uses (see `consumer`): partitions are kafka-python `TopicPartition`s both ways, and
    poll() returns {TopicPartition: [ConsumerRecord]} like KafkaConsumer.poll.

    kafka-python semantics kept where librdkafka differs:
    - `position(tp)` is the offset of the next record poll() returns (kept here: librdkafka's own
      position ignores seeks until a message is consumed); reaching the end of a partition
      (librdkafka's partition-EOF event, which carries the end offset) moves it past trailing
      gaps of a compacted log, so "read until position >= end_offsets" loops end.
    - `seek` works right after an assignment. librdkafka refuses it ("Local: Erroneous state")
      until the partition's fetcher has started. A manual assignment is therefore handed to
      librdkafka only at the next poll(), with the positions sought by then as start offsets
      (and a refused seek later re-assigns at the positions). A group consumer's seek is retried
      for up to 2 s (librdkafka starts the fetcher in the background; in practice the seek the
      daemon makes after restoring a partition is accepted at once); a seek librdkafka still
      refuses — or one made inside the rebalance listener, before librdkafka has the assignment —
      stays pending: poll() applies it as soon as librdkafka takes it and drops every record of
      that partition fetched before. librdkafka itself discards what it prefetched before a seek
      (its fetch version), and records below the position are dropped in any case (stale ones of
      a superseded fetch), so nothing is skipped or returned twice.
    - paused partitions return nothing; `resume` seeks to the position, so records librdkafka
      had prefetched (and discarded at the pause) are fetched again.
    - offset and metadata requests (end_offsets, beginning_offsets, partitions_for_topic) go
      through a shared admin client (see `_admin`); `highwater` is librdkafka's cached value of the
      last fetch response as noted by the last poll() (None before one): no request, and safe
      to call from another thread (see `highwater`).
    - poll(timeout_ms) returns as soon as records are there (librdkafka's batch consume would
      wait the whole timeout for a full batch).
    - commit(offsets) is synchronous. A commit refused because the group is rebalancing (or
      this member was fenced) is not an error: the offsets are retried with the next commit of
      partitions still assigned; revoked ones are the next owner's, which replays from the
      state's positions anyway.
    Rebalance listener callbacks run inside poll() on the calling thread, before librdkafka
    (confluent-kafka's fallback) applies the assignment; eager or cooperative protocol alike."""

    def __init__(self, kcfg: dict, group: bool = True, **extra):
        import confluent_kafka as ck  # optional dependency: pip install 'cdr-detector[fast]'

        self._ck = ck
        self._CTP = ck.TopicPartition
        self._E = ck.KafkaError
        self._REBALANCING = _rd_codes()[1]
        self._group = group
        self._max_records = int(kcfg.get("max_poll_records", 2000))
        self._timeout = 30.0  # seconds, for offset and metadata requests
        conf = rdkafka_config(kcfg)
        conf.update({
            # librdkafka wants a group id even for a consumer that is only assigned partitions; such
            # a one never joins or commits, and is told where to start (so it fetches no offsets).
            "group.id": kcfg["group_id"],
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,  # the end offset, for position() (see above)
            "isolation.level": "read_uncommitted",  # kafka-python's default (librdkafka's: read_committed)
            "max.poll.interval.ms": int(kcfg.get("max_poll_interval_ms", 300_000)),
            "queued.max.messages.kbytes": 16384,  # prefetch per consumer (default 64 MB)
            "fetch.queue.backoff.ms": 20,  # re-check a full prefetch queue soon (default 1 s: stalls a fast reader)
            "error_cb": self._on_error,
        })
        options = dict(kcfg.get("consumer_options") or {}) if group else {}
        options.update(extra)
        for k, v in options.items():
            if k == "max_poll_records":
                self._max_records = int(v)
            elif k == "request_timeout_ms":
                self._timeout = int(v) / 1000
            elif k == "enable_auto_commit":
                if v:
                    raise ValueError("the detector commits its offsets itself: enable_auto_commit must stay false")
            elif k in _RDKAFKA_CONSUMER_NAMES:
                conf[_RDKAFKA_CONSUMER_NAMES[k]] = v
            else:
                raise ValueError(f"consumer setting {k!r} has no librdkafka equivalent known here; "
                                 "set the librdkafka property in kafka.rdkafka_consumer_options")
        conf.update(kcfg.get("rdkafka_consumer_options") or {})
        self._reset_beginning = str(conf.get("auto.offset.reset")) in ("earliest", "smallest", "beginning")
        self._c = ck.Consumer(conf)
        self._admin_conf = rdkafka_config(kcfg)
        self._admin_client = None
        global _announced
        if not _announced:
            _announced = True
            log.info(f"consumers: librdkafka {ck.libversion()[0]} (confluent-kafka {ck.__version__})")
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        self._ctps: dict[TopicPartition, object] = {}
        self._assigned: set[TopicPartition] = set()
        self._manual = False  # assign() was used (no group membership)
        self._dirty = False  # the manual assignment (or a position in it) is yet to be given to librdkafka
        self._pos: dict[TopicPartition, int] = {}  # offset of the next record poll() returns
        self._hw: dict[TopicPartition, int] = {}  # high watermarks as of the last poll()
        self._pending: dict[TopicPartition, int] = {}  # seeks librdkafka did not accept yet
        self._paused: set[TopicPartition] = set()
        self._deferred: dict[TopicPartition, OffsetAndMetadata] = {}  # commits refused by a rebalance
        self._listener = None
        self._in_rebalance = False
        self._fatal = None
        self._logged: dict[int, float] = {}

    # -- partitions --------------------------------------------------------------------------
    def _tp(self, topic: str, partition: int) -> TopicPartition:
        tp = self._tps.get((topic, partition))
        if tp is None:
            tp = self._tps[(topic, partition)] = TopicPartition(topic, partition)
        return tp

    def _ctp(self, tp: TopicPartition):
        c = self._ctps.get(tp)
        if c is None:
            c = self._ctps[tp] = self._CTP(tp.topic, tp.partition)
        return c

    def _error(self, exc, context: str) -> RdKafkaError:
        err = exc.args[0] if getattr(exc, "args", None) else exc
        return RdKafkaError(err, context)

    def _code(self, exc) -> int | None:
        err = exc.args[0] if getattr(exc, "args", None) else None
        return err.code() if hasattr(err, "code") else None

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        try:
            md = self._admin().list_topics(topic, timeout=self._timeout)
        except self._ck.KafkaException as exc:
            raise self._error(exc, f"metadata of {topic}") from None
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            return None
        return set(t.partitions)

    def topics(self) -> set[str]:
        return set(self._admin().list_topics(timeout=self._timeout).topics)

    def _admin(self):
        """Offset and metadata requests go through an admin client of their own connections:
        the broker answers a connection's requests in order, so on the consumer's own connection
        they would wait behind its long-polling fetch (up to fetch.wait.max.ms, 500 ms, each)."""
        if self._admin_client is None:
            self._admin_client = _shared_admin(self._admin_conf)
        return self._admin_client

    def _list_offsets(self, partitions, earliest: bool) -> dict[TopicPartition, int]:
        tps = list(partitions)
        if not tps:
            return {}
        from confluent_kafka.admin import OffsetSpec

        spec = OffsetSpec.earliest() if earliest else OffsetSpec.latest()
        try:
            futures = self._admin().list_offsets({self._CTP(tp.topic, tp.partition): spec for tp in tps},
                                                 isolation_level=self._ck.IsolationLevel.READ_UNCOMMITTED,
                                                 request_timeout=self._timeout)
            got = {(ctp.topic, ctp.partition): f.result(timeout=self._timeout + 5).offset
                   for ctp, f in futures.items()}
            self._admin().poll(0)  # emit the admin client's queued log lines
        except self._ck.KafkaException as exc:
            raise self._error(exc, f"{'beginning' if earliest else 'end'} offsets of {tps[0].topic}") from None
        except concurrent.futures.TimeoutError:
            raise KafkaTimeoutError(f"offsets of {tps[0].topic} not known within {self._timeout} s") from None
        return {tp: got[(tp.topic, tp.partition)] for tp in tps}

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    # -- group membership --------------------------------------------------------------------
    def subscribe(self, topics=(), pattern=None, listener=None) -> None:
        if not self._group:
            raise ValueError("subscribe() needs the group's consumer (consumer(kcfg, group=True))")
        if self._manual:
            raise ValueError("subscribe() after assign(): a consumer is one or the other")
        names = list(topics) + ([f"^{pattern}"] if pattern else [])
        self._listener = listener
        self._c.subscribe(names, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _on_assign(self, _c, parts) -> None:
        tps = [self._tp(p.topic, p.partition) for p in parts]
        for tp in tps:
            self._pos.pop(tp, None)
            self._pending.pop(tp, None)
            self._paused.discard(tp)
        self._assigned.update(tps)
        if self._listener is not None:
            self._in_rebalance = True  # a seek from the listener waits for poll(): not assigned yet
            try:
                self._listener.on_partitions_assigned(tps)
            finally:
                self._in_rebalance = False
        # confluent-kafka assigns them (assign() or incremental_assign()) after this returns

    def _forget(self, tps) -> None:
        for tp in tps:
            self._assigned.discard(tp)
            self._pos.pop(tp, None)
            self._pending.pop(tp, None)
            self._paused.discard(tp)
            self._deferred.pop(tp, None)
            self._hw.pop(tp, None)

    def _on_revoke(self, _c, parts) -> None:
        tps = [self._tp(p.topic, p.partition) for p in parts]
        try:
            if self._listener is not None:
                self._listener.on_partitions_revoked(tps)
        finally:
            self._forget(tps)

    def _on_lost(self, _c, parts) -> None:
        tps = [self._tp(p.topic, p.partition) for p in parts]
        try:
            if self._listener is not None:
                getattr(self._listener, "on_partitions_lost", self._listener.on_partitions_revoked)(tps)
        finally:
            self._forget(tps)

    def _on_error(self, err) -> None:
        if err.fatal():
            self._fatal = err  # raised by the next poll()
        self._log_error(err, "kafka client error")

    def _log_error(self, err, what: str) -> None:
        now = time.monotonic()
        code = err.code()
        if now - self._logged.get(code, -1e9) >= 30:  # one line per kind of error every 30 s
            self._logged[code] = now
            log.warning(what, extra={"error": err.str(), "code": err.name()})

    # -- manual assignment -------------------------------------------------------------------
    def assign(self, partitions) -> None:
        if self._listener is not None:
            raise ValueError("assign() after subscribe(): a consumer is one or the other")
        tps = list(dict.fromkeys(partitions))
        if self._manual and set(tps) == self._assigned:
            return  # as kafka-python: the same assignment again changes nothing
        self._manual = True
        gone = self._assigned - set(tps)
        self._forget(gone)
        self._assigned = set(tps)
        self._dirty = True  # librdkafka is told at the next poll(), with the positions sought by then

    def _start_offset(self, tp: TopicPartition) -> int:
        pos = self._pos.get(tp)
        if pos is not None:
            return pos
        if self._group:
            return self._ck.OFFSET_INVALID  # the committed offset, else auto.offset.reset
        return self._ck.OFFSET_BEGINNING if self._reset_beginning else self._ck.OFFSET_END

    def _reassign(self) -> None:
        """(Re)start every assigned partition at its position: how librdkafka sets the start
        offset of partitions that are not fetched yet."""
        order = sorted(self._assigned)
        self._c.assign([self._CTP(tp.topic, tp.partition, self._start_offset(tp)) for tp in order])
        paused = [self._ctp(tp) for tp in order if tp in self._paused]
        if paused:
            self._c.pause(paused)

    # -- positions ---------------------------------------------------------------------------
    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._seek({partition: int(offset)})

    def _seek(self, targets: dict[TopicPartition, int]) -> None:
        if self._dirty:  # a manual assignment not handed to librdkafka yet: it starts there
            for tp, off in targets.items():
                self._pos[tp] = off
            return
        refused = []
        for tp, off in targets.items():
            self._pos[tp] = off
            self._pending.pop(tp, None)
            if not self._try_seek(tp, off):
                refused.append(tp)
        if not refused:
            return
        if self._manual:  # re-assign at the positions (the next poll)
            self._dirty = True
            return
        deadline = time.monotonic() + (0 if self._in_rebalance else 2.0)
        while refused and time.monotonic() < deadline:
            time.sleep(0.005)
            refused = [tp for tp in refused if not self._try_seek(tp, targets[tp])]
        for tp in refused:  # poll() applies them once the fetcher is up
            self._pending[tp] = targets[tp]

    def _try_seek(self, tp: TopicPartition, off: int) -> bool:
        """True when librdkafka took the seek; False while the partition is not fetched yet."""
        try:
            self._c.seek(self._CTP(tp.topic, tp.partition, off))
            return True
        except self._ck.KafkaException as exc:
            code = self._code(exc)
            # _UNKNOWN_PARTITION: assigned to us, but librdkafka is yet to take the assignment
            # (a seek from the rebalance listener)
            if code == self._E._STATE or (code == self._E._UNKNOWN_PARTITION and tp in self._assigned):
                return False
            raise self._error(exc, f"seek {tp.topic}[{tp.partition}] to {off}") from None

    def _apply_pending(self) -> None:
        for tp, off in list(self._pending.items()):
            if tp not in self._assigned:
                del self._pending[tp]
            elif self._try_seek(tp, off):
                del self._pending[tp]

    def seek_to_beginning(self, *partitions) -> None:
        tps = list(partitions) or sorted(self._assigned)
        self._seek(self.beginning_offsets(tps))

    def seek_to_end(self, *partitions) -> None:
        tps = list(partitions) or sorted(self._assigned)
        self._seek(self.end_offsets(tps))

    def position(self, partition: TopicPartition) -> int:
        pos = self._pos.get(partition)
        if pos is not None:
            return pos
        # Nothing read or sought yet: where fetching starts (kafka-python resolves it the same way).
        if self._group:
            committed = self.committed(partition)
            if committed is not None:
                return committed
        return self._list_offsets([partition], self._reset_beginning)[partition]

    def highwater(self, partition: TopicPartition) -> int | None:
        """The end offset of the partition in librdkafka's last fetch response as of the last
        poll() (None before the first), like kafka-python's. A plain read of what poll() noted:
        /healthz calls this from another thread, and a call into the librdkafka handle from a
        second thread waits for the first thread's poll() to return — seconds, in a loop."""
        return self._hw.get(partition)

    def _note_highwaters(self) -> None:
        hw = self._hw
        get = self._c.get_watermark_offsets
        for tp in self._assigned:
            try:
                high = get(self._ctp(tp), cached=True)[1]
            except self._ck.KafkaException:
                continue
            if high >= 0:
                hw[tp] = high

    def beginning_offsets(self, partitions) -> dict[TopicPartition, int]:
        return self._list_offsets(partitions, earliest=True)

    def end_offsets(self, partitions) -> dict[TopicPartition, int]:
        """The high watermarks (as kafka-python with its default read_uncommitted)."""
        return self._list_offsets(partitions, earliest=False)

    def committed(self, partition: TopicPartition, metadata: bool = False):
        try:
            r = self._c.committed([self._ctp(partition)], timeout=self._timeout)[0]
        except self._ck.KafkaException as exc:
            raise self._error(exc, f"committed offset of {partition.topic}[{partition.partition}]") from None
        if r.error is not None:
            raise RdKafkaError(r.error, f"committed offset of {partition.topic}[{partition.partition}]")
        if r.offset < 0:
            return None
        return OffsetAndMetadata(r.offset, r.metadata or "", -1) if metadata else r.offset

    def commit(self, offsets: dict | None = None) -> None:
        """Commit synchronously; `offsets` {TopicPartition: OffsetAndMetadata | int}, by default
        the positions of every assigned partition."""
        if offsets is None:
            offsets = {tp: self._pos[tp] for tp in self._assigned if tp in self._pos}
        want = {tp: om for tp, om in self._deferred.items() if tp in self._assigned}
        want.update(offsets)
        if not want:
            return
        parts = []
        for tp, om in want.items():
            off, meta = (om, None) if isinstance(om, int) else (om.offset, om.metadata or None)
            parts.append(self._CTP(tp.topic, tp.partition, off, meta) if meta
                         else self._CTP(tp.topic, tp.partition, off))
        try:
            result = self._c.commit(offsets=parts, asynchronous=False)
        except self._ck.KafkaException as exc:
            code = self._code(exc)
            if code == self._E._NO_OFFSET:
                return
            if code in self._REBALANCING:
                self._defer(want, exc.args[0])
                return
            raise self._error(exc, "commit") from None
        failed = {}
        for r in result or ():
            if r.error is not None:
                failed[self._tp(r.topic, r.partition)] = r.error
        self._deferred = {}
        if failed:
            errors = list(failed.values())
            if all(e.code() in self._REBALANCING for e in errors):
                self._defer({tp: want[tp] for tp in failed}, errors[0])
                return
            raise RdKafkaError(next(e for e in errors if e.code() not in self._REBALANCING), "commit")

    def _defer(self, offsets: dict, err) -> None:
        self._deferred = {tp: om for tp, om in offsets.items() if tp in self._assigned}
        log.warning("offset commit refused while the group rebalances; retried with the next commit",
                    extra={"error": err.str(), "partitions": len(offsets)})

    def pause(self, *partitions) -> None:
        if not self._dirty:  # else the re-assignment pauses them
            self._c.pause([self._ctp(tp) for tp in partitions])
        self._paused.update(partitions)

    def resume(self, *partitions) -> None:
        tps = [tp for tp in partitions if tp in self._paused]
        if not tps:
            return
        self._paused.difference_update(tps)
        if self._dirty:
            return
        self._c.resume([self._ctp(tp) for tp in tps])
        # librdkafka dropped what it had prefetched at the pause: fetch again from the position
        self._seek({tp: self._pos[tp] for tp in tps if tp in self._pos})

    # -- records -----------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True) -> dict:
        n = max_records or self._max_records
        deadline = time.monotonic() + timeout_ms / 1000
        c = self._c
        while True:
            if self._fatal is not None:
                raise RdKafkaError(self._fatal, "fatal consumer error")
            if self._dirty:
                self._dirty = False
                self._reassign()
            if self._pending:
                self._apply_pending()
            msgs = c.consume(n, 0)  # what is there, without waiting for a full batch
            if not msgs and timeout_ms:
                left = deadline - time.monotonic()
                if left > 0:
                    # a pending seek is retried every 10 ms
                    m = c.poll(min(left, 0.01) if self._pending else left)
                    if m is not None:
                        msgs = [m]
                        if n > 1:
                            msgs.extend(c.consume(n - 1, 0))
            out = self._records(msgs) if msgs else {}
            if out or not timeout_ms or time.monotonic() >= deadline:
                self._note_highwaters()
                return out

    def _records(self, msgs) -> dict[TopicPartition, list]:
        out: dict[TopicPartition, list] = {}
        new = tuple.__new__
        R = ConsumerRecord
        pos = self._pos
        last_t = last_p = None
        tp = recs = None
        next_off = -1
        skip = True
        for m in msgs:
            err = m.error()
            if err is not None:
                if recs is not None and not skip:
                    pos[tp] = next_off  # before _event, which may move it past a gap
                recs = last_t = None
                self._event(m, err)
                continue
            t = m.topic()
            p = m.partition()
            if p != last_p or t != last_t:
                if recs is not None and not skip:
                    pos[tp] = next_off
                last_t, last_p = t, p
                tp = self._tp(t, p)
                skip = tp not in self._assigned or tp in self._paused or tp in self._pending
                if not skip:
                    recs = out.get(tp)
                    if recs is None:
                        recs = out[tp] = []
                    next_off = pos.get(tp, -1)
            off = m.offset()
            if skip or off < next_off:
                continue  # not ours (any more), paused, sought elsewhere, or stale
            recs.append(new(R, (t, p, off, m.timestamp()[1], m.key(), m.value(), m.headers() or ())))
            next_off = off + 1
        if recs is not None and not skip:
            pos[tp] = next_off
        return {k: v for k, v in out.items() if v}

    def _event(self, m, err) -> None:
        code = err.code()
        if code == self._E._PARTITION_EOF:
            tp = self._tp(m.topic(), m.partition())
            if tp in self._assigned and tp not in self._paused and tp not in self._pending:
                end = m.offset()
                if end > self._pos.get(tp, -1):  # past a trailing gap of a compacted log
                    self._pos[tp] = end
            return
        if err.fatal():
            raise RdKafkaError(err, "fatal consumer error")
        self._log_error(err, "consumer error (librdkafka retries by itself)")

    def close(self, autocommit: bool = False, timeout_ms=None) -> None:
        """Leave the group (if any) and close; never commits (the daemon commits before). As
        with kafka-python, the listener is told of the revocation of what was assigned."""
        try:
            self._c.close()
        finally:
            if self._admin_client is not None:
                self._admin_client = None
                _release_admin(self._admin_conf)


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
