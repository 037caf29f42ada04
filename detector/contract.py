"""The v1 data contract (../shared/cdr-contract.md): parsing and validation at the edge.

Every message is checked field by field; a bad one raises `InvalidRecord` naming the field and what
was wrong, with a short bounded `reason` code that is safe to use as a metric label.
"""
from __future__ import annotations

import sys
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import orjson

# A number's msisdn is held by several structures (its state's key, the Enricher's handset and
# cell tables, its profile); each parsed record brings a new string object of it, ~60 bytes.
# Interned, they all hold one object: ~60 B less per tracked number. (CPython drops an interned
# string from its table when the last reference goes, so numbers forgotten are not kept.)
_intern = sys.intern
_loads = orjson.loads

MAX_MESSAGE_BYTES = 64 * 1024
MAX_STRING = 64
# A timestamp further than this from "now" (or, offline, from the data) is absurd, not late.
TS_MIN = 946_684_800_000  # 2000-01-01
TS_MAX = 4_102_444_800_000  # 2100-01-01
MAX_DURATION_S = 48 * 3600


class InvalidRecord(ValueError):
    """A message that breaks the contract. `reason` is a bounded code; `field` names the culprit."""

    def __init__(self, reason: str, field: str | None, message: str):
        super().__init__(f"{field + ': ' if field else ''}{message}")
        self.reason = reason
        self.field = field


class CDR(NamedTuple):
    record_id: str
    ts: int
    msisdn: str
    direction: str  # "MO" | "MT"
    peer: str
    service: str  # "voice" | "sms"
    duration_s: int
    answered: bool
    cell_id: str
    cell_region: str
    peer_region: str
    imei: str


_new_cdr = tuple.__new__  # CDR's own __new__ is Python code: for the common case, build the tuple directly


class Profile(NamedTuple):
    msisdn: str
    home_region: str
    activated_ts: int
    plan: str
    segment: str
    id_verified: bool


class Outcome(NamedTuple):
    msisdn: str
    ts: int
    outcome: str  # "cleared" | "confirmed_fraud"


