"""Subscriber profiles held for every subscriber, one int each.

A carrier holds a profile for every subscriber, tracked or not: tens of millions. As `Profile`
tuples they cost ~254 B of RSS each (at 1 M subscribers, the msisdn counted), most of it the
tuple (88 B) and its activation time (32 B). Here a profile is one int of 59 bits (32 B):

    bits 0-2   prepaid, ID verified, business segment
    bits 3-16  the home region, as an index into the table's regions
    bits 17-   activation time, ms since 2000-01-01 (`contract.TS_MIN`)

Packing is lossless: `get` gives back a `Profile` equal to the one put. Beyond 16,384 distinct
home regions (a real feed has a few hundred) a profile is kept as its tuple.
"""
from __future__ import annotations

from .contract import TS_MIN, Profile, province
from .model import profile_inputs

REGION_BITS = 14
_FLAG_BITS = 3
_REGION_MASK = (1 << REGION_BITS) - 1
_TS_SHIFT = _FLAG_BITS + REGION_BITS
# the flags as `kernel.mo_step` takes them: (prepaid, ID verified, postpaid business), by bits 0-2
_FLAGS = tuple((bool(f & 1), bool(f & 2), bool(f & 4) and not f & 1) for f in range(8))
_PLANS = ("prepaid", "postpaid")
_SEGMENTS = ("consumer", "business")
NO_PROFILE_INPUTS = profile_inputs(None)


class ProfileTable:
    """msisdn → profile (see the module docstring): `put`, and a read-only mapping's `get`, `[]`, `len`, `in`."""

    def __init__(self):
        self._packed: dict[str, int | Profile] = {}
        self._regions: list[str] = []  # region index → home region
        self._provinces: list[str] = []  # region index → its province
        self._region_index: dict[str, int] = {}

    def put(self, profile: Profile) -> None:
        region = profile.home_region
        r = self._region_index.get(region)
        if r is None and len(self._regions) <= _REGION_MASK and type(region) is str:
            r = self._region_index[region] = len(self._regions)
            self._regions.append(region)
            self._provinces.append(province(region))
        if (r is None or type(profile.activated_ts) is not int or type(profile.id_verified) is not bool
                or profile.plan not in _PLANS or profile.segment not in _SEGMENTS):
            self._packed[profile.msisdn] = profile  # not what the bits hold (more regions, say): as it is
            return
        flags = (profile.plan == "prepaid") | (profile.id_verified << 1) | ((profile.segment == "business") << 2)
        self._packed[profile.msisdn] = ((profile.activated_ts - TS_MIN) << _TS_SHIFT) | (r << _FLAG_BITS) | flags

    def get(self, msisdn: str, default=None) -> Profile | None:
        v = self._packed.get(msisdn)
        if v is None:
            return default
        if type(v) is not int:
            return v
        flags = v & 7
        return Profile(msisdn, self._regions[(v >> _FLAG_BITS) & _REGION_MASK], (v >> _TS_SHIFT) + TS_MIN,
                       "prepaid" if flags & 1 else "postpaid", "business" if flags & 4 else "consumer",
                       bool(flags & 2))

    def home_and_inputs(self, msisdn: str) -> tuple[str | None, tuple]:
        """The per-record lookup of an outgoing record: the subscriber's home province and the
        profile as `kernel.mo_step` takes it (`model.profile_inputs`); (None, NO_PROFILE_INPUTS)
        without a profile. Reads the packed int without building a `Profile`."""
        v = self._packed.get(msisdn)
        if v is None:
            return None, NO_PROFILE_INPUTS
        if type(v) is not int:
            return province(v.home_region), profile_inputs(v)
        return self._provinces[(v >> _FLAG_BITS) & _REGION_MASK], (True, (v >> _TS_SHIFT) + TS_MIN) + _FLAGS[v & 7]

    def __len__(self) -> int:
        return len(self._packed)

    def __contains__(self, msisdn: object) -> bool:
        return msisdn in self._packed

    def __getitem__(self, msisdn: str) -> Profile:
        p = self.get(msisdn)
        if p is None:
            raise KeyError(msisdn)
        return p
