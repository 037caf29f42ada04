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
"""
from __future__ import annotations

import orjson

from .core import Detector, Engine
from .features import NumberState

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
    for a pair that is gone), in the line's partition: what the daemon publishes."""
    out = []
    partition_of = detector.partition
    for kind, thing, msisdn, entry, p in detector.enricher.drain_changes():
        out.append((p if p >= 0 else partition_of(msisdn), f"{kind}|{thing}|{msisdn}".encode(), encode_pair(entry)))
    return out


def decode_pair(value: bytes) -> list:
    obj = orjson.loads(value)
    if obj.get("v") != STATE_VERSION:
        raise ValueError(f"shared pair: unknown state version {obj.get('v')!r}")
    return [int(obj["b"])] + [int(x, 16) for x in obj["m"]]


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
