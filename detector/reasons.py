"""Reasons a call-centre agent can read to the customer: what drove a decision, and what is typical.

Each reason is `{"code", "value", "typical", "text"}`; `typical` is the value the model has learnt
is ordinary for this carrier's subscribers.
"""
from __future__ import annotations

_TEXT = {
    "calls_last_hour": "The line placed about {v:.0f} calls in the last hour; most lines here stay under {t:.0f}.",
    "new_peer_share": "{v:.0%} of its recent calls went to numbers it had never been in contact with (typical: {t:.0%}).",
    "unanswered_share": "{v:.0%} of its recent calls went unanswered (typical: {t:.0%}).",
    "short_call_share": "{v:.0%} of its recent voice calls were answered and dropped within a few seconds (typical: {t:.0%}).",
    "out_of_province_share": "{v:.0%} of its recent calls went to other provinces (typical: {t:.0%}).",
    "province_spread": "Its recent calls were spread over unusually many provinces ({v:.0%} distinct per call; typical: {t:.0%}).",
    "intl_share": "{v:.0%} of its recent calls were international (typical: {t:.0%}).",
    "premium_calls": "It called premium-rate international destinations about {v:.0f} times in the last day.",
    "intl_minutes": "It talked about {v:.0f} minutes to international numbers in the last day (typical: {t:.0f}).",
    "night_share": "{v:.0%} of its recent calls were made at night (typical: {t:.0%}).",
    "inbound_share": "Only {v:.0%} of its traffic is incoming (typical: {t:.0%}): the people it calls do not call it.",
    "callback_share": "Only {v:.0%} of the numbers it called have ever called it (typical: {t:.0%}).",
    "handset_lines": "Its handset also carried {v:.0f} other line(s) in the last days (typical: {t:.0f}).",
    "cell_bypass_lines": "{v:.0f} other line(s) with outgoing-only traffic are using its cell (typical: {t:.0f}).",
    "handset_change": "The SIM card moved to a different handset recently.",
    "new_line": "The line was opened only {v:.0f} days ago.",
    "prepaid": "It is a prepaid line.",
    "unverified": "The line's real-name registration is not complete.",
    "business_account": "It is a verified business account.",
    "long_tenure": "It has been a customer for years.",
}

_RESTORE_TEXT = {
    "cleared": "The line was verified as legitimate, so the suspension is lifted (risk at suspension {v:.2f}).",
    "risk_normal": "The line's calling has looked normal for {h:.0f} hours (risk {v:.2f}, below {t:.2f}), so it is restored automatically.",
}


def describe(code: str, raw: dict, typical: dict) -> dict:
    value = raw.get("tenure_days") if code == "new_line" else raw[code]
    value = 0.0 if value is None else float(value)
    t = float(typical.get(code, 0.0))
    return {"code": code, "value": round(value, 3), "typical": round(t, 3),
            "text": _TEXT[code].format(v=value, t=t)}


def restore_reason(code: str, value: float, typical: float, hours: float = 0.0) -> dict:
    return {"code": code, "value": round(value, 3), "typical": round(typical, 3),
            "text": _RESTORE_TEXT[code].format(v=value, t=typical, h=hours)}