def decode(raw: bytes | str | dict) -> dict:
    """Bytes → JSON object, with the reasons a carrier's feed actually produces."""
    if type(raw) is bytes and len(raw) <= MAX_MESSAGE_BYTES:  # the usual case, in few steps
        try:
            obj = _loads(raw)
        except orjson.JSONDecodeError:
            pass  # the checks below say what is wrong
        else:
            if type(obj) is dict:
                return obj
    if isinstance(raw, dict):  # in-process callers: strings must still be valid UTF-8
        for k, v in raw.items():
            if isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidRecord("bad_utf8", str(k)[:32], "string is not valid UTF-8") from None
        return raw
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidRecord("too_large", None, f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRecord("bad_utf8", None, "message is not valid UTF-8") from None
        raise InvalidRecord("not_json", None, f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidRecord("not_object", None, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _get(obj: dict, name: str, kind: type) -> Any:
    if name not in obj:
        raise InvalidRecord("missing_field", name, "required field is missing")
    value = obj[name]
    # bool is a subclass of int in Python: never accept true/false as a number.
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidRecord("bad_type", name, f"expected an integer, got {type(value).__name__}")
    if kind is not int and not isinstance(value, kind):
        raise InvalidRecord("bad_type", name, f"expected {kind.__name__}, got {type(value).__name__}")
    if kind is str and len(value) > MAX_STRING:
        raise InvalidRecord("too_large", name, f"string of {len(value)} characters exceeds {MAX_STRING}")
    return value


def _digits(obj: dict, name: str, lo: int, hi: int) -> str:
    value = _get(obj, name, str)
    if not (lo <= len(value) <= hi and value.isascii() and value.isdigit()):
        raise InvalidRecord("bad_value", name, f"expected {lo}-{hi} digits, got {value[:24]!r}")
    return value


def _msisdn(obj: dict) -> str:
    return _intern(str(_digits(obj, "msisdn", 5, 15)))  # str(): intern takes no str subclass


def _ts(obj: dict, name: str) -> int:
    value = _get(obj, name, int)
    if not TS_MIN <= value <= TS_MAX:
        raise InvalidRecord("bad_value", name, f"timestamp {value} ms is outside 2000..2100")
    return value


def _choice(obj: dict, name: str, allowed: tuple[str, ...]) -> str:
    """The value as the element of `allowed` it equals: one shared string, not a copy per record."""
    value = _get(obj, name, str)
    if value not in allowed:
        raise InvalidRecord("bad_value", name, f"expected one of {'/'.join(allowed)}, got {value[:24]!r}")
    return allowed[allowed.index(value)]


def _region(obj: dict, name: str) -> str:
    value = _get(obj, name, str)
    if not value or not value.isascii() or not value.replace("-", "").isalnum():
        raise InvalidRecord("bad_value", name, f"not a region code: {value[:24]!r}")
    return value


def _region_ok(v) -> bool:
    return type(v) is str and 0 < len(v) <= MAX_STRING and v.isascii() and v.replace("-", "").isalnum()


def _digits_ok(v, lo: int, hi: int) -> bool:
    return type(v) is str and lo <= len(v) <= hi and v.isascii() and v.isdigit()


_REGIONS_OK: set[str] = set()  # region codes that passed `_region_ok`: a few hundred, checked once each


def _region_known_ok(v) -> bool:
    """`_region_ok`, remembered: most records' two region codes are then one set lookup each."""
    if type(v) is not str:
        return False  # (and no set lookup of an unhashable JSON value)
    if v in _REGIONS_OK:
        return True
    if not _region_ok(v):
        return False
    if len(_REGIONS_OK) >= 65_536:  # a feed of junk codes must not grow it without end
        _REGIONS_OK.clear()
    _REGIONS_OK.add(v)
    return True


class _CDRWire(msgspec.Struct, gc=False):
    """A CDR message as msgspec decodes it straight from JSON, with the contract's types, ranges,
    lengths and choices checked while decoding (in C). What it cannot express (digits only, the
    region codes) `parse_cdr` checks after. Unknown fields are skipped, as before."""
    record_id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_STRING)]
    ts: Annotated[int, msgspec.Meta(ge=TS_MIN, le=TS_MAX)]
    msisdn: Annotated[str, msgspec.Meta(min_length=5, max_length=15)]
    direction: Literal["MO", "MT"]
    peer: Annotated[str, msgspec.Meta(min_length=3, max_length=20)]
    service: Literal["voice", "sms"]
    duration_s: Annotated[int, msgspec.Meta(ge=0, le=MAX_DURATION_S)]
    answered: bool
    cell_id: Annotated[str, msgspec.Meta(max_length=MAX_STRING)]
    cell_region: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_STRING)]
    peer_region: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_STRING)]
    imei: Annotated[str, msgspec.Meta(max_length=MAX_STRING)]


_decode_wire = msgspec.json.Decoder(_CDRWire).decode
_WIRE_ERRORS = msgspec.DecodeError  # msgspec.ValidationError is one too


