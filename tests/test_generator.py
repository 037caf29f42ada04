"""The synthetic CDR generator: determinism, order, contract validity, consistency, coverage."""
from __future__ import annotations

import collections
import csv
import gzip
import itertools
import json
import re
import time
from collections.abc import Iterator

import pytest

from detector import generator as gen
from detector.generator import (
    PERSONAS,
    SCHEMES,
    GeneratorSpec,
    generate_labels,
    generate_profiles,
    generate_records,
    write_dataset,
)

SMALL = GeneratorSpec(subscribers=400, hours=8.0, fraud_share=0.06, seed=11)
# big enough that every persona and scheme is present and active
COVER = GeneratorSpec(subscribers=3000, hours=30.0, fraud_share=0.05, seed=5)

RECORD_FIELDS = {"record_id": str, "ts": int, "msisdn": str, "direction": str, "peer": str,
                 "service": str, "duration_s": int, "answered": bool, "cell_id": str,
                 "cell_region": str, "peer_region": str, "imei": str}
PROFILE_FIELDS = {"msisdn": str, "home_region": str, "activated_ts": int, "plan": str,
                  "segment": str, "id_verified": bool}
REGION = re.compile(r"^(?:[A-Z]{2,3}(?:-[A-Z]{2})?|INTL-[1-9][0-9]{0,2})$")
MOBILE = re.compile(r"^1[3-9][0-9]{9}$")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return total % 10 == 0


def _check_type(obj: dict, name: str, kind: type) -> None:
    value = obj[name]
    if kind is int:  # bool is an int in Python: reject it explicitly
        assert isinstance(value, int) and not isinstance(value, bool), (name, value)
    else:
        assert isinstance(value, kind), (name, value)


def validate_record(r: dict, spec: GeneratorSpec) -> None:
    """The v1 contract (shared/cdr-contract.md), field by field, plus the generator's formats."""
    assert set(r) == set(RECORD_FIELDS), set(r) ^ set(RECORD_FIELDS)
    for name, kind in RECORD_FIELDS.items():
        _check_type(r, name, kind)
    assert r["record_id"]
    end = spec.start_ts + int(round(spec.hours * 3_600_000))
    assert spec.start_ts <= r["ts"] < end
    assert 5 <= len(r["msisdn"]) <= 15 and r["msisdn"].isdigit()
    assert MOBILE.match(r["msisdn"])
    assert 3 <= len(r["peer"]) <= 20 and r["peer"].isdigit()
    assert r["peer"] != r["msisdn"]
    assert r["direction"] in ("MO", "MT")
    assert r["service"] in ("voice", "sms")
    assert r["duration_s"] >= 0
    if r["service"] == "sms" or not r["answered"]:
        assert r["duration_s"] == 0
    else:
        assert 1 <= r["duration_s"] <= 4 * 3600
    assert re.fullmatch(r"c[0-9]{5}", r["cell_id"])
    assert REGION.match(r["cell_region"]), r["cell_region"]
    assert REGION.match(r["peer_region"]), r["peer_region"]
    if not r["peer_region"].startswith("INTL-"):
        assert MOBILE.match(r["peer"]), r
    else:
        assert r["peer"].startswith(r["peer_region"][5:])
    assert len(r["imei"]) == 15 and r["imei"].isdigit() and _luhn_ok(r["imei"])


def validate_profile(p: dict, spec: GeneratorSpec) -> None:
    assert set(p) == set(PROFILE_FIELDS)
    for name, kind in PROFILE_FIELDS.items():
        _check_type(p, name, kind)
    assert MOBILE.match(p["msisdn"])
    assert p["home_region"] == spec.home_region
    assert p["plan"] in ("prepaid", "postpaid")
    assert p["segment"] in ("consumer", "business")
    assert 946_684_800_000 <= p["activated_ts"] < spec.start_ts + int(spec.hours * 3_600_000)


@pytest.fixture(scope="module")
def small():
    return generate_profiles(SMALL), generate_labels(SMALL), list(generate_records(SMALL))


@pytest.fixture(scope="module")
def cover():
    return generate_profiles(COVER), generate_labels(COVER), list(generate_records(COVER))


def test_deterministic_and_repeatable(small):
    profiles, labels, records = small
    gen._world.cache_clear()  # rebuild the world from scratch: still the same output
    assert generate_profiles(SMALL) == profiles
    assert generate_labels(SMALL) == labels
    assert list(generate_records(SMALL)) == records
    assert list(generate_records(SMALL)) == records
    other = GeneratorSpec(subscribers=400, hours=8.0, fraud_share=0.06, seed=12)
    assert generate_profiles(other) != profiles
    assert list(itertools.islice(generate_records(other), 200)) != records[:200]


def test_streams_and_sorted(small):
    _, _, records = small
    assert isinstance(generate_records(SMALL), Iterator)
    assert records, "no records"
    ts = [r["ts"] for r in records]
    assert ts == sorted(ts)
    ids = [r["record_id"] for r in records]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "g11-000000000" and ids[-1] == f"g11-{len(ids) - 1:09d}"


