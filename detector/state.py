"""Detector state as changelog records: what is persisted, under which key, in which format.

Keys (UTF-8) in the compacted changelog topic, partitioned like the input:
- `n:<msisdn>` — one number's state, packed (`NumberState.pack`, binary, version byte first; a
  version-1 JSON value is still read), a tombstone when the number expires;
- `m:<partition>` — the partition engine's own state: the model, its clocks, and the input
  positions the state reflects (so a restore replays only the gap).
Keys in the compacted shared topic (cross-number facts, read by every process):
- `h|<imei>|<msisdn>` / `c|<cell>|<msisdn>` — the time buckets a line was seen on a handset / cell,
  in the partition of the line's number (one writer per key);
- `w|<partition>` — that partition's watermark: every pair from records before it is published.
Every other value is JSON with a format version `v`; an unknown version is refused, not guessed at.
A shared-topic record that is refused is skipped and counted (`apply_shared`): that topic is
compacted and read from its start by every daemon, so one bad record would otherwise stop them all.
"""
from __future__ import annotations

import re

import orjson

from .core import Detector, Engine
from .features import NumberState
from .shared import _M32, entry_of

STATE_VERSION = 1


def encode(obj: dict | None) -> bytes | None:
    return None if obj is None else orjson.dumps(obj)


def engine_meta(engine: Engine, positions: dict[str, int]) -> dict:
    return {"v": STATE_VERSION, "model_id": engine.model_id, "model": engine.model.to_dict(),
            "clock": engine.clock, "start_ts": engine.start_ts, "next_sweep": engine.next_sweep,
            "positions": positions}


def load_engine_meta(engine: Engine, meta: dict) -> dict[str, int]:
    if meta.get("v") != STATE_VERSION:
        raise ValueError(f"unknown engine-state version {meta.get('v')!r}")
    engine.model.load_dict(meta["model"])
    engine.clock = meta["clock"]
    engine.start_ts = meta["start_ts"]
    engine.next_sweep = meta["next_sweep"]
    return {k: int(v) for k, v in meta["positions"].items()}


def drain_changes(detector: Detector, partition: int, positions: dict[str, int]) -> list[tuple[bytes, bytes | None]]:
    """Everything of one partition that changed since the last call, meta last (numbers in no
    particular order: each key stands alone)."""
    eng = detector.engines.get(partition)
    if eng is None:
        return []
    packed = eng.numbers.packed
    out: list[tuple[bytes, bytes | None]] = [(f"n:{msisdn}".encode(), packed(msisdn)) for msisdn in eng.dirty]
    eng.dirty.clear()
    meta = engine_meta(eng, positions)
    meta["breaker"] = detector.breaker.to_dict()
    out.append((f"m:{partition}".encode(), encode(meta)))
    return out


def encode_pair(entry: list | None) -> bytes | None:
    """A (thing, line) bucket mask for the shared topic; masks are hex (they exceed 64 bits).

    `{"v":1,"b":<base>,"m":["<hex>", …]}`, written by bytes formatting: it is sent for about one
    and a half pairs per input record, and this is five times cheaper than building the dict."""
    if entry is None:
        return None
    if len(entry) == 2:
        return b'{"v":%d,"b":%d,"m":["%x"]}' % (STATE_VERSION, entry[0], entry[1])
    if len(entry) == 3:
        return b'{"v":%d,"b":%d,"m":["%x","%x"]}' % (STATE_VERSION, entry[0], entry[1], entry[2])
    return orjson.dumps({"v": STATE_VERSION, "b": entry[0], "m": [format(x, "x") for x in entry[1:]]})


def shared_changes(detector: Detector) -> list[tuple[int, bytes, bytes | None]]:
    """(partition, key, value) for every shared pair changed since the last call (a tombstone
    for a pair that is gone), in the line's partition: what the daemon publishes. The values are
    `encode_pair`'s, of the pairs as the Enricher kept them (~1.5 per input record): nothing is
    looked up again."""
    partition_of = detector.partition
    return [(p if p >= 0 else partition_of(msisdn), f"{kind}|{thing}|{msisdn}".encode(),
             encode_pair(entry_of(kind, packed)))
            for (kind, thing, msisdn), (p, packed) in detector.enricher.take_changes().items()]


# exactly what `encode_pair` writes for a handset or a cell pair (JSON numbers have no leading zeros)
_PAIR_WRITTEN = re.compile(rb'\{"v":%d,"b":(0|[1-9][0-9]*),"m":\["([0-9a-f]+)"(?:,"([0-9a-f]+)")?\]\}'
                           % STATE_VERSION)


