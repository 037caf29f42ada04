"""detector/kernel.py: what is not covered through features, model and core."""
from __future__ import annotations

import logging

import numpy as np
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
