"""From features to a risk score in [0, 1], learnt online.

Two things are learnt as the stream flows, so the model fits each carrier's own subscribers:
- **What is typical** for every feature: a per-subscriber population quantile (river
  `stats.Quantile`), fed at most once per number and hour so that one busy line cannot drag the
  baseline. Evidence is measured as the distance from that learnt typical value, so a carrier
  where couriers or migrants are common learns that their behaviour is ordinary.
- **How much each kind of evidence weighs**: a river `LogisticRegression` over the evidence,
  started from prior weights in config and trained online on verification outcomes (`cleared`
  → 0, `confirmed_fraud` → 1), the operator's own ground truth.

Shares over a few calls are noisy, so each is shrunk towards the learnt typical value by a few
pseudo-calls (empirical Bayes): a line needs real evidence, not two unlucky calls, to look odd.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from river import linear_model, optim

from . import kernel as K
from .contract import Profile
from .features import NumberState


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # "share_high", "share_low", "count", "flag"
    quantile: float  # which population quantile stands for "typical"
    prior_typical: float


FEATURES: tuple[Feature, ...] = (
    Feature("calls_last_hour", "count", 0.5, 1.0),
    Feature("new_peer_share", "share_high", 0.5, 0.6),
    Feature("unanswered_share", "share_high", 0.5, 0.15),
    Feature("short_call_share", "share_high", 0.5, 0.02),
    Feature("out_of_province_share", "share_high", 0.5, 0.15),
    Feature("province_spread", "share_high", 0.5, 0.3),
    Feature("intl_share", "share_high", 0.5, 0.0),
    Feature("premium_calls", "count", 0.5, 0.0),
    Feature("intl_minutes", "count", 0.5, 0.0),
    Feature("night_share", "share_high", 0.5, 0.1),
    Feature("inbound_share", "share_low", 0.5, 0.45),
    Feature("callback_share", "share_low", 0.5, 0.25),
    Feature("handset_lines", "count", 0.5, 0.0),
    Feature("cell_bypass_lines", "count", 0.5, 0.0),
    Feature("handset_change", "flag", 0.0, 0.0),
    Feature("new_line", "flag", 0.0, 0.0),
    Feature("prepaid", "flag", 0.0, 0.0),
    Feature("unverified", "flag", 0.0, 0.0),
    # evidence for the line (negative weights): an established, verified business account, and
    # a long customer history — the 14-year customer is not a fresh SIM from a bulk batch
    Feature("business_account", "flag", 0.0, 0.0),
    Feature("long_tenure", "flag", 0.0, 0.0),
)
FEATURE_NAMES = tuple(f.name for f in FEATURES)
N_FEATURES = len(FEATURES)
# Scoring works on arrays in FEATURES order (a record is scored many times more often than it is
# explained); `as_dicts` names them for reasons, learning and tests.
_SHARES = tuple(i for i, f in enumerate(FEATURES) if f.kind.startswith("share_"))


def profile_inputs(profile: Profile | None) -> tuple[bool, int, bool, bool, bool]:
    """A profile as `kernel.raw_vector` takes it: whether there is one, its activation time,
    prepaid, ID verified, and a postpaid business account."""
    if profile is None:
        return False, 0, False, False, False
    return (True, profile.activated_ts, profile.plan == "prepaid", profile.id_verified,
            profile.segment == "business" and profile.plan == "postpaid")


def _named_raw(raw, tenure: float | None) -> dict:
    """Raw values by feature name, with `tenure_days` (what reasons quote for `new_line`)."""
    named = dict(zip(FEATURE_NAMES, _floats(raw)))
    named["tenure_days"] = tenure
    return named


def _floats(xs) -> list[float]:
    """Python floats (for events and JSON) from an array or a list."""
    return xs.tolist() if isinstance(xs, np.ndarray) else list(xs)


class RiskModel:
    """Population baselines + an online logistic model over evidence."""

    def __init__(self, cfg: dict, share_calls: float = 8.0, watch_bias: float = 0.0):
        self.share_calls = float(share_calls)  # features.share_window_calls: the shares' memory
        self.watch_bias = float(watch_bias)  # log-odds added for a line with confirmed fraud behind it
        self.prior_calls = float(cfg.get("prior_calls", 3))
        self.min_population = int(cfg.get("min_population", 200))
        self.population_min_calls = int(cfg.get("population_min_calls", 5))
        self.population_interval_ms = int(float(cfg.get("population_interval_hours", 24)) * 3_600_000)
        self.warmup_ms = int(float(cfg.get("warmup_hours", 24)) * 3_600_000)
        self.new_line_days = float(cfg.get("new_line_days", 30))
        self.share_low_floor = float(cfg.get("share_low_floor", 0.2))
        self.long_tenure_days = float(cfg.get("long_tenure_days", 1095))
        weights = dict(cfg.get("prior_weights", {}))
        unknown = set(weights) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"model.prior_weights names unknown features: {sorted(unknown)}")
        # Outcomes exist only for lines that were suspended: a selected sample, which says nothing
        # about the base rate. So the intercept stays fixed; only the weights learn.
        self.lr = linear_model.LogisticRegression(
            optimizer=optim.SGD(float(cfg.get("learning_rate", 0.02))),
            intercept_init=float(cfg.get("prior_bias", -6.0)),
            intercept_lr=0.0,
            l2=float(cfg.get("l2", 0.0)),
        )
        for name in FEATURE_NAMES:
            self.lr._weights[name] = float(weights.get(name, 0.0))
        self.baseline = PopulationBaseline([f for f in FEATURES if f.kind != "flag"])
        self.population_n = 0
        self._typical_cache: dict[str, float] | None = None
        self._spec: np.ndarray | None = None  # `kernel_model()`, from typical() and the weights
        self._refresh_weights()

    # -- what is typical ---------------------------------------------------------------------
    def typical(self) -> dict[str, float]:
        if self._typical_cache is None:
            learnt = self.population_n >= self.min_population
            out = {}
            for f in FEATURES:
                if f.kind == "flag":
                    out[f.name] = 0.0
                elif learnt:
                    out[f.name] = self.baseline.quantile(f.name, f.quantile)
                else:
                    out[f.name] = f.prior_typical
            self._typical_cache = out
        return self._typical_cache

    def observe_population(self, raw: list[float]) -> None:
        """One subscriber's raw feature values (FEATURES order) into the baselines."""
        self.baseline.update(raw)
        self.population_n += 1
        # Baselines move slowly; recomputing the cache every 64 updates keeps scoring cheap.
        if self.population_n % 64 == 0 or self.population_n == self.min_population:
            self._typical_cache = None
            self._spec = None

    def kernel_model(self) -> np.ndarray:
        """The model as `kernel.py` reads it (rows M_KIND … M_PARAM), rebuilt whenever the typical
        values or the weights change. Each constant is the same float the per-feature formula
        would compute (t + 1, m·t, 1 − t, …), so evidence is bit for bit that formula's."""
        if self._spec is not None:
            return self._spec
        typ = self.typical()
        m = self.prior_calls
        spec = np.zeros((K.N_MODEL_ROWS, N_FEATURES))
        for j, f in enumerate(FEATURES):
            t = typ[f.name]
            if f.kind == "count":
                spec[K.M_KIND, j], spec[K.M_T, j] = K.KIND_COUNT, t + 1.0
            elif f.kind == "share_high":
                spec[K.M_KIND, j], spec[K.M_T, j], spec[K.M_MT, j] = K.KIND_HIGH, t, m * t
                spec[K.M_ROOM, j] = (1.0 - t) if t < 1.0 else 0.0
            elif f.kind == "share_low":
                spec[K.M_KIND, j], spec[K.M_T, j], spec[K.M_MT, j] = K.KIND_LOW, t, m * t
                spec[K.M_ROOM, j] = max(t, self.share_low_floor)
        w = self.lr._weights
        spec[K.M_WEIGHT] = [w[name] for name in FEATURE_NAMES]
        p = spec[K.M_PARAM]
        p[K.P_PRIOR_CALLS], p[K.P_INTERCEPT], p[K.P_WATCH_BIAS] = m, self.lr.intercept, self.watch_bias
        p[K.P_WARMUP_MS], p[K.P_SHARE_CALLS] = self.warmup_ms, self.share_calls
        p[K.P_NEW_LINE_DAYS], p[K.P_LONG_TENURE_DAYS] = self.new_line_days, self.long_tenure_days
        self._spec = spec
        return spec

    # -- raw features --------------------------------------------------------------------------
    def raw_vector(self, st: NumberState, profile: Profile | None, ts: int,
                   handset_lines: int, cell_lines: int, watched_ms: int) -> tuple[np.ndarray, np.ndarray, float | None]:
        """Raw feature values (FEATURES order), how many observations back each share (for
        shrinkage; 0 for counts and flags), and the line's tenure in days (None: no profile).

        `watched_ms` is how long the detector has been watching the stream: until it has seen a
        day of traffic it cannot know a line's contacts, so "never-seen peer", "never calls back"
        and "no inbound" count for less (the cold start of every new deployment). Computed by
        `kernel.raw_into`, as the engine's per-record step computes them; the arrays are fresh.
        """
        buf = np.empty((2, N_FEATURES))
        tenure = K.raw_into(st._rows, st._i, buf, ts, *profile_inputs(profile), handset_lines, cell_lines,
                            watched_ms, self.kernel_model())
        return buf[0], buf[1], (None if profile is None else tenure)

    def raw_features(self, st: NumberState, profile: Profile | None, ts: int,
                     handset_lines: int, cell_lines: int, watched_ms: int) -> tuple[dict, dict]:
        """`raw_vector` by name: raw values (plus `tenure_days`), and the support of each share."""
        raw, support, tenure = self.raw_vector(st, profile, ts, handset_lines, cell_lines, watched_ms)
        return _named_raw(raw, tenure), {FEATURE_NAMES[i]: float(support[i]) for i in _SHARES}

    # -- evidence and score --------------------------------------------------------------------
    def evidence_vector(self, raw: np.ndarray, support: np.ndarray) -> np.ndarray:
        """How far each feature sits on the suspicious side of typical, in [0, 1] (FEATURES order).

        counts: log2 of the ratio to typical, a third per doubling; shares: shrunk towards typical
        by `prior_calls` pseudo-observations, then the distance to typical over its room (high)
        or relative to typical (low: a rare behaviour's absence is no evidence); flags as they are.
        Computed by `kernel.evidence_vector`."""
        ev = np.empty(N_FEATURES)
        K.evidence_vector(np.asarray(raw, dtype=float), np.asarray(support, dtype=float), ev, self.kernel_model())
        return ev

    def score_vector(self, ev: np.ndarray) -> float:
        return K.score_vector(np.asarray(ev, dtype=float), self.kernel_model())

    @staticmethod
    def as_dicts(raw: list[float], ev: list[float], tenure: float | None) -> tuple[dict, dict]:
        """Raw values (with `tenure_days`) and evidence by feature name: for reasons and learning."""
        return _named_raw(raw, tenure), dict(zip(FEATURE_NAMES, _floats(ev)))

    def contributions(self, ev: dict[str, float]) -> list[tuple[str, float]]:
        """Evidence × weight, largest first: what drove a decision."""
        w = self.lr._weights
        parts = [(name, w[name] * e) for name, e in ev.items() if e > 0 and w[name] > 0]
        parts.sort(key=lambda p: (-p[1], p[0]))
        return parts

    def learn(self, ev: dict[str, float], is_fraud: bool) -> None:
        """An operator's verdict (issue: restore the innocent) moves the weights."""
        self.lr.learn_one(ev, is_fraud)
        self._refresh_weights()

    def _refresh_weights(self) -> None:
        """The weights changed (only learning changes them): the kernel's copy is rebuilt."""
        self._spec = None

    # -- persistence ---------------------------------------------------------------------------
    def weights(self) -> dict[str, float]:
        return {name: float(self.lr._weights[name]) for name in FEATURE_NAMES} | {
            "_bias": float(self.lr.intercept)}

    def to_dict(self) -> dict:
        return {"v": 1, "weights": self.weights(), "sgd_iterations": self.lr.optimizer.n_iterations,
                "population_n": self.population_n, "baseline": self.baseline.to_dict()}

    def load_dict(self, d: dict) -> None:
        if d.get("v") != 1:
            raise ValueError(f"unknown model-state version {d.get('v')!r}")
        w = dict(d["weights"])
        self.lr.intercept = float(w.pop("_bias"))
        for name, value in w.items():
            self.lr._weights[name] = float(value)
        self.lr.optimizer.n_iterations = int(d["sgd_iterations"])
        self.population_n = int(d["population_n"])
        self.baseline.load_dict(d["baseline"])
        self._typical_cache = None
        self._spec = None
        self._refresh_weights()


