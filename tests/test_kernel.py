"""detector/kernel.py: what is not covered through features, model and core."""
from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from detector import features as F
from detector import kernel as K


def test_a_place_where_numba_cannot_cache_compiles_in_memory_with_a_warning(monkeypatch, caplog):
    """cache=True raises at import where numba can write its cache nowhere (a read-only install
    run by a user with no home): the kernel must still load, uncached, and say why."""
    def njit_without_a_cache(**options):
        if options.get("cache"):
            raise RuntimeError("cannot cache function '_probe': no locator available for file 'kernel.py'")
        return lambda f: f

    monkeypatch.setattr(K.nb, "njit", njit_without_a_cache)
    with caplog.at_level(logging.WARNING, logger="cdr_detector"):
        options = K._jit_options()
    assert options["cache"] is False
    assert "NUMBA_CACHE_DIR" in caplog.text and "no locator available" in caplog.text


def test_the_kernel_is_cached_where_it_can_be():
    assert K._JIT["cache"] is True  # this checkout is writable: a second start loads, not compiles


def test_a_row_is_a_version_2_packed_state_field_for_field():
    st = F.NumberState(1_800_000_000_000)
    st.n_mo, st.tier, st.imei_hash, st.peak_score = 7, 2, 2**64 - 1, 0.5
    st.contacts[3] = 99
    row = st.row_bytes()
    assert len(row) == F.PACKED_SIZE_V2 == K.STATE.itemsize
    head = F._HEAD.unpack_from(row)
    assert head[0] == 2 and head[1:] == tuple(
        int(v) if not isinstance(v, float) else v for v in F._GET_SCALARS(st))
    back = F.NumberState.unpack(row)
    assert back.to_dict() == st.to_dict()


@pytest.mark.parametrize("h", [1, 2**63, 2**64 - 1])  # (hash64 is never 0)
def test_hashes_keep_all_64_bits(h):
    """A record-id hash is unsigned 64-bit: one above 2**63 must match itself exactly."""
    rows = np.zeros(1, dtype=K.STATE)
    assert K.seen_before(rows, 0, h) is False
    assert K.seen_before(rows, 0, h) is True
    assert rows[0]["recent_ids"][0] == h


