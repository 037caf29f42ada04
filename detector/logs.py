"""Structured logs: one JSON object a line, phone numbers masked unless DEBUG.

A carrier's log pipeline indexes these fields; masking keeps subscribers' numbers out of it.
"""
from __future__ import annotations

import logging
import re
import sys
import time

import orjson

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def mask(number: str | None) -> str:
    """`13812345678` → `138****5678`: enough for an operator to correlate, not to dial."""
    if not number:
        return ""
    if logging.getLogger("cdr_detector").isEnabledFor(logging.DEBUG):
        return number
    if len(number) <= 6:
        return "*" * len(number)
    return number[:3] + "*" * (len(number) - 7) + number[-4:]


_DIGITS = re.compile(r"\d{7,}")


def mask_text(text: str) -> str:
    """Mask every run of 7+ digits (a phone number quoted in an error message) unless DEBUG."""
    if logging.getLogger("cdr_detector").isEnabledFor(logging.DEBUG):
        return text
    return _DIGITS.sub(lambda m: mask(m.group(0)), text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("kafka").setLevel(max(root.level, logging.WARNING))
