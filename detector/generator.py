"""Deterministic synthetic CDR stream of one carrier, for the demo, tests and benchmarks.

The generator builds a population of subscribers (a "world": numbers, handsets, cells, contact
books, habits, fraud groups) from the spec's seed, then produces the carrier's records one time
slice (an hour) at a time: every slice is drawn with its own seeded random stream, merged with the
few records of earlier slices that spill into it (callbacks, SMS replies), sorted, and emitted.
Memory therefore stays bounded by one hour of traffic plus the world, whatever the run length.

Legitimate personas (label ``benign``; the typology names the persona):

- ``typical``    ordinary consumer: a contact book, home/work cells, evening peak, SMS threads
- ``light``      few calls a day, small book, often older prepaid lines
- ``business``   many contacts in many provinces, lots of inbound, office hours
- ``courier``    dozens of new local numbers a day, short answered calls, customers call back
- ``migrant``    calls home to another province every day: few peers, long calls, evening peak
- ``night``      night-shift worker: the day/night pattern inverted
- ``telesales``  telemarketing line of a registered business: many new numbers in a handful of
                 provinces, moderate answer rate, but postpaid business, long tenure, real callbacks
- ``agent``      real-estate / insurance agent: large book, many new local clients, lots of SMS
- ``newline``    a student or someone who just got a phone: short tenure (some activated during
                 the run), small book, normal behaviour
- ``traveller``  goes on a trip during the run: roams abroad (cells in ``INTL-<cc>``, calls home
                 and local foreign numbers) or in another province
- ``family``     two numbers on one dual-SIM handset (same IMEI, same cells)
- ``hotline``    a small business's service line: very heavy inbound from new numbers everywhere
- ``notifier``   a clinic/school/shop line sending SMS batches to its own customer list

Fraud schemes (label ``fraud``): each line is either fresh (activated shortly before its onset;
silent or "warmed up" with light legitimate use before it) or an established line that behaves
like its legitimate persona until ``onset_ts``.

- ``scam``      call-centre lines: fresh prepaid SIMs in groups sharing a handset bank and a cell,
                many calls to new numbers across many provinces, moderate answer rate, no inbound
                except a few victims calling back; some groups are "low and slow"
- ``wangiri``   one-ring: bursts of very short unanswered calls (often dialled sequentially within
                a number block) to huge numbers of new peers; a few victims call back
- ``simbox``    SIM-box bypass: many SIMs rotating over a few modules (consecutive IMEIs) in one
                cell, local-looking answered calls, no inbound, no repeats, shifts per SIM
- ``irsf``      premium-rate international: an established line taken over (sometimes new
                handset/cell), long calls to a few premium numbers abroad, mostly at night
- ``rented``    an established line rented out: from onset it moves to a new handset and a new cell
                (another city or province) and turns to scam-like calling; the owner falls silent
- ``smishing``  SMS blasts to many new numbers (local-heavy), a few replies and call-backs

Numbers are 11-digit mobile numbers from number blocks that each belong to one region, so a
number's ``peer_region`` is the same wherever it appears; the carrier's own subscribers use blocks
of the home region. Foreign numbers are the country code followed by a national number.
"""
from __future__ import annotations

import csv
import gzip
import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = [
    "GeneratorSpec",
    "PERSONAS",
    "SCHEMES",
    "generate_profiles",
    "generate_labels",
    "generate_records",
    "write_dataset",
]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
TZ_MS = 8 * HOUR_MS  # China Standard Time: diurnal habits follow local time
SLOT_MS = 30 * 60 * 1000  # a subscriber stays in one place for a slot
NEVER = np.iinfo(np.int64).max // 4
MAX_DURATION = 7200


@dataclass(frozen=True)
class GeneratorSpec:
    subscribers: int = 5000
    hours: float = 72.0
    start_ts: int = 1_784_000_000_000  # ms
    home_region: str = "GD-SZ"
    fraud_share: float = 0.02  # share of subscribers that turn fraudulent at some onset
    seed: int = 7


# --------------------------------------------------------------------------------------------
# Geography

_PROVINCES = {  # code: population in millions (2020 census, rounded)
    "GD": 126, "SD": 101, "HEN": 99, "JS": 85, "SC": 84, "HEB": 75, "HUN": 66, "ZJ": 65, "AH": 61,
    "HB": 58, "GX": 50, "YN": 47, "JX": 45, "LN": 43, "FJ": 41, "SN": 40, "GZ": 38, "SX": 35,
    "CQ": 32, "HLJ": 32, "XJ": 26, "GS": 25, "SH": 25, "NM": 24, "JL": 24, "BJ": 22, "TJ": 14,
    "HI": 10, "NX": 7, "QH": 6, "XZ": 4,
}
# Where migrant workers of the coastal provinces come from (multiplies the population weight).
_MIGRANT_SOURCE = {"HUN": 3.0, "GX": 3.0, "SC": 2.5, "HEN": 2.5, "JX": 2.5, "HB": 2.0, "GZ": 2.0,
                   "AH": 2.0, "CQ": 2.0, "GS": 1.5, "YN": 1.3}
_CITIES = {  # province: {city code: population in millions}
    "GD": {"GZ": 18.7, "SZ": 17.6, "DG": 10.5, "FS": 9.5, "ZJ": 7.0, "MM": 6.2, "HZ": 6.0, "JY": 5.6,
           "ST": 5.5, "JM": 4.8, "ZS": 4.4, "ZQ": 4.1, "QY": 4.0, "MZ": 3.9, "SG": 2.9, "HY": 2.8,
           "SW": 2.7, "YJ": 2.6, "CZ": 2.6, "ZH": 2.4, "YF": 2.4},
    "ZJ": {"HZ": 12.0, "NB": 9.4, "WZ": 9.6, "JX": 5.4, "HU": 3.4, "SX": 5.3, "JH": 7.1, "QZ": 2.3,
           "ZS": 1.2, "TZ": 6.6, "LS": 2.5},
    "JS": {"NJ": 9.3, "SZ": 12.7, "WX": 7.5, "CZ": 5.3, "ZJ": 3.2, "NT": 7.7, "YZ": 4.6, "YC": 6.7,
           "XZ": 9.1, "HA": 4.6, "LY": 4.6, "TZ": 4.5, "SQ": 5.0},
    "SC": {"CD": 20.9, "MY": 4.9, "DY": 3.5, "NC": 5.6, "YB": 4.6, "ZG": 2.5, "LZ": 4.3, "LS": 3.2,
           "DZ": 5.4, "GA": 3.3},
    "FJ": {"FZ": 8.3, "XM": 5.2, "QZ": 8.8, "ZZ": 5.1, "PT": 3.2, "LY": 2.7, "SM": 2.5, "NP": 2.7,
           "ND": 3.1},
    "SD": {"JN": 9.2, "QD": 10.1, "YT": 7.1, "WF": 9.4, "LY": 11.0, "ZB": 4.7, "JI": 8.4, "TA": 5.5,
           "WH": 2.9, "DZ": 5.6, "LC": 6.0, "BZ": 3.9, "HZ": 8.8, "RZ": 3.0, "DY": 2.2, "ZZ": 3.9},
    "HB": {"WH": 12.3, "YC": 4.0, "XY": 5.3, "JZ": 5.2, "HG": 5.9, "SY": 3.2, "XG": 4.3, "JM": 2.6,
           "EZ": 1.1, "XN": 2.7, "SZ": 2.0, "ES": 3.5},
    "HEN": {"ZZ": 12.6, "LY": 7.1, "NY": 9.7, "ZK": 9.0, "SQ": 7.8, "XX": 6.3, "ZM": 7.0, "XY": 6.2,
            "AY": 5.5, "KF": 4.8, "PD": 5.0},
    "HUN": {"CS": 10.0, "HY": 6.6, "ZZ": 4.7, "YY": 5.1, "CD": 5.3, "SY": 6.6, "YZ": 5.3, "HH": 4.6,
            "LD": 3.8, "ZJ": 1.5, "XT": 2.7},
}
_INTL_DIASPORA = {"852": 6, "853": 2, "886": 3, "1": 5, "44": 2, "61": 2, "65": 2, "60": 2,
                  "81": 2, "82": 2, "66": 1, "84": 1.5, "63": 1, "49": 1, "33": 1, "971": 1,
                  "7": 0.7, "62": 0.8}
_INTL_TRAVEL = {"66": 4, "81": 4, "65": 2, "60": 2, "82": 3, "852": 4, "853": 2, "84": 2, "1": 1.5,
                "44": 1, "61": 1, "33": 1, "971": 1, "62": 1.5, "886": 1}
# Classic premium-rate / IRSF destinations, and a longer tail a seed draws extra ones from.
_PREMIUM_CORE = ["882", "881", "675", "252", "239", "247", "235", "373", "53"]
_PREMIUM_TAIL = ["371", "370", "224", "232", "236", "240", "269", "290", "291", "677", "678",
                 "679", "683", "686", "688", "960", "992", "993", "211", "220", "222", "225",
                 "228", "229", "242", "243", "245", "248", "261", "268", "216", "381", "387", "389"]
_MOBILE_PREFIXES = ([130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 145, 147, 149]
                    + [150, 151, 152, 153, 155, 156, 157, 158, 159, 166, 170, 171, 172, 173]
                    + [175, 176, 177, 178, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189]
                    + [191, 193, 195, 197, 198, 199])
_CARRIER_PREFIXES = [134, 135, 136, 137, 138, 139, 147, 150, 151, 152, 157, 158, 159, 172, 178,
                     182, 183, 184, 187, 188, 195, 197, 198]

# --------------------------------------------------------------------------------------------
# Habits

