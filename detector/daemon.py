"""The daemon: Kafka in, the core in the middle, suspension events and state out.

Order of work, as in Kafka Streams / Quix Streams (at-least-once):
  poll → process (events produced as they happen) → produce state changes to the changelog →
  flush (wait for the broker's acks) → commit input offsets.
Each number's state carries the input offset it has applied, so records replayed after a crash
are skipped rather than counted twice, and events carry deterministic ids so a repeat is visible.

Records of all assigned partitions are merged in event-time order (ties by record id), waiting
briefly for a partition that is behind — like Kafka Streams' `max.task.idle.ms` — so the daemon
decides exactly what `cdr-detector backtest` decides for the same data.
"""
from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections import deque
from typing import NamedTuple

import orjson
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from . import kafka_io, state
from .contract import CDR, InvalidRecord, Outcome, parse_cdr, parse_outcome
from .core import Detector, public
from .logs import mask, mask_text
from .metrics import Metrics, serve
from .pipeline import Pipeline

log = logging.getLogger("cdr_detector.daemon")
WATERMARK_DONE = 2**62  # a caught-up partition holds nothing older than anything yet to come


class StopWithoutCommit(Exception):
    """A stop was requested while output could not be handed to the producer (broker away)."""


class Item(NamedTuple):
    key: tuple  # merge order: (ts, 0 outcome | 1 record, record_id); invalid input sorts first
    offset: int
    value: CDR | Outcome | InvalidRecord
    raw: bytes
    raw_key: bytes | None