def test_starts_without_materialising_the_run():
    # ~a year of traffic for 20k subscribers: far too much to hold, yet the first records come at once
    spec = GeneratorSpec(subscribers=20_000, hours=24 * 365, seed=3)
    t0 = time.perf_counter()
    first = list(itertools.islice(generate_records(spec), 2000))
    assert len(first) == 2000
    assert time.perf_counter() - t0 < 20
    gen._world.cache_clear()


def test_records_and_profiles_follow_the_contract(small):
    profiles, _, records = small
    for p in profiles:
        validate_profile(p, SMALL)
    for r in records:
        validate_record(r, SMALL)


def test_labels_profiles_records_agree(small):
    profiles, labels, records = small
    msisdns = [p["msisdn"] for p in profiles]
    assert len(set(msisdns)) == len(msisdns) == SMALL.subscribers
    assert [lab["msisdn"] for lab in labels] == msisdns
    by = {lab["msisdn"]: lab for lab in labels}
    prof = {p["msisdn"]: p for p in profiles}
    start, end = SMALL.start_ts, SMALL.start_ts + int(SMALL.hours * 3_600_000)
    n_fraud = 0
    for lab in labels:
        assert set(lab) == {"msisdn", "label", "typology", "onset_ts"}
        if lab["label"] == "fraud":
            n_fraud += 1
            assert lab["typology"] in SCHEMES
            assert isinstance(lab["onset_ts"], int) and start <= lab["onset_ts"] < end
            assert prof[lab["msisdn"]]["activated_ts"] <= lab["onset_ts"]
        else:
            assert lab["label"] == "benign" and lab["typology"] in PERSONAS
            assert lab["onset_ts"] is None
    assert n_fraud == round(SMALL.subscribers * SMALL.fraud_share)
    for r in records:
        assert r["msisdn"] in by
        assert r["ts"] >= prof[r["msisdn"]]["activated_ts"]  # no traffic before the line exists


def test_peer_numbers_and_internal_calls_are_consistent(cover):
    profiles, _, records = cover
    own = {p["msisdn"] for p in profiles}
    region_of: dict[str, str] = {}
    for r in records:
        assert region_of.setdefault(r["peer"], r["peer_region"]) == r["peer_region"], r["peer"]
        if r["peer"] in own:
            assert r["peer_region"] == COVER.home_region
    # a call between two of the carrier's subscribers shows up on both sides
    key = collections.Counter()
    for r in records:
        if r["peer"] in own:
            a, b = (r["msisdn"], r["peer"]) if r["direction"] == "MO" else (r["peer"], r["msisdn"])
            key[(r["ts"], a, b, r["service"], r["duration_s"], r["answered"])] += 1
    assert len(key) > 50
    assert all(c == 2 for c in key.values())


def test_every_persona_and_scheme_appears(cover):
    _, labels, records = cover
    typ = {lab["msisdn"]: lab["typology"] for lab in labels}
    lines = collections.Counter(typ.values())
    recs = collections.Counter(typ[r["msisdn"]] for r in records)
    for name in list(PERSONAS) + list(SCHEMES):
        assert lines[name] >= 1, name
        assert recs[name] >= 10, (name, recs[name])
    assert len(PERSONAS) >= 12 and len(SCHEMES) >= 6


def _by_line(labels, records):
    lab = {x["msisdn"]: x for x in labels}
    out = collections.defaultdict(list)
    for r in records:
        out[r["msisdn"]].append(r)
    return lab, out


def test_fraud_behaviour_is_plausible(cover):
    profiles, labels, records = cover
    lab, lines = _by_line(labels, records)
    prof = {p["msisdn"]: p for p in profiles}
    agg = collections.defaultdict(collections.Counter)
    cells = collections.defaultdict(set)
    for m, recs in lines.items():
        x = lab[m]
        if x["label"] != "fraud":
            continue
        a = agg[x["typology"]]
        for r in recs:
            post = r["ts"] >= x["onset_ts"]
            a["post" if post else "pre"] += 1
            if not post:
                continue
            a["mo"] += r["direction"] == "MO"
            a["voice"] += r["service"] == "voice"
            a["ans"] += r["service"] == "voice" and r["answered"]
            a["short"] += r["service"] == "voice" and r["duration_s"] <= 5
            a["intl"] += r["peer_region"].startswith("INTL-")
            a["long"] += r["duration_s"] >= 300
            a["other_prov"] += r["peer_region"].split("-")[0] != COVER.home_region.split("-")[0]
            if x["typology"] == "simbox":
                cells[m].add(r["cell_id"])
    for t in SCHEMES:
        assert agg[t]["post"] > 0, t
    s = agg["scam"]
    assert s["mo"] / s["post"] > 0.9 and 0.2 < s["ans"] / s["voice"] < 0.7
    assert s["other_prov"] / s["post"] > 0.5
    w = agg["wangiri"]
    assert w["mo"] / w["post"] > 0.9 and w["short"] / w["voice"] > 0.9 and w["ans"] / w["voice"] < 0.2
    sb = agg["simbox"]
    assert sb["mo"] / sb["post"] > 0.95 and sb["ans"] / sb["voice"] > 0.5
    assert sb["other_prov"] / sb["post"] < 0.3
    assert all(len(c) == 1 for c in cells.values())
    i = agg["irsf"]
    assert i["intl"] > 0.4 * i["post"] and i["long"] > 0.3 * i["post"]
    sm = agg["smishing"]
    assert sm["voice"] / sm["post"] < 0.1 and sm["mo"] / sm["post"] > 0.9
    # established lines (irsf, rented) were used normally before their onset
    assert agg["rented"]["pre"] > 0 and agg["irsf"]["pre"] > 0
    # fresh call-centre lines are prepaid
    scam_lines = [m for m, x in lab.items() if x["typology"] in ("scam", "simbox")]
    assert sum(prof[m]["plan"] == "prepaid" for m in scam_lines) > 0.8 * len(scam_lines)


