"""`cdr-detector tune` — placeholder wired into the CLI; the implementation lands here."""
from __future__ import annotations


def add_parser(sub, add_config) -> None:
    p = sub.add_parser("tune", help="propose per-tier thresholds that meet a false-suspension budget")
    add_config(p)


def run(args) -> int:
    raise SystemExit("tune: not implemented yet")