def decode_pair(value: bytes) -> list:
    """[base, mask, …] from a shared-topic value; ValueError for anything no daemon writes.

    Every daemon reads every pair the others publish (about 1.4 per input record of theirs), so
    the form `encode_pair` writes is read by one regular expression, without building a dict;
    any other JSON goes through orjson and is checked."""
    m = _PAIR_WRITTEN.fullmatch(value)
    if m is not None:
        b, x, y = m.groups()
        base = int(b)
        if base <= _M32:
            return [base, int(x, 16)] if y is None else [base, int(x, 16), int(y, 16)]
    try:
        obj = orjson.loads(value)
        if obj.get("v") != STATE_VERSION:
            raise ValueError(f"unknown state version {obj.get('v')!r}")
        if type(obj["b"]) is not int or type(obj["m"]) is not list:
            raise ValueError("b must be an integer and m a list of hex strings")
        entry = [obj["b"]] + [int(x, 16) for x in obj["m"]]
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"shared pair: {err}") from err
    if not 2 <= len(entry) <= 3 or not 0 <= entry[0] <= _M32 or min(entry) < 0:
        raise ValueError(f"shared pair: not a base and one or two non-negative masks: {value[:80]!r}")
    return entry


_PAIR_FIELDS = {"h": 2, "c": 3}  # a handset pair is [base, mask], a cell pair [base, mo_mask, mt_mask]

# Values read lately, decoded: a pair's value holds no number, only a bucket and its masks, and
# most are one of a few thousand (this hour's bucket, one or two bits), so about two reads in three
# are a dict lookup instead of `decode_pair` (about a third of a merge's cost). Emptied when full:
# a bound of ~1 MB, and no order to keep. Only what `decode_pair` accepted is kept, as tuples (the
# same entry is handed to every merge, and none may change it).
_PAIRS_READ: dict[bytes, tuple[int, ...]] = {}
_PAIRS_READ_MAX = 4096


def apply_shared(enricher, key: bytes, value: bytes | None) -> tuple[int, int] | None:
    """Fold one record of the shared topic into `enricher`; a watermark record (`w|<partition>`)
    returns (partition, watermark) instead. ValueError for a record no daemon writes, with nothing
    changed: the caller skips it, as one bad record must not stop every daemon that reads it."""
    try:
        k = key.decode()
    except (AttributeError, UnicodeDecodeError) as err:
        raise ValueError(f"shared facts: a key that is not UTF-8 text: {key!r}"[:200]) from err
    kind, _, rest = k.partition("|")
    if kind == "w":
        if value is None:
            return None
        try:
            return int(rest), int(orjson.loads(value)["wm"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"shared facts: watermark {k!r}: {err}"[:200]) from err
    fields = _PAIR_FIELDS.get(kind)
    thing, _, msisdn = rest.rpartition("|")
    if fields is None or not thing or not msisdn:
        raise ValueError(f"shared facts: unknown key {k!r}"[:200])
    if value is None:
        entry = None
    else:
        try:
            entry = _PAIRS_READ.get(value)
        except TypeError as err:  # not bytes: nothing a Kafka consumer hands over
            raise ValueError(f"shared facts: a value that is not bytes: {type(value).__name__}") from err
        if entry is None:
            entry = tuple(decode_pair(value))
            if len(_PAIRS_READ) >= _PAIRS_READ_MAX:
                _PAIRS_READ.clear()
            _PAIRS_READ[value] = entry
    if entry is not None and len(entry) != fields:
        raise ValueError(f"shared facts: {kind!r} pair with {len(entry) - 1} mask(s)")
    enricher.merge(kind, thing, msisdn, entry)
    return None


def apply_change(detector: Detector, partition: int, key: bytes, value: bytes | None) -> dict[str, int] | None:
    """Fold one changelog record into the state; returns input positions for a meta record."""
    k = key.decode()
    kind, _, name = k.partition(":")
    if kind == "n":
        detector.engine(name).suspended_stale = True
    if kind == "n" and value is not None and not value.startswith(b"{"):
        detector.engine(name).numbers.put_packed(name, value)
        return None
    obj = orjson.loads(value) if value is not None else None
    if obj is not None and obj.get("v") != STATE_VERSION:
        raise ValueError(f"changelog {k}: unknown state version {obj.get('v')!r}")
    if kind == "n":
        eng = detector.engine(name)
        if obj is None:
            if name in eng.numbers:  # a tombstone: no need to unpack what is dropped
                del eng.numbers[name]
        else:
            eng.numbers[name] = NumberState.from_dict(obj)
    elif kind == "m":
        eng = detector.engines.get(partition)
        if eng is None:
            eng = detector.engines[partition] = Engine(detector.cfg, detector.track_changes)
        if obj.get("breaker", {}).get("tripped"):  # a tripped breaker stays tripped across restarts
            detector.breaker.load_dict(obj["breaker"])
        return load_engine_meta(eng, obj)
    else:
        raise ValueError(f"changelog: unknown key {k!r}")
    return None