def parse_cdr(raw: bytes | str | dict) -> CDR:
    """A message → CDR, or `InvalidRecord` saying which field is wrong and why.

    Bytes (the daemon's and the backtest's case) are decoded by msgspec into `_CDRWire`, which
    checks most of the contract in C: ~2.5 µs a record less than decoding to a dict and checking
    in Python. Anything it refuses goes through `decode` and the field-by-field checks, which
    accept the same records and name what is wrong: an error costs a second decode, a good record
    none. (One difference: a number too large for a double in a field the contract does not
    name, e.g. 1e999, makes orjson refuse the whole message; msgspec skips the field.)"""
    if type(raw) is bytes and len(raw) <= MAX_MESSAGE_BYTES:
        try:
            w = _decode_wire(raw)
        except _WIRE_ERRORS:
            pass
        else:
            msisdn, peer, cell_region, peer_region = w.msisdn, w.peer, w.cell_region, w.peer_region
            if (msisdn.isdigit() and msisdn.isascii() and peer.isdigit() and peer.isascii()
                    and (cell_region in _REGIONS_OK or _region_known_ok(cell_region))
                    and (peer_region in _REGIONS_OK or _region_known_ok(peer_region))):
                return _new_cdr(CDR, (w.record_id, w.ts, _intern(msisdn), w.direction, peer, w.service,
                                      w.duration_s, w.answered, w.cell_id, cell_region, peer_region, w.imei))
    obj = decode(raw)
    # The common case, checked in one expression; anything it does not accept goes through the
    # field-by-field checks below, which accept the same records and name what is wrong.
    try:
        rid, ts, duration, answered = obj["record_id"], obj["ts"], obj["duration_s"], obj["answered"]
        cell_id, imei, msisdn, peer = obj["cell_id"], obj["imei"], obj["msisdn"], obj["peer"]
        direction, service = obj["direction"], obj["service"]
        cell_region, peer_region = obj["cell_region"], obj["peer_region"]
    except KeyError:
        pass
    else:
        if (type(rid) is str and 0 < len(rid) <= MAX_STRING and type(ts) is int and TS_MIN <= ts <= TS_MAX
                and type(duration) is int and 0 <= duration <= MAX_DURATION_S and type(answered) is bool
                and type(cell_id) is str and len(cell_id) <= MAX_STRING
                and type(imei) is str and len(imei) <= MAX_STRING
                and _digits_ok(msisdn, 5, 15) and _digits_ok(peer, 3, 20)
                and (direction == "MO" or direction == "MT") and type(direction) is str
                and (service == "voice" or service == "sms") and type(service) is str
                and _region_known_ok(cell_region) and _region_known_ok(peer_region)):
            return _new_cdr(CDR, (rid, ts, _intern(msisdn), direction, peer, service, duration, answered, cell_id,
                                  cell_region, peer_region, imei))
    return _parse_cdr_checked(obj)


def _parse_cdr_checked(obj: dict) -> CDR:
    record_id = _get(obj, "record_id", str)
    if not record_id:
        raise InvalidRecord("bad_value", "record_id", "must not be empty")
    duration = _get(obj, "duration_s", int)
    if not 0 <= duration <= MAX_DURATION_S:
        raise InvalidRecord("bad_value", "duration_s", f"{duration} s is outside 0..{MAX_DURATION_S}")
    answered = _get(obj, "answered", bool)
    cell_id = _get(obj, "cell_id", str)
    imei = _get(obj, "imei", str)
    return CDR(
        record_id,
        _ts(obj, "ts"),
        _msisdn(obj),
        _choice(obj, "direction", ("MO", "MT")),
        _digits(obj, "peer", 3, 20),
        _choice(obj, "service", ("voice", "sms")),
        duration,
        answered,
        cell_id,
        _region(obj, "cell_region"),
        _region(obj, "peer_region"),
        imei,
    )


def parse_profile(raw: bytes | str | dict) -> Profile:
    """A profile is held for every subscriber, so its strings are shared, not one copy each: the
    region interned, plan and segment `_choice`'s constants (at 1 M subscribers: 447 → 254 B of
    RSS a profile)."""
    obj = decode(raw)
    return Profile(
        _msisdn(obj),
        _intern(str(_region(obj, "home_region"))),
        _ts(obj, "activated_ts"),
        _choice(obj, "plan", ("prepaid", "postpaid")),
        _choice(obj, "segment", ("consumer", "business")),
        _get(obj, "id_verified", bool),
    )


def parse_outcome(raw: bytes | str | dict) -> Outcome:
    obj = decode(raw)
    return Outcome(
        _digits(obj, "msisdn", 5, 15),
        _ts(obj, "ts"),
        _choice(obj, "outcome", ("cleared", "confirmed_fraud")),
    )


_PROVINCES: dict[str, str] = {}  # region → province: region codes are few; bounded all the same


def province(region: str) -> str:
    """`GD-SZ` → `GD`; `INTL-44` → `INTL-44` (each foreign country is its own 'province')."""
    prov = _PROVINCES.get(region)
    if prov is None:
        if region.startswith("INTL-"):
            prov = region
        else:
            cut = region.find("-")
            prov = region if cut < 0 else region[:cut]
        if len(_PROVINCES) >= 65_536:  # a feed of junk region codes must not grow it without end
            _PROVINCES.clear()
        _PROVINCES[region] = prov
    return prov