def test_the_compiled_packer_writes_exactly_what_from_v2_writes():
    """`kernel.pack_v3` (what the changelog is written with) must be byte for byte `_from_v2`: each
    ring cut after its last non-zero item — zero items inside a ring kept, a partly zero last item
    kept whole — for rings empty, partly and wholly full, in any row of a chunk."""
    rng = np.random.default_rng(3)
    rows = F._new_rows(8)
    u8 = rows.view(np.uint8)
    out = np.zeros(K.PACKED_MAX_V3, dtype=np.uint8)
    ring_names = ("contacts", "provinces", "recent_ids", "contact_flags")
    for _ in range(3000):
        i = int(rng.integers(8))
        row = rng.integers(0, 256, K.STATE.itemsize, dtype=np.uint8)
        row[0] = 2
        for name in ring_names:  # keep a random prefix of items, then zeros; some zero items inside
            off, size = K.STATE.fields[name][1], K.STATE.fields[name][0].itemsize
            item = K.STATE.fields[name][0].base.itemsize
            keep = int(rng.integers(0, size // item + 1)) * item
            if keep and rng.random() < 0.5:  # the last kept item partly zero: still kept whole
                row[off + keep - item: off + keep - 1] = 0
            row[off + keep: off + size] = 0
            if rng.random() < 0.3:
                row[off: off + min(keep, item)] = 0  # a zero item first
        u8[i * K.STATE.itemsize:(i + 1) * K.STATE.itemsize] = row
        n = K.pack_v3(u8, i, out)
        assert out[:n].tobytes() == F._from_v2(row.tobytes())


HOT_CALLS = ("admit", "mt_step", "mo_step", "score_active", "_pack_v3", "from_rest", "key_partition")


@pytest.mark.parametrize("name", HOT_CALLS)
def test_the_hot_calls_skip_the_dispatcher_but_run_its_compiled_code(name):
    dispatcher, call = getattr(K, name), getattr(K, name + "_call")
    if not hasattr(dispatcher, "overloads"):  # NUMBA_DISABLE_JIT=1: plain Python, nothing to skip
        assert call is dispatcher
        return
    assert call is not dispatcher
    assert call is next(iter(dispatcher.overloads.values())).entry_point


def test_a_hot_call_answers_as_its_dispatcher_does_and_refuses_a_foreign_array():
    a, b = F.NumberStore(), F.NumberStore()
    sa, sb = a.new("13800000000", 1_800_000_000_000), b.new("13800000000", 1_800_000_000_000)
    for k, ts in enumerate(range(1_800_000_000_000, 1_800_000_600_000, 60_000)):
        admits = [f(st._rows, st._i, k, ts, 3_600_000, 7 + k) for f, st in ((K.admit, sa), (K.admit_call, sb))]
        assert admits[0] == admits[1] == (K.ADMIT, 0)
        args = (ts, 1000 + k % 3, 77, 5, 0, 7 + k, k)
        assert K.mt_step(sa._rows, sa._i, *args) == K.mt_step_call(sb._rows, sb._i, *args)
        again = [f(st._rows, st._i, -1, ts, 3_600_000, 7 + k) for f, st in ((K.admit, sa), (K.admit_call, sb))]
        assert again[0] == again[1] == (K.DUPLICATE_ID, 0)  # the id admit remembered
    assert sa.row_bytes() == sb.row_bytes()
    if K.admit_call is not K.admit:
        with pytest.raises(TypeError):  # a row of another layout is refused, not misread
            K.admit_call(np.zeros(4), 0, -1, 0, 0, 1)


_DECIDE_AND_DUMP = """
import sys
import orjson
sys.path.insert(0, sys.argv[1])
from conftest import load_cfg
from detector.core import Detector
from detector.contract import parse_cdr, parse_profile
from detector.generator import GeneratorSpec, generate_profiles, generate_records
import detector.kernel as K

cfg = load_cfg()
cfg["tiers"]["low"]["threshold"] = 0.2  # decisions, so tiers and restores are exercised too
cfg["state"]["rest_after_hours"] = 1  # numbers go to rest and come back
spec = GeneratorSpec(subscribers=120, hours=30, seed=4)
det = Detector(cfg)
for p in generate_profiles(spec):
    det.on_profile(parse_profile(p))
events = [e for r in generate_records(spec) for e in det.on_record(parse_cdr(r))]
states = {m: st.to_dict() for eng in det.engines.values() for m, st in eng.numbers.items()}
out = {"compiled": hasattr(K.mo_step, "overloads"), "events": events, "states": states}
open(sys.argv[2], "wb").write(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY))
"""


def _close(a, b) -> bool:
    """Equal, floats within a few ulps (compiled, `0.5 ** x` and `a * b` may round otherwise)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
    return a == b


def test_the_kernel_run_as_plain_python_decides_as_compiled(tmp_path):
    """NUMBA_DISABLE_JIT=1 (to step through the kernel in a debugger, as its docstring says) runs
    the same arithmetic as Python: the same events, and final states equal but for the last
    digits of a few time-decayed counts (numba's `pow` is not the C library's)."""
    tests = Path(__file__).resolve().parent
    script = tmp_path / "decide.py"
    script.write_text(_DECIDE_AND_DUMP)

    def run(disable_jit: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_DETECTOR", "NUMBA_DISABLE_JIT"))}
        env["NUMBA_DISABLE_JIT"] = disable_jit
        out = tmp_path / f"out-{disable_jit}.json"
        proc = subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", str(script), str(tests), str(out)],
                              capture_output=True, text=True, timeout=600, env=env, cwd=tests.parent)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return orjson.loads(out.read_bytes())

    compiled, python = run("0"), run("1")
    assert compiled["compiled"] is True and python["compiled"] is False  # each ran as it was meant to
    assert len(compiled["events"]) >= 3  # decisions were taken, so scoring and tiers are compared too
    assert python["events"] == compiled["events"]
    assert len(compiled["states"]) >= 100 and python["states"].keys() == compiled["states"].keys()
    for m, st in compiled["states"].items():
        assert st.keys() == python["states"][m].keys()
        for name, value in st.items():
            assert _close(python["states"][m][name], value), (m, name, python["states"][m][name], value)
