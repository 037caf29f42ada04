"""Helpers for tests that need the local Kafka broker (scripts/kafka-local.sh). Not a test module."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO_ROOT / "scripts" / "kafka-local.sh"


def kafka_port() -> int:
    return int(os.environ.get("KAFKA_PORT", "9092"))


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def ensure_broker() -> str:
    """Return "127.0.0.1:PORT", starting the local broker first if nothing answers there.

    The first start on a fresh machine resolves the jars from Maven Central (about a minute).
    """
    port = kafka_port()
    if not _port_open(port):
        proc = subprocess.run(
            ["bash", str(KAFKA_SCRIPT), "start"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"scripts/kafka-local.sh start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
    return f"127.0.0.1:{port}"


def unique_topic(prefix: str = "test") -> str:
    """A fresh topic name, so tests never see each other's records."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1) -> T:
    """Call predicate until it returns something truthy and return that; TimeoutError after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)
