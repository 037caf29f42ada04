"""The memory benchmark's worker still runs against the code it measures.

A benchmark is not a test (it asserts no speed or size), but one that no longer runs is a figure
nobody can reproduce: d8be81c removed the partition cache the worker read, and nothing noticed
until it was next run. This runs it at a toy size and checks what it reports is the run's own.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT


def _memory_worker(*extra: str) -> dict:
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "_memory-worker", "--numbers", "3000",
           "--per-number", "2", "--pool-subscribers", "300", "--pool-hours", "6", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("with_profiles", [False, True])
def test_the_memory_worker_measures_the_numbers_it_fed(with_profiles):
    r = _memory_worker(*(["--with-profiles"] if with_profiles else []))
    assert r["numbers"] == 3000 and r["tracked"] == 3000 and r["records_fed"] == 6000
    assert r["with_profiles"] is with_profiles
    assert r["deep"]["profiles_held"] == (3000 if with_profiles else 0)
    assert r["rss_after"] > r["rss_before"] > 0
    assert r["deep"]["profiles"] >= 32 if with_profiles else r["deep"]["profiles"] < 1  # an int each at least