_DIURNAL = {  # local hour 0..23 → relative activity (normalised to mean 1), weekend factor
    "day": ([.25, .12, .07, .05, .05, .08, .25, .6, 1.0, 1.2, 1.25, 1.25, 1.1, 1.0, 1.15, 1.2,
             1.2, 1.25, 1.35, 1.5, 1.6, 1.5, 1.1, .6], 1.0),
    "office": ([.05, .03, .02, .02, .02, .05, .15, .5, 1.3, 2.0, 2.1, 1.9, 1.2, 1.3, 1.9, 2.0,
                1.9, 1.6, 1.0, .7, .6, .5, .3, .12], 0.45),
    "courier": ([.02, .01, .01, .01, .02, .05, .2, .8, 1.6, 2.0, 2.1, 1.9, 1.5, 1.5, 1.9, 2.0,
                 1.9, 1.6, 1.2, .9, .6, .35, .15, .05], 0.9),
    "night": ([1.6, 1.5, 1.3, 1.1, .9, .7, .5, .3, .15, .1, .1, .1, .1, .15, .2, .35, .6, .9, 1.2,
               1.4, 1.6, 1.7, 1.8, 1.7], 1.0),
    "evening": ([.6, .3, .15, .08, .05, .05, .1, .4, .7, .8, .9, 1.0, 1.2, 1.0, .9, .9, 1.0, 1.2,
                 1.4, 1.7, 2.0, 2.2, 2.0, 1.3], 1.1),
    "migrant": ([.15, .08, .05, .03, .03, .1, .4, .7, .8, .8, .8, 1.0, 1.3, 1.0, .8, .8, .9, 1.0,
                 1.4, 1.9, 2.3, 2.3, 1.6, .7], 1.2),
    "telesales": ([0, 0, 0, 0, 0, 0, 0, .1, .8, 2.4, 2.6, 2.3, .6, .8, 2.4, 2.5, 2.4, 1.8, .5, .2,
                   .1, 0, 0, 0], 0.25),
    "hotline": ([.05, .02, .01, .01, .01, .02, .1, .6, 1.6, 1.9, 1.9, 1.8, 1.5, 1.6, 1.8, 1.8,
                 1.7, 1.5, 1.3, 1.2, 1.1, .9, .5, .2], 0.8),
    "scam_day": ([0, 0, 0, 0, 0, 0, 0, 0, .5, 2.2, 2.4, 2.2, .6, .9, 2.3, 2.4, 2.3, 1.8, .8, 1.2,
                  1.5, 1.2, .3, 0], 0.8),
    "scam_late": ([1.2, .8, .3, .05, 0, 0, 0, 0, 0, 0, .2, .6, 1.0, 1.4, 1.6, 1.7, 1.6, 1.5, 1.4,
                   1.6, 1.8, 1.9, 1.8, 1.6], 1.0),
    "simbox": ([.6, .4, .3, .25, .25, .35, .6, .9, 1.1, 1.2, 1.25, 1.2, 1.1, 1.1, 1.15, 1.2, 1.25,
                1.3, 1.35, 1.4, 1.4, 1.3, 1.1, .8], 1.1),
    "irsf": ([2.0, 2.2, 2.2, 2.0, 1.8, 1.5, 1.0, .6, .4, .4, .4, .5, .5, .5, .5, .6, .6, .7, .8,
              .9, 1.0, 1.2, 1.5, 1.8], 1.3),
    "blast": ([.05, .02, 0, 0, 0, .02, .1, .5, 1.2, 1.6, 1.7, 1.6, 1.3, 1.4, 1.6, 1.6, 1.5, 1.5,
               1.6, 1.7, 1.7, 1.4, .8, .3], 1.0),
}
_DIURNAL_NAMES = list(_DIURNAL)

# Mobility: (probability of the home cell, of the work cell) in the home phase / the active phase.
_MOBILITY = {"std": ((.88, .03), (.25, .50)), "roam": ((.85, .05), (.08, .12)),
             "night": ((.88, .03), (.25, .50)), "static": ((.85, .05), (.05, .90))}
_MOB_NAMES = list(_MOBILITY)

# Peer mixes: probability of (home city, other city of the home province, other province,
# the subscriber's origin province, abroad).
PERSONAS: dict[str, dict] = {
    "typical": dict(share=0.0, day=(4.5, 4.0, 2.0), sig=.6, book=35, zipf=2.2, new=(.10, .22),
                    con=(.60, .14, .15, .10, .01), fresh=(.55, .15, .28, 0, .02), internal=.10,
                    ans=(.78, .83), dur=(70, 1.0), omult=1.6, cb=(.35, 0), diurnal="day", mob="std",
                    away=.08, postpaid=.55, business=.02, tenure=4.0, verified=.995),
    "light": dict(share=.12, day=(1.0, 1.1, .6), sig=.6, book=10, zipf=1.8, new=(.08, .30),
                  con=(.65, .12, .10, .13, 0), fresh=(.60, .15, .25, 0, 0), internal=.10,
                  ans=(.72, .80), dur=(55, 1.0), omult=1.5, cb=(.30, 0), diurnal="day", mob="std",
                  away=.03, postpaid=.40, business=0, tenure=5.0, verified=.98),
    "business": dict(share=.06, day=(14, 16, 3), sig=.5, book=220, zipf=1.6, new=(.35, .45),
                     con=(.38, .22, .36, 0, .04), fresh=(.35, .20, .42, 0, .03), internal=.06,
                     ans=(.80, .86), dur=(100, 1.05), omult=1.0, cb=(.40, .02), diurnal="office",
                     mob="std", away=.35, postpaid=.85, business=.6, tenure=6.0, verified=.998),
    "courier": dict(share=.035, day=(30, 22, 2.5), sig=.4, book=25, zipf=2.5, new=(.85, .70),
                    con=(.70, .10, .10, .10, 0), fresh=(.60, .12, .28, 0, 0), internal=.05,
                    ans=(.80, .90), dur=(25, .7), omult=1.0, cb=(.50, .03), diurnal="courier",
                    mob="roam", away=.05, postpaid=.50, business=.1, tenure=2.0, verified=.995),
    "migrant": dict(share=.04, day=(4.0, 3.5, 1.5), sig=.5, book=12, zipf=2.8, new=(.06, .15),
                    con=(.20, .05, .07, .68, 0), fresh=(.55, .15, .30, 0, 0), internal=.05,
                    ans=(.82, .85), dur=(160, .9), omult=2.2, cb=(.40, 0), diurnal="migrant",
                    mob="std", away=.02, postpaid=.25, business=0, tenure=2.0, verified=.99),
    "night": dict(share=.03, day=(4.0, 3.5, 2.0), sig=.6, book=30, zipf=2.2, new=(.10, .22),
                  con=(.60, .14, .15, .10, .01), fresh=(.55, .15, .28, 0, .02), internal=.10,
                  ans=(.75, .80), dur=(70, 1.0), omult=1.6, cb=(.35, 0), diurnal="night",
                  mob="night", away=.03, postpaid=.5, business=0, tenure=3.0, verified=.995),
    "telesales": dict(share=.008, day=(100, 14, 1.0), sig=.5, book=60, zipf=1.5, new=(.92, .55),
                      con=(.50, .20, .30, 0, 0), fresh=(.20, .15, .65, 0, 0), internal=.03,
                      ans=(.42, .88), dur=(55, 1.1), omult=1.0, cb=(.05, .05),
                      diurnal="telesales", mob="static", away=0, postpaid=1.0, business=1.0,
                      tenure=4.0, verified=1.0, targets=(3, 6)),
    "agent": dict(share=.015, day=(22, 16, 6), sig=.45, book=300, zipf=1.4, new=(.35, .40),
                  con=(.72, .10, .13, .05, 0), fresh=(.70, .12, .18, 0, 0), internal=.06,
                  ans=(.68, .85), dur=(95, 1.1), omult=1.0, cb=(.35, .06), diurnal="day",
                  mob="roam", away=.15, postpaid=.7, business=.5, tenure=5.0, verified=1.0),
    "newline": dict(share=.03, day=(3.5, 3.0, 3.5), sig=.7, book=8, zipf=1.6, new=(.25, .30),
                    con=(.60, .10, .15, .15, 0), fresh=(.60, .15, .25, 0, 0), internal=.08,
                    ans=(.78, .82), dur=(60, 1.0), omult=1.5, cb=(.30, 0), diurnal="evening",
                    mob="std", away=.05, postpaid=.10, business=0, tenure=0.0, verified=.97),
    "traveller": dict(share=.015, day=(4.0, 3.5, 1.8), sig=.5, book=40, zipf=2.0, new=(.15, .20),
                      con=(.58, .14, .17, .08, .03), fresh=(.55, .15, .28, 0, .02), internal=.10,
                      ans=(.78, .83), dur=(75, 1.0), omult=1.5, cb=(.35, 0), diurnal="day",
                      mob="std", away=.1, postpaid=.8, business=.2, tenure=6.0, verified=1.0),
    "family": dict(share=.02, day=(3.0, 2.7, 1.5), sig=.5, book=25, zipf=2.2, new=(.10, .22),
                   con=(.62, .14, .14, .10, 0), fresh=(.55, .15, .30, 0, 0), internal=.12,
                   ans=(.78, .83), dur=(70, 1.0), omult=1.6, cb=(.35, 0), diurnal="day", mob="std",
                   away=.05, postpaid=.6, business=0, tenure=5.0, verified=.995),
    "hotline": dict(share=.003, day=(12, 260, 1.0), sig=.4, book=40, zipf=1.5, new=(.90, .95),
                    con=(.50, .20, .30, 0, 0), fresh=(.30, .15, .52, 0, .03), internal=0,
                    ans=(.70, .78), dur=(130, .8), omult=1.0, cb=(0, 0), diurnal="hotline",
                    mob="static", away=0, postpaid=1.0, business=1.0, tenure=5.0, verified=1.0),
    "notifier": dict(share=.004, day=(3.0, 5.0, 1.0), sig=.4, book=350, zipf=1.3, new=(.3, .5),
                     con=(.80, .10, .08, .02, 0), fresh=(.70, .15, .15, 0, 0), internal=.06,
                     ans=(.75, .85), dur=(80, 1.0), omult=1.0, cb=(.3, 0), diurnal="office",
                     mob="static", away=0, postpaid=.9, business=1.0, tenure=5.0, verified=1.0,
                     batches=(1.0, 3.0)),
}
_PERSONA_NAMES = list(PERSONAS)
_P = {name: i for i, name in enumerate(_PERSONA_NAMES)}

SCHEMES: dict[str, dict] = {
    # share of the fraud lines, group size range, share of fresh lines, share of warm-up among them
    "scam": dict(share=.27, group=(3, 8), fresh=1.0, warm=.3),
    "simbox": dict(share=.17, group=(6, 20), fresh=1.0, warm=.45),
    "wangiri": dict(share=.11, group=(1, 4), fresh=.9, warm=.1),
    "irsf": dict(share=.13, group=(1, 1), fresh=0.0, warm=0.0),
    "rented": dict(share=.16, group=(1, 4), fresh=0.0, warm=0.0),
    "smishing": dict(share=.16, group=(1, 4), fresh=.6, warm=.2),
}
_SCHEME_NAMES = list(SCHEMES)
_S = {name: i for i, name in enumerate(_SCHEME_NAMES)}
_BURST_SCHEMES = {"wangiri", "smishing"}
# Base persona of an established line before it is taken over.
_TAKEOVER_BASE = {
    "irsf": {"typical": .5, "light": .2, "business": .2, "migrant": .1},
    "rented": {"light": .4, "typical": .4, "migrant": .2},
    "smishing": {"typical": .6, "light": .4},
    "wangiri": {"light": 1.0},
}
# Subscribers who may appear as the other party of another subscriber's call.
_INTERNAL_OK = {"typical", "light", "business", "courier", "migrant", "night", "agent", "traveller",
                "family"}

TYPOLOGIES = _PERSONA_NAMES + _SCHEME_NAMES

