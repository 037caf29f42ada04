"""detector/contract.py: the v1 contract at the edge — good messages parse to the right types, every
kind of bad message is rejected with the precise field and a bounded reason code."""
from __future__ import annotations

import orjson
import pytest

from conftest import T0, make_cdr, make_outcome, make_profile
from detector.contract import (
    CDR,
    MAX_MESSAGE_BYTES,
    MAX_STRING,
    TS_MAX,
    TS_MIN,
    InvalidRecord,
    Outcome,
    Profile,
    _parse_cdr_checked,
    parse_cdr,
    parse_outcome,
    parse_profile,
    province,
)

CDR_FIELDS = ("record_id", "ts", "msisdn", "direction", "peer", "service", "duration_s", "answered",
              "cell_id", "cell_region", "peer_region", "imei")
REASONS = {"missing_field", "bad_type", "bad_value", "too_large", "not_json", "bad_utf8", "not_object"}


def reject(parse, raw) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as info:
        parse(raw)
    err = info.value
    assert err.reason in REASONS  # bounded: safe as a metric label
    assert isinstance(err, ValueError)
    return err


def without(d: dict, name: str) -> dict:
    return {k: v for k, v in d.items() if k != name}


# -- good records --------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["MO", "MT"])
@pytest.mark.parametrize("service", ["voice", "sms"])
def test_good_cdr_parses_to_typed_record(direction, service):
    answered = service == "sms" or direction == "MT"
    raw = make_cdr(direction=direction, service=service, duration_s=0 if service == "sms" else 42,
                   answered=answered)
    for form in (raw, orjson.dumps(raw), orjson.dumps(raw).decode()):  # dict, bytes and str all accepted
        rec = parse_cdr(form)
        assert isinstance(rec, CDR)
        assert rec._asdict() == raw
        assert rec.direction == direction and rec.service == service
        assert type(rec.ts) is int and type(rec.duration_s) is int and type(rec.answered) is bool
        assert all(type(getattr(rec, f)) is str for f in ("record_id", "msisdn", "peer", "cell_id",
                                                           "cell_region", "peer_region", "imei"))


def test_a_numbers_msisdn_is_one_string_object_however_many_records_carry_it():
    """Its state's key, the Enricher's tables and its profile keep the msisdn: one object for all,
    not one per parsed record (~60 B a copy, per tracked number)."""
    msisdn = "13912345678"
    a = parse_cdr(orjson.dumps(make_cdr(msisdn=msisdn, record_id="a")))
    b = parse_cdr(orjson.dumps(make_cdr(msisdn=msisdn, record_id="b")))
    checked = _parse_cdr_checked(make_cdr(msisdn="".join(["1391", "2345678"]), record_id="c"))  # the slow path
    p = parse_profile(orjson.dumps(make_profile(msisdn=msisdn)))
    assert a.msisdn is b.msisdn is checked.msisdn is p.msisdn


def test_unanswered_call_with_zero_duration_is_valid():
    rec = parse_cdr(make_cdr(duration_s=0, answered=False))
    assert rec.duration_s == 0 and rec.answered is False


@pytest.mark.parametrize("ts", [TS_MIN, TS_MAX])
def test_timestamp_bounds_are_inclusive(ts):
    assert parse_cdr(make_cdr(ts=ts)).ts == ts


@pytest.mark.parametrize("msisdn", ["12345", "123456789012345"])
def test_msisdn_length_bounds_accepted(msisdn):
    assert parse_cdr(make_cdr(msisdn=msisdn)).msisdn == msisdn


@pytest.mark.parametrize("peer", ["110", "12345678901234567890"])
def test_peer_length_bounds_accepted(peer):
    assert parse_cdr(make_cdr(peer=peer)).peer == peer


@pytest.mark.parametrize("region", ["GD", "GD-SZ", "INTL-44", "HLJ"])
def test_region_codes_accepted(region):
    rec = parse_cdr(make_cdr(cell_region=region, peer_region=region))
    assert rec.cell_region == region and rec.peer_region == region


