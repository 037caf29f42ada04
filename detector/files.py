"""Recorded files: JSON Lines, optionally gzip-compressed, read as raw lines for the parser."""
from __future__ import annotations

import gzip
import io
import os
from typing import IO, Iterator

import orjson


def open_bytes(path: str | os.PathLike) -> IO[bytes]:
    path = os.fspath(path)
    if path.endswith(".gz"):
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) for every non-blank line."""
    with open_bytes(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line:
                yield n, line


class JsonlWriter:
    """Writes one JSON object a line, gzip when the name ends in .gz."""

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self.f = gzip.open(path, "wb") if path.endswith(".gz") else open(path, "wb")
        self.count = 0

    def write(self, obj: dict) -> None:
        self.f.write(orjson.dumps(obj))
        self.f.write(b"\n")
        self.count += 1

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
