"""Shared helpers for the core's unit tests: contract-valid records, configs, synthetic traffic.

Test modules use the fixtures below; constants and plain helpers can also be imported
(`from conftest import T0, HOUR`), since pytest puts this directory on sys.path.
"""
from __future__ import annotations

import csv
import gzip
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import orjson
import pytest

from detector import config
from detector.contract import CDR, Outcome, Profile, parse_cdr, parse_outcome, parse_profile

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CDR_SHARED_DIR") or next((p for p in (Path(__file__).resolve().parents[1].parent / "shared", Path("/work/shared")) if p.exists()), "/work/shared"))
SAMPLE_DIR = SHARED / "data" / "sample"
SCORE_PY = SHARED / "tools" / "score.py"

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# 2026-07-13 02:00 UTC = 10:00 local (UTC+8): daytime, so no call counts as a night call.
T0 = int(datetime(2026, 7, 13, 2, 0, tzinfo=timezone.utc).timestamp() * 1000)

HOME = "GD-SZ"
# Provinces other than the home one (GD), none of which collide in features._province_id.
PROVINCES = ("SC", "HEN", "HUN", "HB", "JX", "AH", "FJ", "GX", "YN", "GZ", "CQ", "SN", "SX", "BJ", "SH", "TJ")

CONTRACT_EVENT_KEYS = {"event_id", "ts", "msisdn", "action", "tier", "verification", "score", "reasons",
                       "mode", "model"}


# -- records, profiles, outcomes ---------------------------------------------------------------
def make_cdr(**overrides: Any) -> dict:
    """A contract-valid CDR as a dict (an answered local MO voice call); keyword args override fields."""
    rec = {
        "record_id": "r0000001",
        "ts": T0,
        "msisdn": "13800000001",
        "direction": "MO",
        "peer": "13900000001",
        "service": "voice",
        "duration_s": 65,
        "answered": True,
        "cell_id": "c10001",
        "cell_region": HOME,
        "peer_region": "GD-GZ",
        "imei": "860000000000001",
    }
    rec.update(overrides)
    return rec


def make_profile(**overrides: Any) -> dict:
    """A contract-valid subscriber profile: an old, verified, postpaid consumer line."""
    prof = {
        "msisdn": "13800000001",
        "home_region": HOME,
        "activated_ts": T0 - 800 * DAY,
        "plan": "postpaid",
        "segment": "consumer",
        "id_verified": True,
    }
    prof.update(overrides)
    return prof


def make_outcome(**overrides: Any) -> dict:
    out = {"msisdn": "13800000001", "ts": T0, "outcome": "cleared"}
    out.update(overrides)
    return out


def cdr(**overrides: Any) -> CDR:
    return parse_cdr(make_cdr(**overrides))


def profile(**overrides: Any) -> Profile:
    return parse_profile(make_profile(**overrides))


def outcome(**overrides: Any) -> Outcome:
    return parse_outcome(make_outcome(**overrides))