class PopulationBaseline:
    """Per-feature histograms of subscribers' values (numpy), read back as quantiles.

    Shares live in [0, 1] on linear bins; counts on log bins up to `COUNT_MAX`. A histogram is
    exact to a bin's width, cheap to update, and plain data to persist.
    """

    BINS = 200
    COUNT_MAX = 10_000.0

    def __init__(self, features: list[Feature]):
        self.names = [f.name for f in features]
        self.is_count = np.array([f.kind == "count" for f in features])
        self._at = tuple(FEATURES.index(f) for f in features)  # each one's place in a raw vector
        self.hist = np.zeros((len(features), self.BINS))
        self._log_top = math.log1p(self.COUNT_MAX)

    def _bin(self, i: int, x: float) -> int:
        u = math.log1p(max(0.0, x)) / self._log_top if self.is_count[i] else x
        b = int(u * self.BINS)
        return 0 if b < 0 else self.BINS - 1 if b >= self.BINS else b

    def _value(self, i: int, u: float) -> float:
        u = u / self.BINS
        return math.expm1(u * self._log_top) if self.is_count[i] else u

    def update(self, raw: list[float]) -> None:
        """One subscriber's raw values, in FEATURES order."""
        for i, at in enumerate(self._at):
            self.hist[i, self._bin(i, raw[at])] += 1.0

    def quantile(self, name: str, q: float) -> float:
        i = self.names.index(name)
        h = self.hist[i]
        total = h.sum()
        if total <= 0:
            return 0.0
        cum = np.cumsum(h)
        target = q * total
        b = int(np.searchsorted(cum, target, side="left"))
        b = min(b, self.BINS - 1)
        below = cum[b] - h[b]
        frac = (target - below) / h[b] if h[b] > 0 else 0.0
        return float(self._value(i, b + frac))

    def to_dict(self) -> dict:
        return {"names": self.names, "hist": {n: [round(float(x), 6) for x in self.hist[i]]
                                              for i, n in enumerate(self.names)}}

    def load_dict(self, d: dict) -> None:
        for i, n in enumerate(self.names):
            if n in d["hist"]:
                self.hist[i] = np.asarray(d["hist"][n], dtype=float)