def test_message_at_size_limit_is_accepted_one_byte_more_is_not():
    body = orjson.dumps(make_cdr())
    exact = body + b" " * (MAX_MESSAGE_BYTES - len(body))
    assert len(exact) == MAX_MESSAGE_BYTES
    assert parse_cdr(exact).record_id == "r0000001"
    err = reject(parse_cdr, exact + b" ")
    assert (err.reason, err.field) == ("too_large", None)


def test_string_at_length_limit_is_accepted():
    assert parse_cdr(make_cdr(cell_id="c" * MAX_STRING)).cell_id == "c" * MAX_STRING


# -- bad records: one defect at a time, the precise field and reason --------------------------------
@pytest.mark.parametrize("name", CDR_FIELDS)
def test_missing_field(name):
    err = reject(parse_cdr, without(make_cdr(), name))
    assert (err.reason, err.field) == ("missing_field", name)
    assert name in str(err)


@pytest.mark.parametrize("name,value", [
    ("ts", str(T0)),  # a string timestamp
    ("ts", float(T0)),  # a float is not an integer
    ("ts", True),
    ("duration_s", True),  # bool is an int in Python; never accepted as a number
    ("duration_s", False),
    ("duration_s", "12"),
    ("duration_s", 12.5),
    ("answered", "true"),
    ("answered", 1),
    ("answered", None),
    ("msisdn", 13800000001),  # a number, not a string of digits
    ("peer", 13900000001),
    ("record_id", 17),
    ("direction", None),
    ("service", ["voice"]),
    ("cell_id", 10001),
    ("cell_region", None),
    ("peer_region", 44),
    ("cell_region", ["GD-SZ"]),  # unhashable: must not reach a set lookup
    ("peer_region", {"code": "GD"}),
    ("imei", 860000000000001),
])
def test_wrong_type(name, value):
    err = reject(parse_cdr, make_cdr(**{name: value}))
    assert (err.reason, err.field) == ("bad_type", name)


@pytest.mark.parametrize("name,value", [("ts", str(T0)), ("answered", "true"), ("duration_s", True),
                                        ("duration_s", 1.0), ("cell_region", ["GD-SZ"]),
                                        ("peer_region", {"code": "GD"})])
def test_wrong_type_from_json_bytes(name, value):
    err = reject(parse_cdr, orjson.dumps(make_cdr(**{name: value})))
    assert (err.reason, err.field) == ("bad_type", name)


@pytest.mark.parametrize("duration", [-1, -3600, 48 * 3600 + 1])
def test_duration_out_of_range(duration):
    err = reject(parse_cdr, make_cdr(duration_s=duration))
    assert (err.reason, err.field) == ("bad_value", "duration_s")


@pytest.mark.parametrize("ts", [
    0,
    -T0,
    TS_MIN - 1,  # 1999-12-31T23:59:59.999Z
    TS_MAX + 1,
    T0 * 1000,  # microseconds instead of milliseconds: ~56,000 years away
    T0 // 1000,  # seconds instead of milliseconds: 1970
])
def test_timestamp_outside_2000_2100(ts):
    err = reject(parse_cdr, make_cdr(ts=ts))
    assert (err.reason, err.field) == ("bad_value", "ts")


@pytest.mark.parametrize("value", [
    "1234",  # too short (5..15)
    "1234567890123456",  # too long
    "+8613800000001",
    "138-0000-0001",
    "1380000000a",
    "",
    " 13800000001",
    "１３８００００００００１",  # full-width digits: isdigit() but not ASCII
    "١٣٨٠٠٠٠٠٠٠١",  # Arabic-Indic digits
])
def test_bad_msisdn(value):
    err = reject(parse_cdr, make_cdr(msisdn=value))
    assert (err.reason, err.field) == ("bad_value", "msisdn")