_U64 = np.uint64
_M24 = 0xFFFFFF


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser over a uint64 array (a good, vectorised hash)."""
    x = x.astype(_U64, copy=True)
    x += _U64(0x9E3779B97F4A7C15)
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


def _h63(x: np.ndarray) -> np.ndarray:
    """Hash to non-negative int64 (63 bits)."""
    return (_mix(x) >> _U64(1)).astype(np.int64)


def _cdf(weights) -> np.ndarray:
    c = np.cumsum(np.asarray(weights, dtype=np.float64))
    c /= c[-1]
    c[-1] = 1.0
    return c


def _allocate(n: int, shares: dict[str, float], minimum: int = 1) -> dict[str, int]:
    """Largest-remainder split of n into named parts; every part gets `minimum` when n allows."""
    names = list(shares)
    w = np.array([shares[k] for k in names], dtype=np.float64)
    w /= w.sum()
    raw = w * n
    cnt = np.floor(raw).astype(np.int64)
    if n >= 2 * minimum * len(names):
        cnt = np.maximum(cnt, minimum)
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    i = 0
    while cnt.sum() < n:
        cnt[order[i % len(names)]] += 1
        i += 1
    while cnt.sum() > n:
        j = int(np.argmax(cnt))
        cnt[j] -= 1
    return {k: int(c) for k, c in zip(names, cnt)}


def _lognormal(rng, med, sig, n) -> np.ndarray:
    d = np.exp(np.log(med) + sig * rng.standard_normal(n))
    return np.clip(np.ceil(d), 1, MAX_DURATION).astype(np.int64)


def _luhn_strings(bodies: np.ndarray) -> list[str]:
    """14-digit IMEI bodies → 15-digit IMEIs with the Luhn check digit."""
    if bodies.size == 0:
        return []
    digits = (bodies[:, None] // (10 ** np.arange(13, -1, -1, dtype=np.int64))) % 10
    dbl = digits[:, 1::2] * 2
    digits[:, 1::2] = dbl - 9 * (dbl > 9)
    check = (10 - digits.sum(axis=1) % 10) % 10
    return list(map(str, (bodies * 10 + check).tolist()))  # TACs never start with 0


def _grouped_offsets(rng, sizes: np.ndarray, mean_gap: np.ndarray, min_gap: float):
    """For groups of `sizes` events: (group id per event, index within group, ms offset from the
    group's first event), with exponential gaps of per-group mean `mean_gap` plus `min_gap`."""
    sizes = sizes.astype(np.int64)
    total = int(sizes.sum())
    gid = np.repeat(np.arange(sizes.size), sizes)
    first = np.cumsum(sizes) - sizes
    k = np.arange(total, dtype=np.int64) - first[gid]
    gaps = rng.exponential(1.0, total) * mean_gap[gid] + min_gap
    gaps[first[sizes > 0]] = 0.0
    cs = np.cumsum(gaps)
    off = (cs - cs[first[gid]]).astype(np.int64)
    return gid, k, off


_KEYS = ("ts", "sub", "d", "svc", "peer", "preg", "psub", "dur", "ans", "fr", "mir")
_DT = {"ts": np.int64, "sub": np.int64, "d": np.int8, "svc": np.int8, "peer": np.int64,
       "preg": np.int32, "psub": np.int64, "dur": np.int64, "ans": np.bool_, "fr": np.bool_,
       "mir": np.bool_}


def _ev(n, **cols) -> dict:
    out = {}
    for k in _KEYS:
        v = cols.get(k, -1 if k == "psub" else 0)
        out[k] = np.broadcast_to(np.asarray(v, dtype=_DT[k]), (n,)).copy() if np.ndim(v) == 0 \
            else np.asarray(v, dtype=_DT[k])
    return out


def _cat(evs: list[dict]) -> dict:
    evs = [e for e in evs if e["ts"].size]
    if not evs:
        return _ev(0)
    if len(evs) == 1:
        return evs[0]
    return {k: np.concatenate([e[k] for e in evs]) for k in _KEYS}


def _take(ev: dict, m) -> dict:
    return {k: v[m] for k, v in ev.items()}


# --------------------------------------------------------------------------------------------
# The world


class _World:
    """Everything about the population that does not change with time, built from the seed."""

    def __init__(self, spec: GeneratorSpec):
        if spec.subscribers < 1:
            raise ValueError("subscribers must be >= 1")
        if not spec.hours > 0:
            raise ValueError("hours must be > 0")
        if not 0.0 <= spec.fraud_share <= 1.0:
            raise ValueError("fraud_share must be in [0, 1]")
        self.spec = spec
        self.start = int(spec.start_ts)
        self.end = self.start + int(round(spec.hours * HOUR_MS))
        self.span = self.end - self.start
        rng = np.random.default_rng([spec.seed & 0xFFFFFFFF, 0x5EED, 0])
        self.salt = int(rng.integers(1, 2 ** 62))
        self._geography(rng)
        self._population(rng)
        self._habits(rng)
        self._numbers(rng)
        self._handsets_and_cells(rng)
        self._fraud_params(rng)
        self._internal()

    # ---- geography: regions, number blocks, cells

    def _geography(self, rng):
        home = self.spec.home_region
        prov = home.split("-")[0]
        self.home_prov = prov
        regions: list[str] = [home]
        cities = _CITIES.get(prov, {})
        oc = [(f"{prov}-{c}", w) for c, w in cities.items() if f"{prov}-{c}" != home]
        if not oc and "-" in home:
            oc = [(prov, 1.0)]  # unknown province: the rest of it, at province level
        oc_names = [r for r, _ in oc]
        regions += oc_names
        op = [(p, w) for p, w in _PROVINCES.items() if p != prov]
        regions += [p for p, _ in op]
        intl_codes = list(dict.fromkeys(list(_INTL_DIASPORA) + list(_INTL_TRAVEL)
                                        + _PREMIUM_CORE + _PREMIUM_TAIL))
        regions += [f"INTL-{c}" for c in intl_codes]
        self.regions = regions
        ri = {r: i for i, r in enumerate(regions)}
        self.ri = ri
        self.HOME = 0
        self.reg_obj = np.array(regions, dtype=object)
        R = len(regions)
        if oc:
            self.oc_reg = np.array([ri[r] for r in oc_names], dtype=np.int32)
            self.oc_cdf = _cdf([w for _, w in oc])
        else:
            self.oc_reg = np.array([0], dtype=np.int32)
            self.oc_cdf = _cdf([1.0])
        self.op_reg = np.array([ri[p] for p, _ in op], dtype=np.int32)
        self.op_w = np.array([w for _, w in op], dtype=np.float64)
        self.op_cdf = _cdf(self.op_w)
        self.mig_w = self.op_w * np.array([_MIGRANT_SOURCE.get(p, 1.0) for p, _ in op])
        self.it_reg = np.array([ri[f"INTL-{c}"] for c in _INTL_DIASPORA], dtype=np.int32)
        self.it_cdf = _cdf(list(_INTL_DIASPORA.values()))
        self.tr_reg = np.array([ri[f"INTL-{c}"] for c in _INTL_TRAVEL], dtype=np.int32)
        self.tr_cdf = _cdf(list(_INTL_TRAVEL.values()))
        # premium destinations of this seed
        core = rng.choice(_PREMIUM_CORE, size=int(rng.integers(5, 8)), replace=False)
        tail = rng.choice(_PREMIUM_TAIL, size=int(rng.integers(3, 7)), replace=False)
        self.prem_reg = np.array([ri[f"INTL-{c}"] for c in list(core) + list(tail)], dtype=np.int32)

        self.r_intl = np.array([r.startswith("INTL-") for r in regions])
        self.r_icc = np.array([int(r[5:]) if r.startswith("INTL-") else 0 for r in regions],
                              dtype=np.int64)
        self.r_ilen = np.array([(10 if len(r) == 6 else 9 if len(r) == 7 else 8)
                                if r.startswith("INTL-") else 0 for r in regions], dtype=np.int64)

        # number blocks (7-digit: prefix + 4-digit area code); disjoint between regions
        N = self.spec.subscribers
        n_fr = int(round(N * self.spec.fraud_share))
        self.n_sub_blocks = max(4, math.ceil(N / 3000))
        self.n_bulk_blocks = max(1, math.ceil(2 * n_fr / 10000) + 1)
        carrier = (np.array(_CARRIER_PREFIXES, dtype=np.int64)[:, None] * 10000
                   + np.arange(10000, dtype=np.int64)[None, :]).ravel()
        sub_blocks = rng.choice(carrier, self.n_sub_blocks + self.n_bulk_blocks, replace=False)
        self.sub_blocks = sub_blocks[: self.n_sub_blocks]
        self.bulk_blocks = sub_blocks[self.n_sub_blocks:]
        allb = (np.array(_MOBILE_PREFIXES, dtype=np.int64)[:, None] * 10000
                + np.arange(10000, dtype=np.int64)[None, :]).ravel()
        pos = np.searchsorted(allb, sub_blocks)
        keep = np.ones(allb.size, dtype=bool)
        pos = pos[pos < allb.size]
        keep[pos[np.isin(allb[pos], sub_blocks)]] = False
        allb = allb[keep]
        per_region = np.zeros(R, dtype=np.int64)
        for i, r in enumerate(regions):
            if r.startswith("INTL-"):
                continue
            if i == 0:
                per_region[i] = 80
            elif r in oc_names:
                per_region[i] = 25
            else:
                per_region[i] = 12 + _PROVINCES.get(r, 20) // 5
        blocks = rng.choice(allb, int(per_region.sum()), replace=False)
        self.blocks = blocks
        self.r_blen = np.maximum(per_region, 1)
        self.r_boff = np.concatenate([[0], np.cumsum(per_region)[:-1]]).astype(np.int64)

        # cells: contiguous index ranges per region, random 5-digit ids
        ncell = np.zeros(R, dtype=np.int64)
        ncell[0] = max(300, min(30000, N // 30))
        tr_set = {f"INTL-{c}" for c in _INTL_TRAVEL}
        for i, r in enumerate(regions[1:], 1):
            if r in oc_names:
                ncell[i] = 120
            elif not r.startswith("INTL-"):
                ncell[i] = 40
            elif r in tr_set:
                ncell[i] = 15
        self.r_c0 = np.concatenate([[0], np.cumsum(ncell)[:-1]]).astype(np.int64)
        self.r_cn = ncell
        total = int(ncell.sum())
        ids = rng.choice(100000, total, replace=False)
        self.cell_obj = np.array([f"c{i:05d}" for i in ids.tolist()], dtype=object)
        self.cell_reg = np.repeat(np.arange(R, dtype=np.int32), ncell)

    def _cell_in(self, rng, reg: np.ndarray, width: np.ndarray | int = 1) -> np.ndarray:
        """Random start index of `width` consecutive cells inside each region's range."""
        reg = np.asarray(reg)
        n = self.r_cn[reg]
        width = np.minimum(np.asarray(width), n)
        return self.r_c0[reg] + (rng.random(reg.shape) * (n - width + 1)).astype(np.int64)

    # ---- who is who

    def _population(self, rng):
        spec = self.spec
        N = spec.subscribers
        F = min(N, int(round(N * spec.fraud_share)))
        B = N - F
        shares = {k: v["share"] for k, v in PERSONAS.items()}
        shares["typical"] = max(0.0, 1.0 - sum(v for k, v in shares.items() if k != "typical"))
        pc = _allocate(B, shares, minimum=1)
        if pc["family"] % 2:  # dual-SIM families come in pairs
            step = 1 if pc["typical"] > 0 else -1
            pc["family"] += step
            pc["typical"] -= step
        sc = _allocate(F, {k: v["share"] for k, v in SCHEMES.items()}, minimum=1)
        typ = np.concatenate([np.full(pc[k], _P[k], dtype=np.int16) for k in _PERSONA_NAMES]
                             + [np.full(sc[k], len(_PERSONA_NAMES) + _S[k], dtype=np.int16)
                                for k in _SCHEME_NAMES])
        # personas at random subscriber positions (family pairs: consecutive family indices)
        perm = rng.permutation(N)
        self.typ = np.empty(N, dtype=np.int16)
        self.typ[perm] = typ
        self.N, self.F = N, F
        self.is_fr = self.typ >= len(_PERSONA_NAMES)
        # behaviour persona (the legitimate habits a line shows when not defrauding)
        bp = self.typ.astype(np.int16).copy()
        self.fresh = np.zeros(N, dtype=bool)
        self.warm = np.zeros(N, dtype=bool)
        self.onset = np.full(N, NEVER, dtype=np.int64)
        self.f_end_sub = np.full(N, NEVER, dtype=np.int64)
        self.bw0 = np.full(N, self.start, dtype=np.int64)
        self.bw1 = np.full(N, self.end, dtype=np.int64)
        self.activated = np.zeros(N, dtype=np.int64)
        self.owner_keeps = np.zeros(N, dtype=bool)

        # fraud groups, per scheme, in order of subscriber index
        groups = []  # (scheme, members array)
        for s in _SCHEME_NAMES:
            members = np.flatnonzero(self.typ == len(_PERSONA_NAMES) + _S[s])
            members = members[rng.permutation(members.size)]
            lo, hi = SCHEMES[s]["group"]
            i = 0
            while i < members.size:
                size = int(rng.integers(lo, hi + 1))
                groups.append((s, np.sort(members[i:i + size])))
                i += size
        self.groups = groups
        span = self.span
        for s, mem in groups:
            cfg = SCHEMES[s]
            base = self.start + int(span * rng.uniform(0.03, 0.75))
            stagger = {"scam": 0.4, "simbox": 2.0, "wangiri": 1.0, "rented": 8.0,
                       "smishing": 1.0, "irsf": 0.0}[s] * HOUR_MS
            on = base + (rng.exponential(1.0, mem.size) * stagger).astype(np.int64)
            on = np.clip(on, self.start, self.start + int(span * 0.9))
            self.onset[mem] = on
            life = {"scam": (36, .5), "wangiri": (30, .5), "smishing": (40, .6)}.get(s)
            if life:
                ln = rng.lognormal(math.log(life[0] * HOUR_MS), life[1], mem.size).astype(np.int64)
                self.f_end_sub[mem] = np.minimum(on + np.maximum(ln, 2 * HOUR_MS), self.end)
            else:
                self.f_end_sub[mem] = self.end
            fresh = rng.random(mem.size) < cfg["fresh"]
            self.fresh[mem] = fresh
            warm = fresh & (rng.random(mem.size) < cfg["warm"])
            self.warm[mem] = warm
            # fresh lines behave like a light user while warming up, else stay silent
            bp[mem[fresh]] = _P["light"]
            est = mem[~fresh]
            if est.size:
                opts = _TAKEOVER_BASE[s]
                names = list(opts)
                pick = rng.choice(len(names), est.size, p=np.array(list(opts.values())) / sum(opts.values()))
                bp[est] = np.array([_P[names[i]] for i in pick], dtype=np.int16)
            pre = {"scam": (HOUR_MS, 15 * DAY_MS), "simbox": (DAY_MS, 40 * DAY_MS),
                   "wangiri": (HOUR_MS, 10 * DAY_MS), "smishing": (HOUR_MS, 20 * DAY_MS)}.get(s, (DAY_MS, DAY_MS))
            act = on - rng.uniform(pre[0], pre[1], mem.size).astype(np.int64)
            self.activated[mem[fresh]] = act[fresh]
            self.bw0[mem[fresh]] = np.maximum(act[fresh], self.start)
            self.bw1[mem] = on
            self.bw1[mem[fresh & ~warm]] = self.bw0[mem[fresh & ~warm]]  # silent before onset
            if s == "irsf":
                keeps = rng.random(mem.size) < 0.4
                self.owner_keeps[mem] = keeps
                self.bw1[mem[keeps]] = self.end
        self.bp = bp

    # ---- legitimate habits

    def _habits(self, rng):
        N = self.N
        bp = self.bp
        names = _PERSONA_NAMES
        tab = lambda key, j=None: np.array([PERSONAS[n][key] if j is None else PERSONAS[n][key][j]
                                            for n in names], dtype=np.float64)[bp]
        sig = tab("sig")
        mult = np.exp(sig * rng.standard_normal(N) - sig * sig / 2)
        vmo, vmt, sms = tab("day", 0), tab("day", 1), tab("day", 2)
        tot = vmo + vmt + sms
        fam = self.typ == _P["family"]
        fam_idx = np.flatnonzero(fam)
        self.fam_a, self.fam_b = fam_idx[0::2], fam_idx[1::2]
        mult[self.fam_b] *= 0.5
        self.rate_h = tot * mult / 24.0
        self.ch1 = (vmo / tot).astype(np.float32)
        self.ch2 = ((vmo + vmt) / tot).astype(np.float32)
        self.book = np.maximum(3, np.round(tab("book") * np.exp(0.5 * rng.standard_normal(N)))).astype(np.int64)
        self.book[self.fresh] = rng.integers(3, 8, int(self.fresh.sum()))
        self.zipf = tab("zipf")
        self.pnew_mo, self.pnew_mt = tab("new", 0), tab("new", 1)
        self.p_int = tab("internal")
        self.p_int[self.fresh] = 0.0
        self.ans_mo, self.ans_mt = tab("ans", 0), tab("ans", 1)
        self.dmed = tab("dur", 0) * np.exp(0.3 * rng.standard_normal(N))
        self.dsig = tab("dur", 1)
        self.omult = tab("omult")
        self.cb, self.cb_ans = tab("cb", 0), tab("cb", 1)
        self.p_away = tab("away")
        self.dprof = np.array([_DIURNAL_NAMES.index(PERSONAS[n]["diurnal"]) for n in names],
                              dtype=np.int16)[bp]
        self.mob = np.array([_MOB_NAMES.index(PERSONAS[n]["mob"]) for n in names], dtype=np.int8)[bp]
        self.diur_tab = np.array([np.array(v[0]) / np.mean(v[0]) for v in _DIURNAL.values()])
        self.wkend_tab = np.array([v[1] for v in _DIURNAL.values()])
        mt = np.array(list(_MOBILITY.values()))  # (mob, phase, 2)
        self.mob_home = mt[:, :, 0]
        self.mob_work = mt[:, :, 1]

        # peer mixes: one row per persona (contacts / new numbers), more rows for fraud groups
        rows = []
        for n in names:
            rows.append(PERSONAS[n]["con"])
            rows.append(PERSONAS[n]["fresh"])
        self.pm_rows = rows
        self.pm_con = (2 * bp).astype(np.int32)
        self.pm_new = (2 * bp + 1).astype(np.int32)
        # telesales campaigns range from local to national
        ts_sub = np.flatnonzero(bp == _P["telesales"])
        campaigns = [(.60, .25, .15, 0, 0), (.35, .25, .40, 0, 0), (.15, .10, .75, 0, 0)]
        self.pm_new[ts_sub] = len(rows) + rng.choice(len(campaigns), ts_sub.size, p=[.35, .35, .3])
        rows.extend(campaigns)

        # origin province (where family and old friends are)
        origin_w = np.where(bp == _P["migrant"], 1, 0)
        o_plain = rng.choice(self.op_reg.size, N, p=self.op_w / self.op_w.sum())
        o_mig = rng.choice(self.op_reg.size, N, p=self.mig_w / self.mig_w.sum())
        self.origin = self.op_reg[np.where(origin_w == 1, o_mig, o_plain)]

        # target provinces (telesales now, fraud groups later)
        self.tgt_off = np.zeros(N, dtype=np.int64)
        self.tgt_len = np.zeros(N, dtype=np.int64)
        self._tgt_req: list[tuple[np.ndarray, int]] = []
        for i in np.flatnonzero(bp == _P["telesales"]):
            self._tgt_req.append((np.array([i]), int(rng.integers(3, 7))))

        # notifier batches
        nt = np.flatnonzero((self.typ == _P["notifier"]))
        self.nt_sub = nt
        self.nt_rate = rng.uniform(1.0, 3.0, nt.size) / 24.0
        self.nt_size = np.stack([rng.integers(15, 30, nt.size), rng.integers(40, 90, nt.size)], 1)
        self.book[nt] = rng.integers(150, 600, nt.size)

        # when newline subscribers got their line
        nl = np.flatnonzero(self.typ == _P["newline"])
        during = rng.random(nl.size) < 0.35
        act = np.where(during, self.start + (rng.uniform(0, 0.6, nl.size) * self.span).astype(np.int64),
                       self.start - rng.uniform(0.5, 30, nl.size) * DAY_MS).astype(np.int64)
        self.activated[nl] = act
        self.bw0[nl] = np.maximum(act, self.start)

    def _set_targets(self, rng):
        """Resolve the requests for target-province sets: population-weighted draws without
        replacement (exponential keys), all at once."""
        req = self._tgt_req
        if not req:
            self.tgt = np.zeros(1, dtype=np.int32)
            return
        P = self.op_reg.size
        k = np.minimum(np.array([r[1] for r in req], dtype=np.int64), P)
        keys = rng.exponential(1.0, (len(req), P)) / self.op_w[None, :]
        order = np.argsort(keys, axis=1)
        take = np.arange(P)[None, :] < k[:, None]
        self.tgt = self.op_reg[order[take]]  # row-major: each set contiguous
        off = np.cumsum(k) - k
        for (subs, _), o, n in zip(req, off.tolist(), k.tolist()):
            self.tgt_off[subs] = o
            self.tgt_len[subs] = n

    # ---- numbers and profiles

    def _numbers(self, rng):
        N = self.N
        cap = self.n_sub_blocks * 10000
        pos = rng.choice(cap, N, replace=False)
        msisdn = self.sub_blocks[pos // 10000] * 10000 + pos % 10000
        # bulk-bought SIMs (SIM boxes, half of the scam groups): near-consecutive numbers
        cursor = 0
        for s, mem in self.groups:
            if s == "simbox" or (s == "scam" and rng.random() < 0.5):
                cursor += int(rng.integers(1, 60))
                steps = 1 + (rng.random(mem.size) < 0.2).astype(np.int64)
                nums = cursor + np.cumsum(steps) - steps[0]
                cursor = int(nums[-1]) + 1
                if cursor >= self.n_bulk_blocks * 10000:
                    break
                msisdn[mem] = self.bulk_blocks[nums // 10000] * 10000 + nums % 10000
        self.msisdn_int = msisdn.astype(np.int64)
        self.msisdn_obj = np.array(list(map(str, self.msisdn_int.tolist())), dtype=object)

        # profiles: activation, plan, segment, verification
        bp = self.bp
        names = _PERSONA_NAMES
        tab = lambda key: np.array([PERSONAS[n][key] for n in names], dtype=np.float64)[bp]
        ten = tab("tenure")
        years = ten * np.exp(0.6 * rng.standard_normal(N))
        years = np.clip(years, 30 / 365, 25)
        act = self.start - (years * 365.25 * DAY_MS).astype(np.int64) \
            - rng.integers(0, DAY_MS, N)
        set_already = (self.typ == _P["newline"]) | self.fresh
        self.activated = np.where(set_already, self.activated, act)
        self.postpaid = rng.random(N) < tab("postpaid")
        self.business = rng.random(N) < tab("business")
        self.verified = rng.random(N) < tab("verified")
        f = self.fresh
        sch = np.where(self.is_fr, self.typ - len(_PERSONA_NAMES), -1)
        for s, pre, ver in (("scam", .95, .55), ("simbox", 1.0, .35), ("wangiri", .9, .5),
                            ("smishing", .9, .6)):
            m = f & (sch == _S[s])
            self.postpaid[m] = rng.random(int(m.sum())) >= pre
            self.verified[m] = rng.random(int(m.sum())) < ver
            self.business[m] = False

    # ---- handsets and cells

    def _handsets_and_cells(self, rng):
        N = self.N
        # IMEI bodies: TAC (8 digits) + serial (6 digits)
        n_tac = 260
        tacs = np.where(rng.random(n_tac) < 0.7, 86_000_000, 35_000_000) + rng.integers(0, 1_000_000, n_tac)
        tac_p = 1.0 / np.arange(1, n_tac + 1) ** 0.9
        tac_p /= tac_p.sum()
        bodies: list[np.ndarray] = []
        self._n_imei = 0

        def alloc_random(n):
            b = tacs[rng.choice(n_tac, n, p=tac_p)] * 1_000_000 + rng.integers(0, 1_000_000, n)
            bodies.append(b)
            i0 = self._n_imei
            self._n_imei += n
            return np.arange(i0, i0 + n, dtype=np.int64)

        def alloc_consecutive(n):
            tac = tacs[int(rng.integers(n_tac // 2, n_tac))]
            s0 = int(rng.integers(0, 1_000_000 - n - 1))
            bodies.append(tac * 1_000_000 + s0 + np.arange(n, dtype=np.int64))
            i0 = self._n_imei
            self._n_imei += n
            return i0

        self.imei1 = alloc_random(N)
        self.imei1[self.fam_b] = self.imei1[self.fam_a]
        # some people buy a new phone during the run
        sw = (~self.is_fr) & (rng.random(N) < 0.012 * self.span / (72 * HOUR_MS))
        sw[self.fam_a] = sw[self.fam_b] = False
        self.imei2 = self.imei1.copy()
        self.sw_ts = np.full(N, NEVER, dtype=np.int64)
        ns = int(sw.sum())
        self.imei2[sw] = alloc_random(ns)
        self.sw_ts[sw] = self.start + (rng.random(ns) * self.span).astype(np.int64)

        # cells: home anywhere in the home city, work biased to the business districts
        H = 0
        n_home = int(self.r_cn[H])
        self.home_c = self.r_c0[H] + (rng.random(N) * n_home).astype(np.int64)
        self.work_c = self.r_c0[H] + (n_home * rng.random(N) ** 2.5).astype(np.int64)
        roam = self.mob == _MOB_NAMES.index("roam")
        pool_n = np.where(roam, rng.integers(15, 36, N), rng.integers(2, 7, N))
        pool_n = np.minimum(pool_n, n_home)
        self.pool_n = pool_n
        self.pool_c0 = self.r_c0[H] + (rng.random(N) * (n_home - pool_n + 1)).astype(np.int64)
        oc = self.oc_reg[rng.choice(self.oc_reg.size, N, p=np.diff(np.concatenate([[0], self.oc_cdf])))]
        self.away_n = np.minimum(rng.integers(1, 4, N), self.r_cn[oc])
        self.away_c0 = self._cell_in(rng, oc, self.away_n)
        self.away_n = np.maximum(self.away_n, 1)
        # trips of travellers
        self.trip_s = np.zeros(N, dtype=np.int64)
        self.trip_e = np.zeros(N, dtype=np.int64)
        self.trip_c0 = np.zeros(N, dtype=np.int64)
        self.trip_n = np.ones(N, dtype=np.int64)
        self.trip_reg = np.zeros(N, dtype=np.int32)
        self.trip_abroad = np.zeros(N, dtype=bool)
        tv = np.flatnonzero(self.typ == _P["traveller"])
        if tv.size:
            ts = self.start + (rng.uniform(-0.3, 0.6, tv.size) * self.span).astype(np.int64)
            te = ts + (rng.uniform(0.3, 1.0, tv.size) * self.span).astype(np.int64)
            abroad = rng.random(tv.size) < 0.7
            reg = np.where(abroad, self.tr_reg[np.searchsorted(self.tr_cdf, rng.random(tv.size), side="right")],
                           self.op_reg[rng.choice(self.op_reg.size, tv.size, p=self.op_w / self.op_w.sum())])
            self.trip_s[tv], self.trip_e[tv] = ts, te
            self.trip_abroad[tv] = abroad
            self.trip_reg[tv] = reg
            n = np.minimum(rng.integers(3, 7, tv.size), self.r_cn[reg])
            self.trip_n[tv] = n
            self.trip_c0[tv] = self._cell_in(rng, reg, n)
        self.traveller = tv
        # family pairs share the handset, so they share its cells too
        for a in ("home_c", "work_c", "pool_c0", "pool_n", "away_c0", "away_n", "mob"):
            arr = getattr(self, a)
            arr[self.fam_b] = arr[self.fam_a]
        self.p_away[self.fam_b] = self.p_away[self.fam_a]

        # fraud devices and locations
        self.f_cell = np.full(N, -1, dtype=np.int64)
        self.f_alt = np.zeros(N, dtype=np.float32)
        self.f_i0 = np.full(N, -1, dtype=np.int64)
        self.f_in = np.ones(N, dtype=np.int64)
        self.f_slot = np.zeros(N, dtype=np.int64)
        self.f_rot = np.zeros(N, dtype=np.int64)

        def cell_of(reg):
            c = self._cell_in(rng, np.array([reg]), 2)[0]
            return int(c)

        for s, mem in self.groups:
            k = mem.size
            if s == "scam":
                reg = 0 if rng.random() < 0.7 else int(self.oc_reg[rng.integers(self.oc_reg.size)])
                self.f_cell[mem] = cell_of(reg)
                self.f_alt[mem] = 0.05
                ndev = max(1, int(round(k / rng.uniform(1.5, 3.0))))
                self.f_i0[mem] = alloc_consecutive(ndev) if rng.random() < 0.5 else alloc_random(ndev)[0]
                self.f_in[mem] = ndev
                self.f_slot[mem] = rng.permutation(k)
                if rng.random() < 0.3:
                    self.f_rot[mem] = int(rng.uniform(6, 12) * HOUR_MS)
            elif s == "simbox":
                self.f_cell[mem] = cell_of(0)
                ndev = int(rng.integers(1, 5))
                self.f_i0[mem] = alloc_consecutive(ndev)
                self.f_in[mem] = ndev
                self.f_slot[mem] = np.arange(k)
                if rng.random() < 0.6:
                    self.f_rot[mem] = int(rng.uniform(2, 8) * HOUR_MS)
            elif s in ("wangiri", "smishing"):
                self.f_cell[mem] = cell_of(0)
                self.f_alt[mem] = 0.02
                ndev = 1 if s == "wangiri" else int(rng.integers(1, 3))
                self.f_i0[mem] = alloc_random(ndev)[0]
                self.f_in[mem] = ndev
                self.f_slot[mem] = np.arange(k)
            elif s == "rented":
                if rng.random() < 0.5:
                    reg = int(self.op_reg[rng.choice(self.op_reg.size, p=self.op_w / self.op_w.sum())])
                else:
                    reg = int(self.oc_reg[rng.integers(self.oc_reg.size)])
                self.f_cell[mem] = cell_of(reg)
                self.f_alt[mem] = 0.1
                ndev = int(rng.integers(1, 3))
                self.f_i0[mem] = alloc_random(ndev)[0]
                self.f_in[mem] = ndev
                self.f_slot[mem] = np.arange(k)
            elif s == "irsf":
                for i in mem:
                    if rng.random() < 0.5:
                        self.f_cell[i] = cell_of(0)
                    if rng.random() < 0.5:
                        self.f_i0[i] = alloc_random(1)[0]
            # fresh lines are set up on the fraud devices, at the fraud location
            fr = mem[self.fresh[mem]]
            if fr.size:
                dev = self.f_i0[fr] + self.f_slot[fr] % self.f_in[fr]
                self.imei1[fr] = self.imei2[fr] = dev
                if self.f_cell[fr[0]] >= 0:
                    self.home_c[fr] = self.work_c[fr] = self.pool_c0[fr] = self.f_cell[fr]
                    self.pool_n[fr] = 1
                    self.p_away[fr] = 0.0

        body = np.concatenate(bodies) if bodies else np.zeros(0, dtype=np.int64)
        # make IMEIs unique (random serials of one model may collide)
        for _ in range(20):
            _, first = np.unique(body, return_index=True)
            dup = np.ones(body.size, dtype=bool)
            dup[first] = False
            if not dup.any():
                break
            body[dup] = (body[dup] // 1_000_000) * 1_000_000 + rng.integers(0, 1_000_000, int(dup.sum()))
        self.imei_obj = np.array(_luhn_strings(body), dtype=object)

    # ---- fraud behaviour parameters (one row per fraud line)

    def _fraud_params(self, rng):
        per_group = ("sc", "rate", "prof", "ans", "dmed", "dsig", "pm", "sms", "vict", "cb",
                     "follow", "bmin", "bmax", "gap", "seq", "period", "duty", "g0", "gn")
        rows: dict[str, list] = {k: [] for k in per_group}
        F_idx = 0
        for s, mem in self.groups:
            k = mem.size
            g0 = F_idx
            F_idx += k
            par = dict(rate=0.0, prof="scam_day", ans=0.5, dmed=60.0, dsig=1.0, pm=(.1, .1, .78, 0, .02),
                       sms=0.0, vict=0.0, cb=0.0, follow=0.0, bmin=0, bmax=0, gap=0.0, seq=0.0,
                       period=0, duty=0)
            if s == "scam":
                slow = rng.random() < 0.25
                par.update(rate=rng.uniform(1.5, 4) if slow else rng.uniform(5, 15),
                           prof="scam_day" if rng.random() < 0.8 else "scam_late",
                           ans=rng.uniform(.28, .55), dmed=rng.uniform(35, 70), dsig=1.2,
                           pm=(rng.uniform(.04, .15), rng.uniform(.04, .12), .8, 0, rng.uniform(0, .03)),
                           sms=rng.uniform(0, .08), vict=.03, cb=.015, follow=.06)
                self._tgt_req.append((mem, int(rng.integers(6, 26))))
            elif s == "rented":
                par.update(rate=rng.uniform(4, 15), prof="scam_day", ans=rng.uniform(.35, .6),
                           dmed=rng.uniform(40, 90), dsig=1.1,
                           pm=(rng.uniform(.08, .2), rng.uniform(.05, .12), .72, 0, .02),
                           sms=rng.uniform(0, .1), vict=.03, cb=.03, follow=.05)
                self._tgt_req.append((mem, int(rng.integers(5, 16))))
            elif s == "simbox":
                par.update(rate=rng.uniform(4, 12), prof="simbox", ans=rng.uniform(.62, .85),
                           dmed=rng.uniform(90, 200), dsig=.9,
                           pm=(rng.uniform(.5, .7), rng.uniform(.15, .3), .13, 0, 0), vict=.04,
                           period=int(rng.integers(6, 25)), duty=rng.uniform(.4, .8))
            elif s == "irsf":
                par.update(rate=rng.uniform(0.8, 3), prof="irsf", ans=rng.uniform(.8, .95),
                           dmed=rng.uniform(600, 1500), dsig=.7)
            elif s == "wangiri":
                lo = int(rng.integers(30, 80))
                par.update(rate=rng.uniform(.08, .3), prof="blast", ans=rng.uniform(.02, .07),
                           pm=(rng.uniform(.1, .3), .1, .6, 0, 0),
                           vict=.02, cb=rng.uniform(.005, .025), bmin=lo,
                           bmax=lo + int(rng.integers(40, 170)), gap=rng.uniform(2000, 6000),
                           seq=rng.uniform(.3, .9))
            elif s == "smishing":
                lo = int(rng.integers(30, 100))
                par.update(rate=rng.uniform(.06, .2), prof="blast", ans=rng.uniform(.85, .97),
                           pm=(rng.uniform(.35, .55), .2, .3, 0, 0), vict=.03,
                           cb=rng.uniform(.002, .01), bmin=lo, bmax=lo + int(rng.integers(40, 150)),
                           gap=rng.uniform(500, 3000), seq=rng.uniform(0, .7))
            self.pm_rows.append(tuple(par["pm"]))
            par["pm"] = len(self.pm_rows) - 1
            par["prof"] = _DIURNAL_NAMES.index(par["prof"])
            par["duty"] = int(round(par["period"] * par["duty"])) if par["period"] else 0
            par.update(sc=_S[s], g0=g0, gn=k)
            for key in per_group:
                rows[key].append(par[key])
        # one row per fraud line: the group's parameters, members differing a little
        sizes = np.array([mem.size for _, mem in self.groups], dtype=np.int64)
        f_sub = np.concatenate([mem for _, mem in self.groups]) if self.groups else np.zeros(0, np.int64)
        F = f_sub.size
        ints = {"sc", "prof", "pm", "bmin", "bmax", "period", "duty", "g0", "gn"}
        for key in per_group:
            v = np.array(rows[key], dtype=np.int64 if key in ints else np.float64)
            setattr(self, "f_" + key, np.repeat(v, sizes))
        self.f_sub = f_sub.astype(np.int64)
        self.f_on = self.onset[f_sub]
        self.f_end = self.f_end_sub[f_sub]
        self.f_rate = self.f_rate * np.exp(0.25 * rng.standard_normal(F))
        self.f_phase = (rng.random(F) * np.maximum(self.f_period, 1)).astype(np.int64)
        # IRSF lines: 1-4 premium destinations and a handful of numbers each
        self.f_d0 = np.zeros(F, dtype=np.int64)
        self.f_dn = np.ones(F, dtype=np.int64)
        self.f_nnum = np.ones(F, dtype=np.int64)
        prem_flat: list[int] = []
        for i in np.flatnonzero(self.f_sc == _S["irsf"]).tolist():
            nd = int(rng.integers(1, 5))
            self.f_d0[i] = len(prem_flat)
            self.f_dn[i] = nd
            prem_flat.extend(rng.choice(self.prem_reg, nd, replace=False).tolist())
            self.f_nnum[i] = int(rng.integers(3, 16))
        self.f_burst = np.isin(self.f_sc, [_S[s] for s in _BURST_SCHEMES])
        self.prem_flat = np.array(prem_flat or [0], dtype=np.int32)
        self.pm_cdf = np.array([_cdf(np.asarray(r) + 1e-12) for r in self.pm_rows])
        self._set_targets(rng)
        self.f_pos = np.full(self.N, -1, dtype=np.int64)
        self.f_pos[self.f_sub] = np.arange(self.f_sub.size)

    def _internal(self):
        ok = np.isin(self.typ, [_P[k] for k in _INTERNAL_OK])
        self.elig = np.flatnonzero(ok).astype(np.int64)

    # ---- peers

    def resolve(self, h: np.ndarray, pm: np.ndarray, sub: np.ndarray, internal: np.ndarray | None):
        """Peer of each event from a 64-bit hash: (peer region, peer number, peer subscriber or -1,
        category). The same hash for the same subscriber always gives the same peer."""
        E = h.size
        h = (h.astype(_U64) >> _U64(1)).astype(np.int64)
        u1 = (h & _M24) / 16777216.0
        u2 = ((h >> 24) & _M24) / 16777216.0
        g = _h63(h.astype(_U64) ^ _U64(self.salt))
        cdf = self.pm_cdf[pm]
        cat = (u1[:, None] >= cdf[:, :4]).sum(axis=1)
        reg = np.zeros(E, dtype=np.int32)
        m = cat == 1
        if m.any():
            reg[m] = self.oc_reg[np.searchsorted(self.oc_cdf, u2[m], side="right")]
        m = cat == 2
        if m.any():
            s = sub[m]
            r = self.op_reg[np.searchsorted(self.op_cdf, u2[m], side="right")]
            tl = self.tgt_len[s]
            has = tl > 0
            if has.any():
                r[has] = self.tgt[self.tgt_off[s[has]] + (u2[m][has] * tl[has]).astype(np.int64)]
            reg[m] = r
        m = cat == 3
        if m.any():
            reg[m] = self.origin[sub[m]]
        m = cat == 4
        if m.any():
            reg[m] = self.it_reg[np.searchsorted(self.it_cdf, u2[m], side="right")]
        peer = self.number(g, reg)
        psub = np.full(E, -1, dtype=np.int64)
        if internal is not None and self.elig.size:
            m = internal & (cat == 0) & (((g >> 40) % 10000) < self.p_int[sub] * 10000)
            if m.any():
                idx = np.flatnonzero(m)
                ps = self.elig[(g[idx] >> 4) % self.elig.size]
                ok = ps != sub[idx]
                idx, ps = idx[ok], ps[ok]
                psub[idx] = ps
                peer[idx] = self.msisdn_int[ps]
        return reg, peer, psub, cat

    def number(self, g: np.ndarray, reg: np.ndarray) -> np.ndarray:
        """A number of region `reg` chosen by the non-negative hash `g`."""
        peer = np.empty(g.size, dtype=np.int64)
        intl = self.r_intl[reg]
        dom = ~intl
        if dom.any():
            r = reg[dom]
            gd = g[dom]
            bl = self.r_boff[r] + gd % self.r_blen[r]
            peer[dom] = self.blocks[bl] * 10000 + (gd >> 24) % 10000
        if intl.any():
            r = reg[intl]
            p10 = 10 ** self.r_ilen[r]
            nat = p10 // 10 + (g[intl] >> 8) % (p10 - p10 // 10)
            peer[intl] = self.r_icc[r] * p10 + nat
        return peer

    # ---- where and on what handset

    def cells(self, sub, ts, fr):
        key = (sub.astype(_U64) << _U64(32)) ^ (ts // SLOT_MS).astype(_U64) ^ _U64(self.salt)
        h = _h63(key)
        u = (h & _M24) / 16777216.0
        u2 = ((h >> 24) & _M24) / 16777216.0
        u3 = ((h >> 48) & 0x7FFF) / 32768.0
        lh = ((ts + TZ_MS) // HOUR_MS) % 24
        mob = self.mob[sub]
        home_phase = np.where(mob == _MOB_NAMES.index("night"), (lh >= 9) & (lh < 18),
                              (lh < 7) | (lh >= 22))
        ph = np.where(home_phase, 0, 1)
        p_home = self.mob_home[mob, ph]
        p_work = self.mob_work[mob, ph]
        cell = self.pool_c0[sub] + (u2 * self.pool_n[sub]).astype(np.int64)
        cell = np.where(u < p_home + p_work, self.work_c[sub], cell)
        cell = np.where(u < p_home, self.home_c[sub], cell)
        away = (~home_phase) & (u3 < self.p_away[sub])
        cell = np.where(away, self.away_c0[sub] + (u2 * self.away_n[sub]).astype(np.int64), cell)
        if self.traveller.size:
            trip = (ts >= self.trip_s[sub]) & (ts < self.trip_e[sub])
            cell = np.where(trip, self.trip_c0[sub] + (u2 * self.trip_n[sub]).astype(np.int64), cell)
        if fr.any():
            fc = self.f_cell[sub]
            fm = fr & (fc >= 0)
            cell = np.where(fm, fc + (fm & (u3 < self.f_alt[sub])), cell)
        return cell

    def imeis(self, sub, ts, fr):
        im = np.where(ts >= self.sw_ts[sub], self.imei2[sub], self.imei1[sub])
        fm = fr & (self.f_i0[sub] >= 0)
        if fm.any():
            s = sub[fm]
            rot = self.f_rot[s]
            slot = self.f_slot[s] + np.where(rot > 0, ts[fm] // np.maximum(rot, 1), 0)
            im[fm] = self.f_i0[s] + slot % self.f_in[s]
        return im

    # ---- one time slice

    def slice_events(self, k: int, s0: int, s1: int) -> dict:
        spec = self.spec
        rng = np.random.default_rng([spec.seed & 0xFFFFFFFF, 1, k])
        lh = int(((s0 + (s1 - s0) // 2 + TZ_MS) // HOUR_MS) % 24)
        day = (s0 + TZ_MS) // DAY_MS
        weekend = (day + 3) % 7 >= 5
        dm = np.random.default_rng([spec.seed & 0xFFFFFFFF, 2, int(day)]).gamma(4.0, 0.25, self.N)
        evs = [self._benign(rng, s0, s1, lh, weekend, dm)]
        if self.nt_sub.size:
            evs.append(self._notifier(rng, s0, s1, lh, weekend))
        if self.F:
            evs.extend(self._fraud(rng, k, s0, s1, lh, weekend))
        ev = _cat(evs)
        # the other side of calls between two of the carrier's own subscribers
        m = (ev["psub"] >= 0) & ~ev["mir"]
        if m.any():
            src = _take(ev, m)
            tgt = src["psub"]
            mir = dict(src)
            mir["sub"] = tgt
            mir["d"] = (1 - src["d"]).astype(np.int8)
            mir["peer"] = self.msisdn_int[src["sub"]]
            mir["preg"] = np.zeros(tgt.size, dtype=np.int32)
            mir["psub"] = src["sub"]
            mir["fr"] = src["fr"] & self.is_fr[tgt] & (src["ts"] >= self.onset[tgt])
            mir["mir"] = np.ones(tgt.size, dtype=bool)
            ev = _cat([ev, mir])
        return ev

    def _benign(self, rng, s0, s1, lh, weekend, dm) -> dict:
        fac = self.diur_tab[:, lh] * np.where(weekend, self.wkend_tab, 1.0)
        lo = np.maximum(self.bw0, s0)
        hi = np.minimum(self.bw1, s1)
        ov = np.clip(hi - lo, 0, None)
        lam = self.rate_h * fac[self.dprof] * dm * (ov / HOUR_MS)
        tv = self.traveller
        if tv.size:
            mid = (s0 + s1) // 2
            lam[tv] *= np.where((self.trip_s[tv] <= mid) & (mid < self.trip_e[tv]), 0.6, 1.0)
        cnt = rng.poisson(lam)
        nz = np.flatnonzero(cnt)
        sub = np.repeat(nz, cnt[nz])
        E = sub.size
        if E == 0:
            return _ev(0)
        ts = lo[sub] + (rng.random(E) * ov[sub]).astype(np.int64)
        uc = rng.random(E)
        ch = (uc >= self.ch1[sub]).astype(np.int8) + (uc >= self.ch2[sub])
        sms = ch == 2
        d = (ch == 1).astype(np.int8)
        d[sms] = rng.random(int(sms.sum())) < 0.5
        is_new = rng.random(E) < np.where(d == 0, self.pnew_mo[sub], self.pnew_mt[sub])
        j = (self.book[sub] * rng.random(E) ** self.zipf[sub]).astype(np.int64)
        hc = _mix((sub.astype(_U64) << _U64(20)) ^ j.astype(_U64) ^ _U64(self.salt))
        hn = rng.integers(0, 2 ** 64, E, dtype=np.uint64)
        h = np.where(is_new, hn, hc)
        pm = np.where(is_new, self.pm_new[sub], self.pm_con[sub])
        reg, peer, psub, cat = self.resolve(h, pm, sub, ~is_new)
        if self.traveller.size:
            m = (self.trip_abroad[sub] & is_new & (ts >= self.trip_s[sub]) & (ts < self.trip_e[sub])
                 & (rng.random(E) < 0.5))
            if m.any():
                reg[m] = self.trip_reg[sub[m]]
                peer[m] = self.number((h[m] >> _U64(2)).astype(np.int64), reg[m])
        pans = np.where(sms, 0.985, np.where(d == 0, self.ans_mo[sub], self.ans_mt[sub]))
        ans = rng.random(E) < pans
        med = self.dmed[sub] * np.where(cat == 3, self.omult[sub], 1.0)
        dur = np.where(ans & ~sms, _lognormal(rng, med, self.dsig[sub], E), 0)
        base = _ev(E, ts=ts, sub=sub, d=d, svc=sms, peer=peer, preg=reg, psub=psub, dur=dur, ans=ans)
        out = [base]
        # SMS threads: replies back and forth with the same peer
        ti = np.flatnonzero(sms)
        if ti.size:
            extra = rng.geometric(0.5, ti.size) - 1
            ti, extra = ti[extra > 0], extra[extra > 0]
            if ti.size:
                gid, kk, off = _grouped_offsets(rng, extra, np.full(ti.size, 70_000.0), 5_000)
                par = ti[gid]
                n = par.size
                out.append(_ev(n, ts=ts[par] + off + 5_000, sub=sub[par],
                               d=(d[par] + kk + 1) % 2, svc=1, peer=peer[par], preg=reg[par],
                               psub=psub[par], dur=0, ans=rng.random(n) < 0.985))
        # callbacks: a missed call is returned; some answered new contacts call back later
        voice = ~sms
        p_cb = np.where(ans, self.cb_ans[sub] * (d == 0), self.cb[sub] * np.where(is_new, 0.4, 1.0))
        cbm = voice & (rng.random(E) < p_cb)
        if cbm.any():
            i = np.flatnonzero(cbm)
            n = i.size
            delay = np.where(ans[i], rng.exponential(40 * 60_000, n), rng.exponential(6 * 60_000, n)) + 20_000
            a2 = rng.random(n) < 0.85
            s2 = sub[i]
            out.append(_ev(n, ts=ts[i] + delay.astype(np.int64), sub=s2, d=1 - d[i], svc=0,
                           peer=peer[i], preg=reg[i], psub=psub[i],
                           dur=np.where(a2, _lognormal(rng, self.dmed[s2], self.dsig[s2], n), 0), ans=a2))
        return _cat(out)

    def _notifier(self, rng, s0, s1, lh, weekend) -> dict:
        nt = self.nt_sub
        lo = np.maximum(self.bw0[nt], s0)
        hi = np.minimum(self.bw1[nt], s1)
        ov = np.clip(hi - lo, 0, None)
        prof = _DIURNAL_NAMES.index("office")
        lam = self.nt_rate * self.diur_tab[prof, lh] * (self.wkend_tab[prof] if weekend else 1.0) * ov / HOUR_MS
        nb = rng.poisson(lam)
        if not nb.any():
            return _ev(0)
        own = np.repeat(np.arange(nt.size), nb)
        B = own.size
        start = lo[own] + (rng.random(B) * ov[own]).astype(np.int64)
        size = rng.integers(self.nt_size[own, 0], self.nt_size[own, 1] + 1)
        gid, kk, off = _grouped_offsets(rng, size, np.full(B, 2_500.0), 400)
        sub = nt[own][gid]
        j0 = rng.integers(0, 1 << 20, B)
        j = (j0[gid] + kk) % self.book[sub]
        h = _mix((sub.astype(_U64) << _U64(20)) ^ j.astype(_U64) ^ _U64(self.salt))
        reg, peer, psub, _ = self.resolve(h, self.pm_con[sub], sub, np.ones(sub.size, dtype=bool))
        n = sub.size
        ts = start[gid] + off
        base = _ev(n, ts=ts, sub=sub, d=0, svc=1, peer=peer, preg=reg, psub=psub, dur=0,
                   ans=rng.random(n) < 0.97)
        rep = rng.random(n) < 0.02
        i = np.flatnonzero(rep)
        reply = _ev(i.size, ts=ts[i] + (rng.exponential(15 * 60_000, i.size) + 30_000).astype(np.int64),
                    sub=sub[i], d=1, svc=(rng.random(i.size) < 0.6), peer=peer[i], preg=reg[i],
                    psub=psub[i], dur=0, ans=True)
        voice = reply["svc"] == 0
        a = rng.random(i.size) < 0.8
        reply["ans"] = np.where(voice, a, True)
        reply["dur"] = np.where(voice & a, _lognormal(rng, 60.0, 0.8, i.size), 0)
        return _cat([base, reply])

    def _fraud(self, rng, k, s0, s1, lh, weekend) -> list[dict]:
        lo = np.maximum(self.f_on, s0)
        hi = np.minimum(self.f_end, s1)
        ov = np.clip(hi - lo, 0, None)
        if not ov.any():
            return []
        fac = self.diur_tab[self.f_prof, lh] * np.where(weekend, self.wkend_tab[self.f_prof], 1.0)
        duty = np.where(self.f_period > 0,
                        ((k + self.f_phase) % np.maximum(self.f_period, 1)) < self.f_duty, True)
        lam = self.f_rate * fac * (ov / HOUR_MS) * duty
        out = []
        n = rng.poisson(np.where(self.f_burst, 0.0, lam))
        if n.any():
            out.extend(self._fraud_calls(rng, np.repeat(np.arange(n.size), n), lo, ov))
        nb = rng.poisson(np.where(self.f_burst, lam, 0.0))
        if nb.any():
            out.extend(self._fraud_bursts(rng, np.repeat(np.arange(nb.size), nb), lo, ov))
        return out

    def _victims(self, rng, fi, reg, peer, psub):
        if not self.elig.size:
            return
        m = rng.random(fi.size) < self.f_vict[fi]
        if m.any():
            ps = self.elig[rng.integers(0, self.elig.size, int(m.sum()))]
            psub[m] = ps
            peer[m] = self.msisdn_int[ps]
            reg[m] = 0

    def _fraud_calls(self, rng, fi, lo, ov) -> list[dict]:
        E = fi.size
        sub = self.f_sub[fi]
        ts = lo[fi] + (rng.random(E) * ov[fi]).astype(np.int64)
        svc = (rng.random(E) < self.f_sms[fi]).astype(np.int8)
        h = rng.integers(0, 2 ** 64, E, dtype=np.uint64)
        reg, peer, psub, _ = self.resolve(h, self.f_pm[fi], sub, None)
        sc = self.f_sc[fi]
        m = sc == _S["irsf"]
        if m.any():
            f = fi[m]
            j = (self.f_nnum[f] * rng.random(f.size) ** 1.5).astype(np.int64)
            hh = _h63((f.astype(_U64) << _U64(16)) ^ j.astype(_U64) ^ _U64(self.salt ^ 0x1255F))
            dest = self.prem_flat[self.f_d0[f] + hh % self.f_dn[f]]
            reg[m] = dest
            peer[m] = self.number(hh >> 3, dest)
        self._victims(rng, fi, reg, peer, psub)
        # SIM boxes "humanise": a few calls between SIMs of the same box
        m = (sc == _S["simbox"]) & (rng.random(E) < 0.02)
        if m.any():
            idx = np.flatnonzero(m)
            f = fi[idx]
            pf = self.f_g0[f] + rng.integers(0, 1 << 30, f.size) % self.f_gn[f]
            ok = (pf != f) & (self.f_on[pf] <= ts[idx]) & (ts[idx] < self.f_end[pf])
            idx, pf = idx[ok], pf[ok]
            psub[idx] = self.f_sub[pf]
            peer[idx] = self.msisdn_int[self.f_sub[pf]]
            reg[idx] = 0
        ans = rng.random(E) < np.where(svc == 1, 0.93, self.f_ans[fi])
        dur = np.where(ans & (svc == 0), _lognormal(rng, self.f_dmed[fi], self.f_dsig[fi], E), 0)
        out = [_ev(E, ts=ts, sub=sub, d=0, svc=svc, peer=peer, preg=reg, psub=psub, dur=dur, ans=ans, fr=True)]
        voice = svc == 0
        # a few victims call back
        i = np.flatnonzero(voice & (rng.random(E) < self.f_cb[fi]))
        if i.size:
            a = rng.random(i.size) < 0.6
            out.append(_ev(i.size, ts=ts[i] + (rng.exponential(20 * 60_000, i.size) + 120_000).astype(np.int64),
                           sub=sub[i], d=1, svc=0, peer=peer[i], preg=reg[i], psub=psub[i],
                           dur=np.where(a, _lognormal(rng, 40.0, 0.8, i.size), 0), ans=a, fr=True))
        # hooked victims get follow-up calls
        i = np.flatnonzero(voice & ans & (rng.random(E) < self.f_follow[fi]))
        if i.size:
            a = rng.random(i.size) < 0.85
            out.append(_ev(i.size, ts=ts[i] + (rng.exponential(40 * 60_000, i.size) + 300_000).astype(np.int64),
                           sub=sub[i], d=0, svc=0, peer=peer[i], preg=reg[i], psub=psub[i],
                           dur=np.where(a, _lognormal(rng, 400.0, 0.8, i.size), 0), ans=a, fr=True))
        return out

    def _fraud_bursts(self, rng, bf, lo, ov) -> list[dict]:
        B = bf.size
        start = lo[bf] + (rng.random(B) * ov[bf]).astype(np.int64)
        size = rng.integers(self.f_bmin[bf], self.f_bmax[bf] + 1)
        gid, kk, off = _grouped_offsets(rng, size, self.f_gap[bf], 800.0)
        fi = bf[gid]
        ts = start[gid] + off
        keep = ts < self.f_end[fi]
        gid, kk, fi, ts = gid[keep], kk[keep], fi[keep], ts[keep]
        E = fi.size
        if E == 0:
            return []
        sub = self.f_sub[fi]
        # burst target block: sequential dialling through it, or random numbers
        hb = rng.integers(0, 2 ** 64, B, dtype=np.uint64)
        breg, bpeer, _, _ = self.resolve(hb, self.f_pm[bf], self.f_sub[bf], None)
        step = rng.integers(1, 8, B)
        seq = rng.random(B) < self.f_seq[bf]
        h = rng.integers(0, 2 ** 64, E, dtype=np.uint64)
        reg, peer, psub, _ = self.resolve(h, self.f_pm[fi], sub, None)
        sq = seq[gid]
        base = bpeer[gid]
        seqpeer = base - base % 10000 + (base % 10000 + kk * step[gid]) % 10000
        peer = np.where(sq, seqpeer, peer)
        reg = np.where(sq, breg[gid], reg).astype(np.int32)
        self._victims(rng, fi, reg, peer, psub)
        sms = self.f_sc[fi] == _S["smishing"]
        ans = rng.random(E) < self.f_ans[fi]
        dur = np.where(ans & ~sms, rng.integers(1, 5, E), 0)
        out = [_ev(E, ts=ts, sub=sub, d=0, svc=sms, peer=peer, preg=reg, psub=psub, dur=dur, ans=ans, fr=True)]
        # wangiri victims call back (that is the point); smishing targets reply or call
        i = np.flatnonzero(rng.random(E) < self.f_cb[fi] * np.where(sms, 1.0, ~ans))
        if i.size:
            n = i.size
            svc2 = sms[i] & (rng.random(n) < 0.7)
            a = np.where(svc2, True, rng.random(n) < 0.9)
            delay = rng.exponential(25 * 60_000, n) + 60_000
            out.append(_ev(n, ts=ts[i] + delay.astype(np.int64), sub=sub[i], d=1, svc=svc2,
                           peer=peer[i], preg=reg[i], psub=psub[i],
                           dur=np.where(a & ~svc2, _lognormal(rng, 35.0, 0.8, n), 0), ans=a, fr=True))
        return out

    # ---- the stream

    def slices(self) -> Iterator[tuple[list, ...]]:
        """Per time slice: sorted record columns (ts, msisdn, direction, peer, service, duration,
        answered, cell_id, cell_region, peer_region, imei) plus the subscriber index array."""
        carry = _ev(0)
        k = 0
        s0 = self.start
        dir_obj = np.array(["MO", "MT"], dtype=object)
        svc_obj = np.array(["voice", "sms"], dtype=object)
        while s0 < self.end:
            s1 = min(s0 + HOUR_MS, self.end)
            ev = _cat([carry, self.slice_events(k, s0, s1)])
            now = ev["ts"] < s1
            carry = _take(ev, ~now & (ev["ts"] < self.end))
            ev = _take(ev, now)
            order = np.argsort(ev["ts"], kind="stable")
            ev = _take(ev, order)
            sub, ts, fr = ev["sub"], ev["ts"], ev["fr"]
            cell = self.cells(sub, ts, fr)
            imei = self.imeis(sub, ts, fr)
            yield (ts.tolist(), self.msisdn_obj[sub].tolist(), dir_obj[ev["d"]].tolist(),
                   [str(p) for p in ev["peer"].tolist()], svc_obj[ev["svc"]].tolist(),
                   ev["dur"].tolist(), ev["ans"].tolist(), self.cell_obj[cell].tolist(),
                   self.reg_obj[self.cell_reg[cell]].tolist(), self.reg_obj[ev["preg"]].tolist(),
                   self.imei_obj[imei].tolist(), sub)
            s0 = s1
            k += 1

    # ---- outputs

    def profiles(self) -> list[dict]:
        home = self.spec.home_region
        return [{"msisdn": m, "home_region": home, "activated_ts": a,
                 "plan": "postpaid" if p else "prepaid", "segment": "business" if b else "consumer",
                 "id_verified": v}
                for m, a, p, b, v in zip(self.msisdn_obj.tolist(), self.activated.tolist(),
                                         self.postpaid.tolist(), self.business.tolist(),
                                         self.verified.tolist())]

    def labels(self) -> list[dict]:
        out = []
        for m, t, on, f in zip(self.msisdn_obj.tolist(), self.typ.tolist(), self.onset.tolist(),
                               self.is_fr.tolist()):
            out.append({"msisdn": m, "label": "fraud" if f else "benign", "typology": TYPOLOGIES[t],
                        "onset_ts": int(on) if f else None})
        return out


@lru_cache(maxsize=1)
def _world(spec: GeneratorSpec) -> _World:
    return _World(spec)


# --------------------------------------------------------------------------------------------
# Public API


def generate_profiles(spec: GeneratorSpec) -> list[dict]:
    """Subscriber profiles in the contract (one per subscriber, fraud lines included)."""
    return _world(spec).profiles()


def generate_labels(spec: GeneratorSpec) -> list[dict]:
    """`{"msisdn", "label", "typology", "onset_ts"}` per subscriber, in the order of the profiles;
    `onset_ts` is None for benign lines."""
    return _world(spec).labels()


def generate_records(spec: GeneratorSpec) -> Iterator[dict]:
    """CDR records in the contract, sorted by ts, with unique deterministic record ids."""
    w = _world(spec)
    n = 0
    prefix = f"g{spec.seed}-"
    for ts, ms, di, pe, sv, du, an, ce, cr, pr, im, _ in w.slices():
        for t, m, d, p, s, u, a, c, r, q, i in zip(ts, ms, di, pe, sv, du, an, ce, cr, pr, im):
            yield {"record_id": f"{prefix}{n:09d}", "ts": t, "msisdn": m, "direction": d, "peer": p,
                   "service": s, "duration_s": u, "answered": a, "cell_id": c, "cell_region": r,
                   "peer_region": q, "imei": i}
            n += 1


def write_dataset(spec: GeneratorSpec, out_dir: str | os.PathLike) -> dict:
    """Write `cdrs.jsonl.gz` (sorted by ts), `subscribers.jsonl` and `labels.csv` like the labelled
    sample; byte-identical for the same spec. Returns counts."""
    w = _world(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "subscribers.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for p in w.profiles():
            f.write(json.dumps(p, separators=(",", ":")) + "\n")
    labels = w.labels()
    with open(out / "labels.csv", "w", encoding="utf-8", newline="") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(["msisdn", "label", "typology", "onset_ts"])
        for lab in labels:
            wr.writerow([lab["msisdn"], lab["label"], lab["typology"],
                         "" if lab["onset_ts"] is None else lab["onset_ts"]])
    n = 0
    per_typ = np.zeros(len(TYPOLOGIES), dtype=np.int64)
    prefix = f"g{spec.seed}-"
    tf = {True: "true", False: "false"}
    with open(out / "cdrs.jsonl.gz", "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=5, mtime=0) as gz:
        for ts, ms, di, pe, sv, du, an, ce, cr, pr, im, sub in w.slices():
            lines = [
                f'{{"record_id":"{prefix}{n + j:09d}","ts":{t},"msisdn":"{m}","direction":"{d}",'
                f'"peer":"{p}","service":"{s}","duration_s":{u},"answered":{tf[a]},"cell_id":"{c}",'
                f'"cell_region":"{r}","peer_region":"{q}","imei":"{i}"}}\n'
                for j, (t, m, d, p, s, u, a, c, r, q, i)
                in enumerate(zip(ts, ms, di, pe, sv, du, an, ce, cr, pr, im))]
            gz.write("".join(lines).encode("ascii"))
            n += len(lines)
            per_typ += np.bincount(w.typ[sub], minlength=len(TYPOLOGIES))
    return {
        "records": n,
        "subscribers": w.N,
        "fraud_lines": w.F,
        "benign_lines": w.N - w.F,
        "lines_by_typology": {t: int(c) for t, c in zip(TYPOLOGIES, np.bincount(w.typ, minlength=len(TYPOLOGIES)))},
        "records_by_typology": {t: int(c) for t, c in zip(TYPOLOGIES, per_typ)},
        "start_ts": w.start,
        "end_ts": w.end,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m detector.generator OUT_DIR [--subscribers N] [--hours H] [--seed S] ...`"""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    d = GeneratorSpec()
    ap.add_argument("--subscribers", type=int, default=d.subscribers)
    ap.add_argument("--hours", type=float, default=d.hours)
    ap.add_argument("--start-ts", type=int, default=d.start_ts)
    ap.add_argument("--home-region", default=d.home_region)
    ap.add_argument("--fraud-share", type=float, default=d.fraud_share)
    ap.add_argument("--seed", type=int, default=d.seed)
    a = ap.parse_args(argv)
    spec = GeneratorSpec(a.subscribers, a.hours, a.start_ts, a.home_region, a.fraud_share, a.seed)
    print(json.dumps(write_dataset(spec, a.out_dir), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