# -- configuration -------------------------------------------------------------------------------
def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _nest(dotted: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_cfg(overrides: dict | None = None, **dotted: Any) -> dict:
    """The default configuration (no environment), with nested and/or dotted overrides:
    `load_cfg({"tiers": {"low": {"mode": "shadow"}}})` or `load_cfg(**{"tiers.low.mode": "shadow"})`."""
    merged = _deep_merge(overrides or {}, _nest(dotted))
    return config.load(environ={}, overrides=merged or None)


# -- synthetic traffic ---------------------------------------------------------------------------
class Stream:
    """Builds parsed records with unique record ids and, by default, never-seen peers."""

    def __init__(self, prefix: str = "r"):
        self.prefix = prefix
        self.n = 0

    def rec(self, **overrides: Any) -> CDR:
        self.n += 1
        base = {"record_id": f"{self.prefix}{self.n:07d}", "peer": f"15{self.n:09d}"}
        base.update(overrides)
        return cdr(**base)

    def blast(self, msisdn: str, start: int, n: int, gap_ms: int = MINUTE, imei: str = "860000000009999",
              cell_id: str = "c20001", provinces: Iterable[str] = PROVINCES, **overrides: Any) -> list[CDR]:
        """`n` outgoing voice calls, one every `gap_ms`, each to a new number, unanswered, cycling
        through other provinces: the shape of a call-centre scam or one-ring line."""
        provs = tuple(provinces)
        out = []
        for i in range(n):
            fields = {"msisdn": msisdn, "ts": start + i * gap_ms, "direction": "MO", "service": "voice",
                      "duration_s": 0, "answered": False, "peer_region": provs[i % len(provs)],
                      "imei": imei, "cell_id": cell_id}
            fields.update(overrides)
            out.append(self.rec(**fields))
        return out

    def two_way(self, msisdn: str, start: int, days: int, contacts: list[str], *, calls_per_day: int = 8,
                inbound_per_day: int = 6, peer_region: str = "GD-GZ", imei: str = "860000000000777",
                cell_id: str = "c30001", first_hour: int = 1, last_hour: int = 12) -> list[CDR]:
        """An ordinary subscriber: answered calls to and from a fixed set of contacts, spread over
        daytime hours (local 11:00–22:00 with the default T0), every day."""
        out = []
        span = (last_hour - first_hour) * HOUR
        for d in range(days):
            day0 = start + d * DAY + first_hour * HOUR
            for i in range(calls_per_day):
                out.append(self.rec(msisdn=msisdn, ts=day0 + i * span // calls_per_day, direction="MO",
                                    peer=contacts[(d * calls_per_day + i) % len(contacts)],
                                    duration_s=60 + 37 * i, answered=True, peer_region=peer_region,
                                    imei=imei, cell_id=cell_id))
            for i in range(inbound_per_day):
                out.append(self.rec(msisdn=msisdn, ts=day0 + 7 * MINUTE + i * span // inbound_per_day,
                                    direction="MT", peer=contacts[(d * inbound_per_day + i + 3) % len(contacts)],
                                    duration_s=90 + 23 * i, answered=True, peer_region=peer_region,
                                    imei=imei, cell_id=cell_id))
        out.sort(key=lambda r: (r.ts, r.record_id))
        return out


def warm_up(target, ts: int = T0 - 2 * DAY) -> None:
    """Start an Engine's/Detector's clock two days before T0 with an unrelated number's record, so
    at T0 the detector has watched long enough for contact-history evidence to count fully (the
    cold-start ramp is `model.warmup_hours`)."""
    target.on_record(cdr(record_id="warmup-0000001", msisdn="13000000000", ts=ts, direction="MT",
                         peer="13000000001", imei="860000000000000", cell_id="c00000"))


def events_of(records: Iterable[CDR], target, facts=None) -> list[dict]:
    out = []
    for rec in records:
        out.extend(target.on_record(rec, facts) if facts is not None else target.on_record(rec))
    return out


# -- a slice of the labelled sample ----------------------------------------------------------------
# Which subscribers of the sample go into the slice, by typology: the first N in labels.csv order
# (no cherry-picking). Heavy legitimate users (couriers, business lines, migrants) are over-represented
# on purpose: they are the false suspensions this project exists to avoid.
SLICE_BENIGN = {"typical": 110, "light": 60, "business": 35, "courier": 35, "migrant": 35, "night": 25}
SLICE_FRAUD = {"scam": 15, "wangiri": 15, "simbox": 15, "irsf": 15}


def write_slice(out_dir: Path, benign: dict[str, int], fraud: dict[str, int]) -> Path:
    """Every record (time order kept), profile and label of the chosen subscribers of the sample."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(SAMPLE_DIR / "labels.csv", newline="") as f:
        reader = csv.DictReader(f)
        fieldnames = reader.fieldnames
        rows = list(reader)
    quota = {("benign", k): v for k, v in benign.items()} | {("fraud", k): v for k, v in fraud.items()}
    chosen = []
    for row in rows:
        key = (row["label"], row["typology"])
        if quota.get(key, 0) > 0:
            quota[key] -= 1
            chosen.append(row)
    keep = {row["msisdn"] for row in chosen}
    with open(out_dir / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(chosen)
    with open(SAMPLE_DIR / "subscribers.jsonl", "rb") as f, open(out_dir / "subscribers.jsonl", "wb") as g:
        for line in f:
            if line.strip() and orjson.loads(line)["msisdn"] in keep:
                g.write(line)
    with gzip.open(SAMPLE_DIR / "cdrs.jsonl.gz", "rb") as f, \
            gzip.open(out_dir / "cdrs.jsonl.gz", "wb", compresslevel=1) as g:
        for line in f:
            if line.strip() and orjson.loads(line)["msisdn"] in keep:
                g.write(line)
    return out_dir


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def cfg():
    """`cfg()` → the default configuration; `cfg({...nested...}, **{"dotted.key": value})` → with overrides."""
    return load_cfg


@pytest.fixture
def stream() -> Stream:
    return Stream()


@pytest.fixture(scope="session")
def sample_slice(tmp_path_factory) -> Path:
    if not (SAMPLE_DIR / "cdrs.jsonl.gz").exists():
        pytest.skip(f"labelled sample not found in {SAMPLE_DIR}")
    return write_slice(tmp_path_factory.mktemp("slice"), SLICE_BENIGN, SLICE_FRAUD)
