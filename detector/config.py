"""One settings object: YAML from `config/` (or --config), then environment overrides.

Environment: `CDR_DETECTOR__SECTION__KEY=value` (value parsed as YAML). A key ending in `_file`
names a file whose content becomes the key without the suffix, so secrets stay out of YAML.
"""
from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

ENV_PREFIX = "CDR_DETECTOR__"
DEFAULTS = Path(__file__).with_name("defaults.yaml")
SECRET_KEYS = ("password", "secret", "token", "key")


class ConfigError(ValueError):
    pass


def _merge(base: dict, override: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _env_overrides(environ: Mapping[str, str]) -> dict:
    out: dict = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
    return out


def _resolve_files(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out = {k: _resolve_files(v) for k, v in node.items()}
    for k, v in node.items():
        if k.endswith("_file") and isinstance(v, str):
            try:
                out[k[:-5]] = Path(v).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{k}: cannot read {v}: {exc.strerror}") from None
    return out


def load(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None,
         overrides: Mapping | None = None) -> dict:
    """Defaults ← YAML file ← environment ← explicit overrides (command-line flags)."""
    environ = os.environ if environ is None else environ
    with open(DEFAULTS) as f:
        cfg = yaml.safe_load(f)
    path = path or environ.get("CDR_DETECTOR_CONFIG")
    if path:
        try:
            with open(path) as f:
                user = yaml.safe_load(f) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        cfg = _merge(cfg, user)
    cfg = _merge(cfg, _env_overrides(environ))
    if overrides:
        cfg = _merge(cfg, {k: v for k, v in overrides.items() if v is not None})
    cfg = _resolve_files(cfg)
    validate(cfg)
    return cfg


TIER_NAMES = ("low", "high", "extreme")


def validate(cfg: dict) -> None:
    tiers = cfg.get("tiers", {})
    last = 0.0
    for name in TIER_NAMES:
        t = tiers.get(name)
        if not isinstance(t, dict):
            raise ConfigError(f"tiers.{name} is missing")
        th = t.get("threshold")
        if isinstance(th, bool) or not isinstance(th, (int, float)) or not 0.0 < th <= 1.0:
            raise ConfigError(f"tiers.{name}.threshold must be a number in (0, 1], got {th!r}")
        if th <= last:
            raise ConfigError(f"tiers.{name}.threshold must be above the tier below it")
        last = th
        if t.get("mode") not in ("enforce", "shadow"):
            raise ConfigError(f"tiers.{name}.mode must be enforce or shadow")
    if not 0.0 <= cfg["restore"]["below_score"] < tiers["low"]["threshold"]:
        raise ConfigError("restore.below_score must be below tiers.low.threshold")
    kafka = cfg.get("kafka", {})
    for name in ("producer_backend", "consumer_backend"):
        backend = kafka.get(name, "kafka-python")
        if backend not in ("kafka-python", "confluent"):
            raise ConfigError(f"kafka.{name} must be kafka-python or confluent, got {backend!r}")
    for name in ("rdkafka_options", "rdkafka_consumer_options"):
        if not isinstance(kafka.get(name) or {}, Mapping):
            raise ConfigError(f"kafka.{name} must be a mapping of librdkafka properties, got {kafka.get(name)!r}")


def model_id(cfg: dict) -> str:
    """Model and configuration version, stamped on every event: name + hash of what decides."""
    deciding = {k: cfg[k] for k in ("features", "model", "decisions", "tiers", "restore")}
    digest = hashlib.sha256(yaml.safe_dump(deciding, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.get('model_version', 'cdr-risk')}+{digest}"


def redacted(cfg: Any) -> Any:
    """The settings with secrets masked, for logs and `config show`."""
    if isinstance(cfg, dict):
        return {k: ("***" if v is not None and any(s in k for s in SECRET_KEYS) and not k.endswith("file")
                    and not isinstance(v, dict)
                    else redacted(v)) for k, v in cfg.items()}
    return cfg