@pytest.mark.parametrize("value", ["12", "123456789012345678901", "+44207", "abc", "", "１１０"])
def test_bad_peer(value):
    err = reject(parse_cdr, make_cdr(peer=value))
    assert (err.reason, err.field) == ("bad_value", "peer")


@pytest.mark.parametrize("name,value", [
    ("direction", "mo"), ("direction", "IN"), ("direction", ""),
    ("service", "data"), ("service", "Voice"), ("service", ""),
])
def test_bad_choice(name, value):
    err = reject(parse_cdr, make_cdr(**{name: value}))
    assert (err.reason, err.field) == ("bad_value", name)


def test_empty_record_id():
    err = reject(parse_cdr, make_cdr(record_id=""))
    assert (err.reason, err.field) == ("bad_value", "record_id")


@pytest.mark.parametrize("name", ["cell_region", "peer_region"])
@pytest.mark.parametrize("value", ["", "GD SZ", "GD/SZ", "广东", "-"])
def test_bad_region(name, value):
    err = reject(parse_cdr, make_cdr(**{name: value}))
    assert (err.reason, err.field) == ("bad_value", name)


@pytest.mark.parametrize("name", ["record_id", "cell_id", "imei", "cell_region", "peer_region", "msisdn",
                                  "peer", "direction", "service"])
def test_oversized_string_field(name):
    err = reject(parse_cdr, make_cdr(**{name: "1" * (MAX_STRING + 1)}))
    assert (err.reason, err.field) == ("too_large", name)


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"record_id": "r1",}', b"\x00\x01"])
def test_not_json(raw):
    err = reject(parse_cdr, raw)
    assert (err.reason, err.field) == ("not_json", None)


@pytest.mark.parametrize("raw", [
    b'{"record_id": "r\xff\xfe"}',  # invalid UTF-8 inside an otherwise well-formed object
    b"\xc3\x28",
    orjson.dumps(make_cdr()).replace(b"GD-GZ", b"GD-\xe9Z"),  # a Latin-1 byte in a real record
])
def test_invalid_utf8(raw):
    err = reject(parse_cdr, raw)
    assert (err.reason, err.field) == ("bad_utf8", None)


def test_lone_surrogate_in_str_message_is_bad_utf8():
    err = reject(parse_cdr, '{"record_id": "r\ud800"}')
    assert (err.reason, err.field) == ("bad_utf8", None)


@pytest.mark.parametrize("raw", [b"[]", orjson.dumps([make_cdr()]), b'"r1"', b"17", b"null", b"true"])
def test_json_that_is_not_an_object(raw):
    err = reject(parse_cdr, raw)
    assert (err.reason, err.field) == ("not_object", None)


def test_oversized_message():
    raw = orjson.dumps(make_cdr(cell_id="c" * (MAX_MESSAGE_BYTES + 10)))
    err = reject(parse_cdr, raw)
    assert (err.reason, err.field) == ("too_large", None)
    # the size check comes first, even for bytes that are not JSON at all
    err = reject(parse_cdr, b"\xff" * (MAX_MESSAGE_BYTES + 1))
    assert err.reason == "too_large"


def test_error_message_does_not_echo_unbounded_input():
    err = reject(parse_cdr, make_cdr(msisdn="9" * 14 + "x" + "9" * 40))
    assert len(str(err)) < 200


# -- profiles ------------------------------------------------------------------------------------
@pytest.mark.parametrize("plan", ["prepaid", "postpaid"])
@pytest.mark.parametrize("segment", ["consumer", "business"])
def test_good_profile(plan, segment):
    raw = make_profile(plan=plan, segment=segment, id_verified=False)
    p = parse_profile(orjson.dumps(raw))
    assert isinstance(p, Profile)
    assert p._asdict() == raw
    assert type(p.activated_ts) is int and p.id_verified is False


