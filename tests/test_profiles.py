"""The profile table: every subscriber's profile packed in one int, given back unchanged."""
import itertools
import random
import sys

import pytest

from detector.contract import TS_MAX, TS_MIN, Profile, parse_profile, province
from detector.model import profile_inputs
from detector.profiles import REGION_BITS, ProfileTable

REGIONS = ["GD-SZ", "GD", "BJ", "SH-PD", "XJ-KS", "INTL-44", "INTL-882"]


def _profiles(n: int, seed: int = 3) -> list[Profile]:
    rnd = random.Random(seed)
    combos = itertools.cycle(itertools.product(("prepaid", "postpaid"), ("consumer", "business"), (False, True)))
    out = []
    for i in range(n):
        plan, segment, verified = next(combos)
        ts = rnd.choice([TS_MIN, TS_MAX, rnd.randint(TS_MIN, TS_MAX)])
        out.append(Profile(f"138{i:08d}", rnd.choice(REGIONS), ts, plan, segment, verified))
    return out


def test_a_profile_comes_back_as_it_was_put_with_the_inputs_the_kernel_takes():
    table = ProfileTable()
    profiles = _profiles(400)
    for p in profiles:
        table.put(p)
    assert len(table) == 400
    for p in profiles:
        assert table.get(p.msisdn) == p
        assert table[p.msisdn] == p
        assert p.msisdn in table
        home, pin = table.home_and_inputs(p.msisdn)
        assert home == province(p.home_region)
        assert pin == profile_inputs(p)
        assert [type(x) for x in pin] == [type(x) for x in profile_inputs(p)]
    assert table.get("13900000000") is None and "13900000000" not in table
    assert table.home_and_inputs("13900000000") == (None, profile_inputs(None))
    with pytest.raises(KeyError):
        table["13900000000"]


def test_a_profile_put_again_replaces_the_first():
    table = ProfileTable()
    a, b = Profile("13800000001", "BJ", TS_MIN + 5, "prepaid", "consumer", False), \
        Profile("13800000001", "GD-SZ", TS_MAX, "postpaid", "business", True)
    table.put(a)
    table.put(b)
    assert len(table) == 1 and table.get(a.msisdn) == b


def test_a_packed_profile_is_one_small_int():
    """What makes the table worth having: a profile costs one 32-byte int, not a tuple of six."""
    table = ProfileTable()
    p = parse_profile(b'{"msisdn":"13800000001","home_region":"GD-SZ","activated_ts":4102444800000,'
                      b'"plan":"postpaid","segment":"business","id_verified":true}')
    table.put(p)
    packed = table._packed[p.msisdn]
    assert type(packed) is int and sys.getsizeof(packed) <= 32
    assert table.get(p.msisdn) == p


def test_profiles_beyond_the_region_bits_or_outside_the_contract_are_kept_whole():
    table = ProfileTable()
    many = [Profile(f"137{i:08d}", f"R{i}", TS_MIN + i, "prepaid", "consumer", True)
            for i in range((1 << REGION_BITS) + 10)]
    odd = [Profile("13600000001", "BJ", TS_MIN - 1, "prepaid", "consumer", True),  # before 2000
           Profile("13600000002", "BJ", TS_MIN, "other", "consumer", True),
           Profile("13600000003", "BJ", TS_MIN, "prepaid", "vip", False),
           Profile("13600000004", "BJ", float(TS_MIN), "prepaid", "consumer", False),
           Profile("13600000005", "BJ", TS_MIN, "prepaid", "consumer", 1)]
    for p in many + odd:
        table.put(p)
    for p in many + odd:
        got = table.get(p.msisdn)
        assert got == p and [type(x) for x in got] == [type(x) for x in p]
        home, pin = table.home_and_inputs(p.msisdn)
        assert home == province(p.home_region) and pin == profile_inputs(p)
    assert type(table._packed[many[0].msisdn]) is int
    assert type(table._packed[many[-1].msisdn]) is Profile  # past the regions the bits can index