class Daemon(ConsumerRebalanceListener):
    def __init__(self, cfg: dict, metrics: Metrics | None = None, serve_http: bool = True):
        self.cfg = cfg
        self.k = cfg["kafka"]
        self.topics = kafka_io.topic_names(self.k)
        self.metrics = metrics or Metrics()
        self.serve_http = serve_http
        self.stop_event = threading.Event()
        self.max_items = int(self.k.get("max_poll_records", 2000))
        self.idle_ms = int(self.k.get("max_task_idle_ms", 2000))
        self.commit_interval = float(self.k.get("commit_interval_ms", 1000)) / 1000
        self.max_buffer = int(self.k.get("max_buffered_records", 50000))  # all partitions together
        self.detector: Detector | None = None
        self.pipeline: Pipeline | None = None
        self.buffers: dict[TopicPartition, deque[Item]] = {}
        self.processed: dict[TopicPartition, int] = {}  # next offset after the last processed item
        self.committed: dict[TopicPartition, int] = {}
        self.owned: set[int] = set()
        self.persisted_positions: dict[int, dict] = {}
        self.waiting_since: float | None = None
        self.pending_assigned: set[TopicPartition] = set()
        self.rearm_requested = False
        self.breaker_logged = False
        self.shared = None
        self.last_ts: dict[int, int] = {}  # input partition → event time of its last processed record
        self.published_wm: dict[int, int] = {}
        self.remote_wm: dict[int, int] = {}  # partition → watermark published by its owner
        self.shared_wait_ms = int(self.k.get("max_shared_wait_ms", 60_000))
        self.shared_waiting_since: float | None = None
        # Past max_task_idle_ms the merge runs other partitions ahead of an empty one that is
        # behind, but never further than the allowed lateness ahead of its last record: the
        # shared handset/cell buckets it still reads are kept that long and no longer.
        self.skew_wait_ms = int(self.k.get("max_skew_wait_ms", 60_000))
        self.skew_waiting_since: float | None = None
        self.skew_given_up: tuple[int, int] | None = None  # (partition, its last ts) merged past anyway
        # Shared-facts partitions of input partitions we own carry only what we wrote ourselves,
        # once the previous owner's last writes are read: those are paused, not read back.
        self.shared_catchup: dict[int, int] = {}  # owned partition → offset to read up to, then pause
        self.shared_paused: set[int] = set()
        self.shared_resume: set[int] = set()  # no longer owned (set on the network thread): resume
        self.gated = False  # the next record waits for another owner's shared facts
        self.more_ready = False  # the last batch stopped at max_poll_records with more ready
        self.last_fetch: dict[TopicPartition, float] = {}
        self.in_flight: list = []  # futures of everything sent since the last commit
        self._caught_cache: dict[TopicPartition, bool] = {}
        self.end_offsets: dict[TopicPartition, int] = {}
        self.last_loop = time.monotonic()
        self.broker_error_logged: dict[str, float] = {}  # client → when its outage error was last logged
        self.restoring = False
        self.consumer = None
        self.producer = None
        self.profiles = None
        self.server = None

    # -- lifecycle ---------------------------------------------------------------------------
    def request_stop(self, *_args) -> None:
        self.stop_event.set()

    def request_rearm(self, *_args) -> None:
        """SIGUSR1: an operator re-arms the suspension-storm breaker."""
        self.rearm_requested = True

    def _rearm(self) -> None:
        self.rearm_requested = False
        self.breaker_logged = False
        if self.detector.breaker.tripped:
            self.detector.breaker.rearm()
            for p in self.owned:  # persist the re-armed breaker with every partition's meta
                self.persisted_positions.pop(p, None)
            self.metrics.storm_breaker.set(0)
            log.warning("storm breaker re-armed by operator")

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
            signal.signal(signal.SIGUSR1, self.request_rearm)
        if self.serve_http:
            mc = self.cfg["metrics"]
            self.server = serve(self.metrics, mc.get("address", "127.0.0.1"), int(mc.get("port", 9400)), self.health)
            log.info("metrics and health endpoint up", extra={"address": mc.get("address"), "port": self.server.port})
        kafka_io.ensure_topics(self.k)
        self.producer = kafka_io.producer(self.k, max_block_ms=int(self.k.get("max_block_ms", 5000)))
        self.consumer = kafka_io.consumer(self.k)
        n = self._partition_count()
        self.detector = Detector(self.cfg, partitions=n, track_changes=True)
        self.pipeline = Pipeline(self.detector, self.metrics)
        self.profiles = kafka_io.consumer(self.k, group=False)
        self.profiles.assign([])
        self._start_shared(n)
        self.consumer.subscribe([self.topics["records"], self.topics["outcomes"]], listener=self)
        log.info("daemon started", extra={"group": self.k["group_id"], "partitions": n,
                                          "model": self.detector.model_id})
        next_commit = time.monotonic() + self.commit_interval
        try:
            while not self.stop_event.is_set():
                self.last_loop = time.monotonic()
                # don't block in poll() while buffered records are ready to process
                self._poll(0 if (self.gated or self.more_ready) else None)
                if self.pending_assigned:
                    self._take_assignment()
                    continue
                self._poll_profiles(0)
                if self.gated:  # another owner may be waiting for us as we wait for it: tell now
                    self.gated = False
                    self._publish_shared()
                    self._poll_shared(20)
                else:
                    self._poll_shared(0)
                if self.rearm_requested:
                    self._rearm()
                t0 = time.perf_counter()
                done = self._process_ready()
                self.more_ready = done >= self.max_items
                if done:
                    self.pipeline.publish_metrics()
                    self.metrics.batch_seconds.observe(time.perf_counter() - t0)
                if time.monotonic() >= next_commit:
                    self.commit()
                    self._learn_end_offsets()
                    self._refresh_gauges()
                    self._unstick()
                    next_commit = time.monotonic() + self.commit_interval
            self.commit()
            log.info("daemon stopped cleanly", extra={"counts": dict(self.pipeline.counts)})
            return 0
        except StopWithoutCommit:
            log.error("stop requested while the broker is away: exiting without a commit")
            return 0
        finally:
            self._close()

    def _close(self) -> None:
        for c in (self.consumer, self.profiles, self.shared):
            if c is not None:
                try:
                    c.close(autocommit=False)
                except Exception:  # closing is best effort; the commit already happened
                    log.exception("closing a consumer failed")
        if self.producer is not None:
            self.producer.close(timeout=10)
        if self.server is not None:
            self.server.shutdown()

    def _partition_count(self) -> int:
        counts = {}
        for name in ("records", "outcomes", "subscribers", "changelog"):
            parts = None
            for _ in range(50):
                parts = self.consumer.partitions_for_topic(self.topics[name])
                if parts:
                    break
                time.sleep(0.2)
            counts[name] = len(parts or ())
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"topics must be co-partitioned (same partition count): {counts}")
        return counts["records"]

    # -- health ------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict]:
        live = time.monotonic() - self.last_loop < 60
        lag = self._lag()
        records_tps = [tp for tp in self.buffers if tp.topic == self.topics["records"]]
        known = bool(records_tps) and all(tp in lag for tp in records_tps)  # no fetch yet: lag unknown
        ready = live and bool(self.owned) and not self.restoring and known and sum(lag.values()) <= int(
            self.k.get("ready_max_lag", 10_000))
        return live and (ready or not self.k.get("health_requires_ready", False)), {
            "live": live, "ready": ready, "assigned": sorted(self.owned),
            "lag": sum(lag.values()) if known else None}  # None: not every partition fetched yet

    def _lag(self) -> dict[TopicPartition, int]:
        out = {}
        if self.consumer is None:
            return out
        for tp, pos in list(self.processed.items()):
            if tp.topic != self.topics["records"]:
                continue
            hw = self.consumer.highwater(tp)
            if hw is None:
                hw = self.end_offsets.get(tp)  # a quiet partition: no fetch has reported it yet
            if hw is not None:
                out[tp] = max(0, hw - pos)
        return out

    def _learn_end_offsets(self) -> None:
        """Ask the broker for the end of record partitions whose high watermark is still unknown
        (main thread, once per commit interval), so a quiet partition can be reported caught up."""
        unknown = [tp for tp in self.buffers if tp.topic == self.topics["records"]
                   and self.consumer.highwater(tp) is None]
        if unknown:
            try:
                self.end_offsets.update(self.consumer.end_offsets(unknown))
            except KafkaError:
                pass

    def _unstick(self) -> None:
        """A partition with a backlog that has fetched nothing for a while is re-sought.

        Seen with kafka-python 3.0 after an eager rebalance kept a partition assigned: its fetch
        state stopped producing records. Seeking to where we are resets that state; nothing is
        skipped or repeated, because we seek to the next unprocessed offset."""
        now = time.monotonic()
        for tp, buf in self.buffers.items():
            if buf or tp in self.pending_assigned:
                continue
            pos = self.processed.get(tp)
            hw = self.consumer.highwater(tp)
            if pos is None or hw is None or pos >= hw:
                continue
            since = self.last_fetch.setdefault(tp, now)
            if now - since < float(self.k.get("stall_seconds", 10)):
                continue
            log.warning("partition fetched nothing despite a backlog; seeking it again",
                        extra={"topic": tp.topic, "partition": tp.partition, "position": pos, "highwater": hw})
            self.consumer.seek(tp, pos)
            self.last_fetch[tp] = now

    def _refresh_gauges(self) -> None:
        for tp, lag in self._lag().items():
            self.metrics.lag.labels(str(tp.partition)).set(lag)
        self.pipeline.refresh_gauges()

    # -- rebalancing -------------------------------------------------------------------------
    # kafka-python runs these callbacks on its network thread while the main thread waits in
    # poll(): they must not block, so they only drop what is no longer ours and note what is new;
    # the main loop restores new partitions right after poll() returns. The main loop commits
    # every `commit_interval_ms`, so a revocation hands at most that much to the next owner,
    # which replays it from the changelog's recorded positions with the same event ids.
    def on_partitions_revoked(self, revoked):
        self.metrics.rebalances.labels("revoked").inc()
        self._drop(revoked)

    def on_partitions_lost(self, lost):
        self.metrics.rebalances.labels("lost").inc()
        self._drop(lost)

    def on_partitions_assigned(self, assigned):
        self.metrics.rebalances.labels("assigned").inc()
        self.pending_assigned |= set(assigned)

    def _drop(self, tps) -> None:
        if not tps:
            return
        for tp in tps:
            self.buffers.pop(tp, None)
            self.processed.pop(tp, None)
            self.committed.pop(tp, None)
            self.pending_assigned.discard(tp)
        still = {tp.partition for tp in self.buffers}
        for p in {tp.partition for tp in tps} - still:
            self.owned.discard(p)
            self.detector.engines.pop(p, None)
            self.persisted_positions.pop(p, None)
            self.published_wm.pop(p, None)
            self.last_ts.pop(p, None)
            self.shared_resume.add(p)
        log.info("partitions revoked", extra={"partitions": sorted({tp.partition for tp in tps})})

    def _take_assignment(self) -> None:
        """Restore newly assigned partitions (main thread), then seek to the state's position.

        A retriable broker error on the way (the broker went away during the rebalance) puts the
        assignment back to be taken again at the next loop: restoring starts over from the
        changelog, so a half-done attempt leaves nothing behind."""
        added = self.pending_assigned
        self.pending_assigned = set()
        new = sorted({tp.partition for tp in added} - self.owned)
        try:
            self._restore_and_seek(added, new)
        except KafkaError as exc:
            if self.stop_event.is_set() or not getattr(exc, "retriable", False):
                raise
            self._broker_away("assign", "records", exc, partitions=new)
            self.owned -= set(new)
            for p in new:
                self.detector.engines.pop(p, None)
            for tp in added:
                self.buffers.pop(tp, None)
            self.pending_assigned |= added
            self.stop_event.wait(1)

    def _restore_and_seek(self, added: set[TopicPartition], new: list[int]) -> None:
        self.owned |= {tp.partition for tp in added}
        positions = self._restore(new) if new else {}
        self._assign_profiles(new)
        if new and self.shared is not None:
            stps = [TopicPartition(self.topics["shared"], p) for p in new]
            for tp, end in self.shared.end_offsets(stps).items():
                self.shared_catchup[tp.partition] = end
        fetch_committed = [tp for tp in added
                           if positions.get(tp.partition, {}).get(self._kind(tp)) is None]
        committed = {}
        for tp in fetch_committed:
            committed[tp] = self.consumer.committed(tp)
        for tp in added:
            self.buffers[tp] = deque()
            pos = positions.get(tp.partition, {}).get(self._kind(tp))
            if pos is None:
                pos = committed.get(tp)
            if pos is None:
                self.consumer.seek_to_beginning(tp)
                pos = self.consumer.beginning_offsets([tp])[tp]
                self.processed[tp] = pos  # so lag counts the whole backlog from the start
            else:
                self.consumer.seek(tp, pos)
                self.processed[tp] = pos
                self.committed[tp] = committed.get(tp, -1)
        # Profiles and restored state are long-lived: keep the cyclic collector from walking them
        # again and again (full collections over millions of objects are latency spikes).
        gc.collect()
        gc.freeze()
        log.info("partitions assigned", extra={"partitions": sorted(self.owned), "restored": new})

    def _kind(self, tp: TopicPartition) -> str:
        return "records" if tp.topic == self.topics["records"] else "outcomes"

    def _restore(self, parts: list[int]) -> dict[int, dict]:
        """Rebuild the state of newly assigned partitions from the changelog (the truth)."""
        self.restoring = True
        t0 = time.perf_counter()
        for p in parts:
            self.detector.engines.pop(p, None)
        c = kafka_io.consumer(self.k, group=False)
        tps = [TopicPartition(self.topics["changelog"], p) for p in parts]
        positions: dict[int, dict] = {}
        n = 0
        try:
            c.assign(tps)
            c.seek_to_beginning(*tps)
            end = c.end_offsets(tps)
            remaining = {tp for tp in tps if end[tp] > c.position(tp)}
            while remaining:
                for tp, msgs in self._poll_through_outage(c, "changelog", 500, 5000).items():
                    for msg in msgs:
                        pos = state.apply_change(self.detector, tp.partition, msg.key, msg.value)
                        if pos is not None:
                            positions[tp.partition] = pos
                        n += 1
                    self.metrics.restore_records.inc(len(msgs))
                remaining = {tp for tp in remaining if c.position(tp) < end[tp]}
        finally:
            c.close(autocommit=False)
        for p in parts:  # restored state is clean: nothing to write back
            eng = self.detector.engines.get(p)
            if eng is not None:
                eng.dirty.clear()
        self.persisted_positions.update(positions)
        seconds = time.perf_counter() - t0
        self.metrics.restore_seconds.observe(seconds)
        log.info("state restored", extra={"partitions": parts, "changelog_records": n,
                                           "numbers": self.detector.numbers_tracked(), "seconds": round(seconds, 3)})
        self.restoring = False
        return positions

    def _assign_profiles(self, new_parts: list[int]) -> None:
        """Profiles live in the co-partitioned compacted topic: read the owned partitions to the end."""
        tps = [TopicPartition(self.topics["subscribers"], p) for p in sorted(self.owned)]
        self.profiles.assign(tps)
        fresh = [TopicPartition(self.topics["subscribers"], p) for p in new_parts]
        if not fresh:
            return
        self.profiles.seek_to_beginning(*fresh)
        end = self.profiles.end_offsets(fresh)
        deadline = time.monotonic() + 300
        while any(self.profiles.position(tp) < end[tp] for tp in fresh) and time.monotonic() < deadline:
            self._poll_profiles(500)

    def _poll_profiles(self, timeout_ms: int) -> None:
        if not self.owned:
            return
        for tp, msgs in self._poll_through_outage(self.profiles, "profiles", timeout_ms, 5000).items():
            for msg in msgs:
                if msg.value is None:
                    continue
                self.pipeline.profile(msg.value)

    # -- the shared facts (handsets, cells) ---------------------------------------------------
    def _start_shared(self, partitions: int) -> None:
        """Every process reads the whole shared topic: first to its end, then as it grows."""
        self.shared = kafka_io.consumer(self.k, group=False)
        tps = [TopicPartition(self.topics["shared"], p) for p in range(partitions)]
        self.shared.assign(tps)
        self.shared.seek_to_beginning(*tps)
        end = self.shared.end_offsets(tps)
        t0 = time.perf_counter()
        n = 0
        while any(self.shared.position(tp) < end[tp] for tp in tps):
            n += self._poll_shared(500)
        log.info("shared facts loaded", extra={"records": n, "seconds": round(time.perf_counter() - t0, 3)})

    def _pause_own_shared(self) -> None:
        """Pause the shared partitions we own once read up to their end at takeover; resume the
        ones no longer ours (a manually assigned consumer: no rebalance can lose the pause)."""
        for p in list(self.shared_resume):
            self.shared_resume.discard(p)
            if p in self.owned:
                continue
            self.shared_catchup.pop(p, None)
            if p in self.shared_paused:
                self.shared.resume(TopicPartition(self.topics["shared"], p))
                self.shared_paused.discard(p)
        for p, end in list(self.shared_catchup.items()):
            tp = TopicPartition(self.topics["shared"], p)
            if p not in self.owned:
                del self.shared_catchup[p]
            elif self.shared.position(tp) >= end:
                self.shared.pause(tp)
                self.shared_paused.add(p)
                del self.shared_catchup[p]

    def _poll_shared(self, timeout_ms: int) -> int:
        n = 0
        enricher = self.detector.enricher
        if self.shared_resume or self.shared_catchup:
            self._pause_own_shared()
        apply = state.apply_shared
        for tp, msgs in self._poll_through_outage(self.shared, "shared", timeout_ms, 10000).items():
            for msg in msgs:
                n += 1
                # Merging is an idempotent OR, so our own pairs coming back are harmless — and a
                # pair the previous owner of a partition published after we took it over is needed.
                try:
                    wm = apply(enricher, msg.key, msg.value)
                except ValueError as err:  # the topic is compacted: a bad record would stay, and
                    self.metrics.shared_invalid.inc()  # stop every daemon at every start
                    log.warning("skipped a shared-facts record no daemon writes",
                                extra={"partition": tp.partition, "offset": msg.offset, "error": mask_text(str(err))})
                    continue
                if wm is not None:
                    self.remote_wm[wm[0]] = wm[1]
        return n

    def _shared_ready(self, ts: int) -> bool:
        """Have the owners of the other partitions published every pair before ts's bucket?"""
        if len(self.owned) >= self.detector.partitions:
            return True
        bucket_start = ts - ts % self.detector.enricher.bucket_ms
        for p in range(self.detector.partitions):
            if p not in self.owned and self.remote_wm.get(p, -1) < bucket_start:
                now = time.monotonic()
                if self.shared_waiting_since is None:
                    self.shared_waiting_since = now
                if (now - self.shared_waiting_since) * 1000 < self.shared_wait_ms:
                    self.gated = True
                    return False
                self.metrics.shared_wait_timeouts.inc()
                log.warning("gave up waiting for another partition's shared facts",
                            extra={"partition": p, "watermark": self.remote_wm.get(p), "needed": bucket_start})
                self.shared_waiting_since = None
                return True
        self.shared_waiting_since = None
        return True

    def _watermark(self, p: int) -> int | None:
        """Event time before which every record of input partition p has been processed."""
        tp = TopicPartition(self.topics["records"], p)
        buf = self.buffers.get(tp)
        if buf is None:
            return None
        if buf:
            head = buf[0]
            return head.key[0] if head.key[0] >= 0 else self.last_ts.get(p)
        if self._caught_up(tp):
            return WATERMARK_DONE
        return self.last_ts.get(p)

    def _publish_shared(self) -> None:
        owned = self.owned
        for p, key, value in state.shared_changes(self.detector):
            if p in owned:
                self._send(self.topics["shared"], key=key, value=value, partition=p)
        for p in sorted(self.owned):
            wm = self._watermark(p)
            if wm is not None and wm != self.published_wm.get(p):
                self._send(self.topics["shared"], key=f"w|{p}".encode(),
                                   value=orjson.dumps({"v": 1, "wm": wm}), partition=p)
                self.published_wm[p] = wm

    # -- the loop ----------------------------------------------------------------------------
    def _poll(self, timeout_ms: int | None = None) -> None:
        """Fetch more, but never more than the buffers have room for.

        Back-pressure is by asking for fewer records, not by pausing partitions: kafka-python 3.0
        can lose a paused partition's fetch state across a rebalance and never fetch it again."""
        if timeout_ms is None:
            timeout_ms = int(self.k.get("poll_timeout_ms", 500))
        room = self.max_buffer - sum(len(b) for b in self.buffers.values())
        if room <= 0:
            timeout_ms, room = 0, 1  # keep the group session alive; take almost nothing
        batches = self._poll_through_outage(self.consumer, "records", timeout_ms, min(self.max_items, room))
        for tp, msgs in batches.items():
            buf = self.buffers.get(tp)
            if buf is None or tp in self.pending_assigned:
                continue  # not restored yet: it is fetched again after the seek
            is_outcome = tp.topic == self.topics["outcomes"]
            self.last_fetch[tp] = time.monotonic()
            for msg in msgs:
                buf.append(self._item(msg, is_outcome))

    def _poll_through_outage(self, consumer, which: str, timeout_ms: int, max_records: int) -> dict:
        """poll(), but a broker that is away means "nothing fetched", not a dead daemon.

        kafka-python 3.0 usually returns nothing while the broker is down, yet sometimes raises
        from poll() instead: a retriable error (seen: `KafkaConnectionError`, ECONNREFUSED, from
        the metadata refresh inside the group coordinator's poll). The next poll reconnects, so
        such an error is counted, logged at most once a minute, and waited out; any other
        error still stops the daemon."""
        try:
            batches = consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            if not getattr(exc, "retriable", False):
                raise
            self._broker_away("poll", which, exc)
            self.stop_event.wait(min(max(timeout_ms, 100), 1000) / 1000)  # no busy loop at timeout 0
            return {}
        return batches

    def _broker_away(self, operation: str, client: str, exc: Exception, **extra) -> None:
        """A retriable broker error about to be waited out: count it, log it at most once a
        minute per client (an outage repeats it every second), and stay live — waiting on the
        broker is not being stuck."""
        self.metrics.broker_errors.labels(operation=operation).inc()
        now = self.last_loop = time.monotonic()
        if now - self.broker_error_logged.get(client, -1e9) >= 60:
            self.broker_error_logged[client] = now
            log.warning("broker away; retrying", extra={"operation": operation, "client": client,
                                                         "error": mask_text(repr(exc)), **extra})

    def _item(self, msg, is_outcome: bool) -> Item:
        raw = msg.value if msg.value is not None else b""
        try:
            value = parse_outcome(raw) if is_outcome else parse_cdr(raw)
        except InvalidRecord as err:
            return Item((-1,), msg.offset, err, raw, msg.key)
        if is_outcome:
            return Item((value.ts, 0, ""), msg.offset, value, raw, msg.key)
        return Item((value.ts, 1, value.record_id), msg.offset, value, raw, msg.key)

    def _next_tp(self) -> TopicPartition | None:
        """The partition whose head comes next in event time, or None to wait for a laggard."""
        best = None
        best_key = None
        waiting = False
        laggard = None  # (last ts, partition) of the furthest-behind empty records partition
        for tp, buf in self.buffers.items():
            if buf:
                k = buf[0].key
                if best_key is None or k < best_key:
                    best, best_key = tp, k
            else:
                up = self._caught_cache.get(tp)
                if up is None:  # positions only move on poll(): ask the client once per batch
                    up = self._caught_cache[tp] = self._caught_up(tp)
                if not up:
                    waiting = True
                    last = self.last_ts.get(tp.partition) if tp.topic == self.topics["records"] else None
                    if last is not None and (laggard is None or last < laggard[0]):
                        laggard = (last, tp.partition)
        if best is None:
            return None
        if best_key[0] != -1 and best_key[1] == 1 and not self._shared_ready(best_key[0]):
            return None
        if waiting and best_key[0] != -1:
            now = time.monotonic()
            if self.waiting_since is None:
                self.waiting_since = now
            if (now - self.waiting_since) * 1000 < self.idle_ms:
                return None
            if laggard is not None and best_key[0] > laggard[0] + self.detector.lateness_ms \
                    and not self._skew_wait_over(laggard, best_key[0], now):
                return None
        else:
            self.waiting_since = None
        self.skew_waiting_since = None
        return best

    def _skew_wait_over(self, laggard: tuple[int, int], ts: int, now: float) -> bool:
        """Has the merge waited max_skew_wait_ms for this laggard (then it goes past it)?"""
        last, p = laggard
        if self.skew_given_up == (p, last):
            return True  # given up already, until the laggard processes a record again
        if self.skew_waiting_since is None:
            self.skew_waiting_since = now
        if (now - self.skew_waiting_since) * 1000 < self.skew_wait_ms:
            return False
        self.skew_given_up = (p, last)
        self.metrics.skew_wait_timeouts.inc()
        log.warning("gave up waiting for a partition that is behind; merging past it by more "
                    "than the allowed lateness", extra={"partition": p, "last_ts": last, "next_ts": ts})
        return True

    def _caught_up(self, tp: TopicPartition) -> bool:
        hw = self.consumer.highwater(tp)
        if hw is None:
            return False
        try:
            return self.consumer.position(tp) >= hw
        except Exception:  # position unknown while (re)assigning
            return False

    def _process_ready(self) -> int:
        done = 0
        self._caught_cache = {}
        while done < self.max_items:
            tp = self._next_tp()
            if tp is None:
                break
            item = self.buffers[tp].popleft()
            self._handle(tp, item)
            self.processed[tp] = item.offset + 1
            if item.key[0] >= 0 and tp.topic == self.topics["records"]:
                self.last_ts[tp.partition] = item.key[0]
            done += 1
        return done

    def _handle(self, tp: TopicPartition, item: Item) -> None:
        v = item.value
        if isinstance(v, InvalidRecord):
            self._dead_letter(tp, item, v)
            return
        if isinstance(v, Outcome):
            events = self.pipeline.outcome(v)
        else:
            events = self.pipeline.process_at(v, item.offset)
            if self.detector.last_result == "late":
                self._dead_letter(tp, item, InvalidRecord(
                    "late", "ts", "record is older than its number's newest record by more than "
                                  "state.allowed_lateness_minutes; set aside"))
                return
        for e in events:
            self._emit(e)

    def _emit(self, event: dict) -> None:
        if event.get("_breaker") and not self.breaker_logged:
            self.breaker_logged = True
            self.metrics.storm_breaker.set(1)
            log.error("suspension storm: breaker tripped, decisions are shadow-only until re-armed "
                      "(kill -USR1 <pid>)", extra={"bound_per_minute": self.detector.breaker.bound})
        self._send(self.topics["suspensions"], key=event["msisdn"].encode(),
                           value=orjson.dumps(public(event)))
        log.info("decision", extra={"action": event["action"], "tier": event["tier"], "mode": event["mode"],
                                    "msisdn": mask(event["msisdn"]), "score": event["score"],
                                    "event_id": event["event_id"],
                                    "reasons": [r["code"] for r in event["reasons"]]})

    def _dead_letter(self, tp: TopicPartition, item: Item, err: InvalidRecord) -> None:
        if tp.topic == self.topics["outcomes"]:
            self.pipeline.counts["invalid_outcome"] += 1
        elif err.reason != "late":  # late records are counted as such by the pipeline
            self.pipeline.counts["invalid"] += 1
            self.pipeline.invalid[err.reason] += 1
            self.metrics.records.labels("invalid").inc()
            self.metrics.invalid.labels(err.reason).inc()
        self.metrics.dlq.labels(err.reason).inc()
        headers = [("error", str(err).encode("utf-8", "replace")[:1000]),
                   ("error.reason", err.reason.encode()),
                   ("error.field", (err.field or "").encode()),
                   ("source.topic", tp.topic.encode()),
                   ("source.partition", str(tp.partition).encode()),
                   ("source.offset", str(item.offset).encode())]
        self._send(self.topics["dlq"], key=item.raw_key, value=item.raw, headers=headers)
        log.warning("record rejected", extra={"reason": err.reason, "field": err.field, "error": mask_text(str(err)),
                                              "topic": tp.topic, "partition": tp.partition, "offset": item.offset})

    # -- commit ------------------------------------------------------------------------------
    def _send(self, topic: str, **kw) -> None:
        """Send, keeping the future: a commit must not pass a send the broker refused.

        While the broker is away the producer's buffer fills up, and a send that has waited
        `kafka.max_block_ms` for room raises `KafkaTimeoutError` having queued nothing: send it
        again, for as long as the outage lasts, staying live. A stop requested meanwhile ends
        the daemon without a commit; the next start replays from the last one."""
        while True:
            try:
                self.in_flight.append(self.producer.send(topic, **kw))
                return
            except KafkaTimeoutError as exc:
                self._broker_away("send", "producer", exc, topic=topic)  # buffer full or metadata unknown
                if self.stop_event.is_set():
                    raise StopWithoutCommit from None

    def commit(self) -> None:
        """State changes → changelog, flush (events and state acknowledged), then offsets."""
        if self.producer is None or self.detector is None:
            return
        t0 = time.perf_counter()
        for p in sorted(self.owned):
            positions = {}
            for kind in ("records", "outcomes"):
                pos = self.processed.get(TopicPartition(self.topics[kind], p))
                if pos is not None:
                    positions[kind] = pos
            eng = self.detector.engines.get(p)
            if eng is None or (not eng.dirty and positions == self.persisted_positions.get(p)):
                continue
            for key, value in state.drain_changes(self.detector, p, positions):
                self._send(self.topics["changelog"], key=key, value=value, partition=p)
            self.persisted_positions[p] = positions
        self._publish_shared()
        t1 = time.perf_counter()
        if not self._flush():
            return
        failed = [f for f in self.in_flight if f.failed()]
        self.in_flight = []
        if failed:  # never commit past output the broker did not take: go back to the changelog
            log.error("sends failed; rewinding to the persisted state", extra={
                "failed": len(failed), "error": repr(failed[0].exception)})
            self._rewind()
            return
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in self.processed.items()
                   if self.committed.get(tp) != off}
        if offsets:
            while True:
                try:
                    self.consumer.commit(offsets)
                    break
                except KafkaError as exc:  # broker away: keep trying, stay live
                    if self.stop_event.is_set() or not getattr(exc, "retriable", False):
                        raise
                    self._broker_away("commit", "records", exc)
                    time.sleep(1)
            for tp, om in offsets.items():
                self.committed[tp] = om.offset
        self.metrics.commit_seconds.observe(time.perf_counter() - t1)

    def _flush(self) -> bool:
        """Wait for the broker to acknowledge everything sent — through an outage if need be.

        Returns False only when a stop was requested while the broker was away: nothing is
        committed then, and the next start replays from the last commit."""
        warned = False
        while True:
            try:
                self.producer.flush(timeout=5)
                return True
            except KafkaTimeoutError:
                self.last_loop = time.monotonic()  # waiting on the broker is not being stuck
                if not warned:
                    log.warning("broker not acknowledging; waiting for it to come back")
                    warned = True
                if self.stop_event.is_set():
                    log.error("stop requested while the broker is away: exiting without a commit")
                    return False

    def _rewind(self) -> None:
        """Some output was lost: rebuild the owned partitions from the changelog and re-read from
        the positions it records, as a restart would — without restarting."""
        self.in_flight = []
        parts = sorted(self.owned)
        while True:
            try:
                positions = self._restore(parts)
                break
            except KafkaError as exc:
                log.warning("rewind waits for the broker", extra={"error": repr(exc)})
                self.last_loop = time.monotonic()
                time.sleep(2)
        for tp, buf in self.buffers.items():
            buf.clear()
            pos = positions.get(tp.partition, {}).get(self._kind(tp), self.committed.get(tp))
            if pos is None or pos < 0:
                self.consumer.seek_to_beginning(tp)
                self.processed.pop(tp, None)
            else:
                self.consumer.seek(tp, pos)
                self.processed[tp] = pos
        self.persisted_positions = {p: positions.get(p, {}) for p in parts}