def test_profiles_share_their_strings():
    """One profile is held per subscriber (millions): two profiles parsed from separate bytes
    hold the same region, plan and segment objects, not a copy each."""
    a = parse_profile(orjson.dumps(make_profile(msisdn="13800000001", home_region="GD-" + "SZ", plan="postpaid")))
    b = parse_profile(orjson.dumps(make_profile(msisdn="13800000002", home_region="GD-SZ", plan="postpaid")))
    assert a.home_region == "GD-SZ" and a.plan == "postpaid"
    assert a.home_region is b.home_region and a.plan is b.plan and a.segment is b.segment
    c = parse_profile({**make_profile(), "home_region": type("Region", (str,), {})("GD-GZ")})  # a str subclass
    assert type(c.home_region) is str and c.home_region == "GD-GZ"


@pytest.mark.parametrize("name", ["msisdn", "home_region", "activated_ts", "plan", "segment", "id_verified"])
def test_profile_missing_field(name):
    err = reject(parse_profile, without(make_profile(), name))
    assert (err.reason, err.field) == ("missing_field", name)


@pytest.mark.parametrize("name,value,reason", [
    ("msisdn", "1380000000x", "bad_value"),
    ("msisdn", 13800000001, "bad_type"),
    ("home_region", "", "bad_value"),
    ("home_region", "x" * (MAX_STRING + 1), "too_large"),
    ("activated_ts", str(T0), "bad_type"),
    ("activated_ts", True, "bad_type"),
    ("activated_ts", 12, "bad_value"),
    ("plan", "contract", "bad_value"),
    ("plan", None, "bad_type"),
    ("segment", "vip", "bad_value"),
    ("id_verified", "true", "bad_type"),
    ("id_verified", 1, "bad_type"),
])
def test_bad_profile(name, value, reason):
    err = reject(parse_profile, make_profile(**{name: value}))
    assert (err.reason, err.field) == (reason, name)


@pytest.mark.parametrize("raw,reason", [(b"[1]", "not_object"), (b"{", "not_json"), (b"\xff{}", "bad_utf8")])
def test_bad_profile_message(raw, reason):
    assert reject(parse_profile, raw).reason == reason


# -- verification outcomes -------------------------------------------------------------------------
@pytest.mark.parametrize("verdict", ["cleared", "confirmed_fraud"])
def test_good_outcome(verdict):
    raw = make_outcome(outcome=verdict)
    o = parse_outcome(orjson.dumps(raw))
    assert isinstance(o, Outcome)
    assert o._asdict() == raw


@pytest.mark.parametrize("name", ["msisdn", "ts", "outcome"])
def test_outcome_missing_field(name):
    err = reject(parse_outcome, without(make_outcome(), name))
    assert (err.reason, err.field) == ("missing_field", name)


@pytest.mark.parametrize("name,value,reason", [
    ("outcome", "fraud", "bad_value"),
    ("outcome", "CLEARED", "bad_value"),
    ("outcome", True, "bad_type"),
    ("ts", str(T0), "bad_type"),
    ("ts", TS_MAX + 1, "bad_value"),
    ("ts", False, "bad_type"),
    ("msisdn", "123", "bad_value"),
])
def test_bad_outcome(name, value, reason):
    err = reject(parse_outcome, make_outcome(**{name: value}))
    assert (err.reason, err.field) == (reason, name)


@pytest.mark.parametrize("raw,reason", [(b"[]", "not_object"), (b"cleared", "not_json"),
                                        (b"x" * (MAX_MESSAGE_BYTES + 1), "too_large")])
def test_bad_outcome_message(raw, reason):
    assert reject(parse_outcome, raw).reason == reason


# -- regions -------------------------------------------------------------------------------------
@pytest.mark.parametrize("region,expected", [
    ("GD-SZ", "GD"), ("GD", "GD"), ("HLJ-HRB", "HLJ"), ("INTL-44", "INTL-44"), ("INTL-882", "INTL-882"),
])
def test_province(region, expected):
    assert province(region) == expected


def test_two_cities_of_one_province_share_it_two_countries_do_not():
    assert province("GD-SZ") == province("GD-GZ")
    assert province("INTL-44") != province("INTL-1")