def test_handsets_and_hard_legitimate_cases(cover):
    profiles, labels, records = cover
    lab, lines = _by_line(labels, records)
    prof = {p["msisdn"]: p for p in profiles}
    imeis = collections.defaultdict(set)
    for m, recs in lines.items():
        for r in recs:
            imeis[r["imei"]].add(m)
    # dual-SIM families share a handset; SIM boxes and handset banks put many SIMs on one IMEI
    fam = [ms for ms in imeis.values() if any(lab[m]["typology"] == "family" for m in ms)]
    assert any(len(ms) == 2 and all(lab[m]["typology"] == "family" for m in ms) for ms in fam)
    assert any(len(ms) >= 3 and all(lab[m]["typology"] in ("simbox", "scam") for m in ms)
               for ms in imeis.values())
    # rented lines move to a new handset at onset
    rented = [m for m in lines if lab[m]["typology"] == "rented"]
    moved = 0
    for m in rented:
        pre = {r["imei"] for r in lines[m] if r["ts"] < lab[m]["onset_ts"]}
        post = {r["imei"] for r in lines[m] if r["ts"] >= lab[m]["onset_ts"]}
        moved += bool(pre and post and not (pre & post))
    assert moved >= 1
    # telesales: many new numbers, but a registered postpaid business with long tenure
    tele = [m for m in lines if lab[m]["typology"] == "telesales"]
    assert sum(prof[m]["plan"] == "postpaid" and prof[m]["segment"] == "business"
               for m in tele) >= 0.9 * len(tele)
    assert all(prof[m]["activated_ts"] < COVER.start_ts - 30 * 86_400_000 for m in tele)
    # travellers roam; couriers call many different numbers; hotlines are mostly called
    trav = [r for m in lines if lab[m]["typology"] == "traveller" for r in lines[m]]
    assert any(r["cell_region"].startswith("INTL-") or r["cell_region"] != COVER.home_region
               for r in trav)
    cour = [r for m in lines if lab[m]["typology"] == "courier" for r in lines[m]]
    assert len({r["peer"] for r in cour}) > 0.5 * len(cour)
    hot = [r for m in lines if lab[m]["typology"] == "hotline" for r in lines[m]]
    assert sum(r["direction"] == "MT" for r in hot) > 0.8 * len(hot)
    # some new lines are activated during the run
    assert any(prof[m]["activated_ts"] > COVER.start_ts for m in lab if lab[m]["typology"] == "newline")


def test_write_dataset_round_trips(tmp_path, small):
    profiles, labels, records = small
    counts = write_dataset(SMALL, tmp_path / "a")
    assert counts["records"] == len(records)
    assert counts["subscribers"] == SMALL.subscribers
    assert sum(counts["records_by_typology"].values()) == len(records)
    with gzip.open(tmp_path / "a" / "cdrs.jsonl.gz", "rt", encoding="utf-8") as f:
        back = [json.loads(line) for line in f]
    assert back == records
    with open(tmp_path / "a" / "subscribers.jsonl", encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == profiles
    with open(tmp_path / "a" / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["msisdn", "label", "typology", "onset_ts"]
    assert [{"msisdn": m, "label": la, "typology": t, "onset_ts": int(o) if o else None}
            for m, la, t, o in rows[1:]] == labels
    write_dataset(SMALL, tmp_path / "b")
    for name in ("cdrs.jsonl.gz", "subscribers.jsonl", "labels.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("spec", [
    GeneratorSpec(subscribers=1, hours=0.5),
    GeneratorSpec(subscribers=9, hours=1.5, fraud_share=1.0, seed=2),
    GeneratorSpec(subscribers=150, hours=3.25, home_region="BJ", fraud_share=0.0, seed=-4),
    GeneratorSpec(subscribers=150, hours=6, home_region="SC-CD", fraud_share=0.2, seed=99),
])
def test_odd_specs(spec):
    profiles = generate_profiles(spec)
    labels = generate_labels(spec)
    records = list(generate_records(spec))
    assert len(profiles) == len(labels) == spec.subscribers
    for p in profiles:
        validate_profile(p, spec)
    for r in records:
        validate_record(r, spec)
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    assert sum(lab["label"] == "fraud" for lab in labels) == round(spec.subscribers * spec.fraud_share)
