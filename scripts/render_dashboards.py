#!/usr/bin/env python3
"""Render the Grafana dashboards of deploy/grafana/dashboards/ to PNG "screenshots" from a live Prometheus.

Grafana cannot run here, so this draws what it would show: every panel at its gridPos place in the
24-column grid, its targets queried from Prometheus (`/api/v1/query_range` over the last N minutes,
variables filled in as scripts/check_dashboards.py does), time series as lines, stat panels as big
numbers with a sparkline, bar gauges as bars, heatmaps of histogram buckets as heatmaps, units
formatted as Grafana's fieldConfig says, annotation queries as red bands. It is a faithful picture of
the data and layout, not of Grafana's exact styling.

    scripts/render_dashboards.py [--prometheus URL] [--minutes N] [--out-dir DIR] [--only NAME ...]

Writes DIR/dashboard-<name>.png (e.g. docs/dashboard-overview.png) for each dashboard <name>.json.
Exit status: 0 when every PNG was written, 2 when Prometheus cannot be reached.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _check_dashboards():
    spec = importlib.util.spec_from_file_location("check_dashboards", HERE / "check_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


cd = _check_dashboards()

# Grafana's dark theme, roughly.
BG = "#111217"
PANEL_BG = "#181b1f"
BORDER = "#2c3235"
TEXT = "#d8d9da"
MUTED = "#8e8e8e"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0",
           "#37872d", "#fade2a", "#447ebc", "#c15c17", "#890f02", "#0a437c", "#6d1f62", "#584477"]
NAMED = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a", "blue": "#5794f2",
         "dark-orange": "#fa6400", "dark-red": "#c4162a", "purple": "#b877d9", "text": TEXT}


# -- Prometheus -----------------------------------------------------------------------------------
class PromError(RuntimeError):
    pass


def _get(prom: str, path: str, params: dict) -> dict:
    url = f"{prom.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as err:  # 400/422: a bad query, with a JSON error body
        try:
            body = json.load(err)
        except ValueError:
            raise PromError(f"HTTP {err.code} for {url}") from None
    if body.get("status") != "success":
        raise PromError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]


def query_range(prom: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    """[{"metric": labels, "t": [...], "v": [...]}], NaN for missing points inside the range."""
    data = _get(prom, "/api/v1/query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                              "step": f"{step:g}"})
    out = []
    for s in data["result"]:
        pts = [(float(t), float(v)) for t, v in s["values"]]
        out.append({"metric": s["metric"], "t": [p[0] for p in pts], "v": [p[1] for p in pts]})
    return out


def query_instant(prom: str, expr: str, at: float) -> list[dict]:
    data = _get(prom, "/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": float(data["result"][1])}]
    return [{"metric": s["metric"], "value": float(s["value"][1])} for s in data["result"]]


# -- formatting -------------------------------------------------------------------------------------
def legend(fmt: str | None, labels: dict) -> str:
    if fmt and fmt != "__auto":
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or "value"
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    name = labels.get("__name__", "")
    return name + ("{" + ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items())) + "}" if shown else "") or "value"


def _si(v: float, suffix: str = "") -> str:
    a = abs(v)
    for div, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{p}{suffix}"
    if a == 0:
        return f"0{suffix}"
    return f"{v:.3g}{suffix}"


def fmt_value(v: float | None, unit: str | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "No data"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    unit = unit or "short"
    if unit == "percentunit":
        return f"{v * 100:.3g}%"
    if unit == "percent":
        return f"{v:.3g}%"
    if unit == "s":
        a = abs(v)
        if a == 0:
            return "0 s"
        if a < 1e-3:
            return f"{v * 1e6:.3g} µs"
        if a < 1:
            return f"{v * 1e3:.3g} ms"
        if a < 120:
            return f"{v:.3g} s"
        if a < 7200:
            return f"{v / 60:.3g} min"
        if a < 172800:
            return f"{v / 3600:.3g} hour"
        return f"{v / 86400:.3g} day"
    if unit in ("cps", "ops", "reqps"):
        return _si(v, "/s" if unit == "cps" else " ops/s")
    if unit == "none":
        return f"{v:.3g}"
    return _si(v)


def threshold_colour(v: float | None, field: dict, default: str = "#73bf69") -> str:
    steps = ((field.get("thresholds") or {}).get("steps")) or []
    colour = default
    if v is None or math.isnan(v):
        return MUTED
    for st in steps:
        if st.get("value") is None or v >= st["value"]:
            colour = st.get("color", colour)
    return NAMED.get(colour, colour)


# -- drawing --------------------------------------------------------------------------------------
def _style(ax, title: str) -> None:
    ax.set_facecolor(PANEL_BG)
    for s in ax.spines.values():
        s.set_color(BORDER)
    ax.tick_params(colors=MUTED, labelsize=7)
    ax.set_title(title, color=TEXT, fontsize=9, loc="left", pad=4, fontweight="bold")


def _time_axis(ax, start: float, end: float) -> None:
    import matplotlib.dates as mdates

    ax.set_xlim(datetime.fromtimestamp(start, timezone.utc), datetime.fromtimestamp(end, timezone.utc))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=timezone.utc))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=6))
    ax.grid(color=BORDER, lw=0.5)


def _dt(ts: list[float]):
    return [datetime.fromtimestamp(t, timezone.utc) for t in ts]


def _bands(ax, bands: list[tuple[float, float]]) -> None:
    for a, b in bands:
        ax.axvspan(datetime.fromtimestamp(a, timezone.utc), datetime.fromtimestamp(b, timezone.utc),
                   color="#f2495c", alpha=0.25, lw=0)


def draw_timeseries(ax, panel: dict, series: list[tuple[str, dict]], start, end, bands) -> None:
    from matplotlib.ticker import FuncFormatter

    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    i = 0
    for name, s in series:
        colour = PALETTE[i % len(PALETTE)]
        i += 1
        ax.plot(_dt(s["t"]), s["v"], color=colour, lw=1.3, label=name)
        ax.fill_between(_dt(s["t"]), s["v"], color=colour, alpha=0.08, lw=0)
    lo = panel.get("fieldConfig", {}).get("defaults", {}).get("min")
    if lo is not None:
        ax.set_ylim(bottom=lo)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: fmt_value(v, unit)))
    _time_axis(ax, start, end)
    _bands(ax, bands)
    if series:
        ax.legend(loc="upper left", fontsize=7, ncol=min(4, len(series)), frameon=False, labelcolor=TEXT,
                  handlelength=1.2, columnspacing=0.8)


def draw_stat(ax, panel: dict, series: list[tuple[str, dict]], start, end) -> None:
    field = panel.get("fieldConfig", {}).get("defaults", {})
    unit = field.get("unit")
    last = None
    if series:
        vals = [v for v in series[0][1]["v"] if not math.isnan(v)]
        last = vals[-1] if vals else None
        s = series[0][1]
        ax2 = ax.inset_axes([0, 0, 1, 0.45])
        ax2.set_axis_off()
        ax2.fill_between(_dt(s["t"]), s["v"], color=threshold_colour(last, field), alpha=0.25, lw=0)
        ax2.plot(_dt(s["t"]), s["v"], color=threshold_colour(last, field), lw=1)
        ax2.set_xlim(datetime.fromtimestamp(start, timezone.utc), datetime.fromtimestamp(end, timezone.utc))
    ax.text(0.5, 0.55, fmt_value(last, unit), transform=ax.transAxes, ha="center", va="center",
            fontsize=20, fontweight="bold", color=threshold_colour(last, field, TEXT if last is None else "#73bf69"))
    ax.set_xticks([])
    ax.set_yticks([])


def draw_bargauge(ax, panel: dict, values: list[tuple[str, float]]) -> None:
    field = panel.get("fieldConfig", {}).get("defaults", {})
    unit = field.get("unit")
    hi = field.get("max")
    lo = field.get("min", 0) or 0
    finite = [v for _, v in values if not math.isnan(v)]
    if hi is None:
        hi = max(finite + [1e-9])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(1, len(values)))
    ax.set_xticks([])
    ax.set_yticks([])
    n = len(values)
    for i, (name, v) in enumerate(values):
        y = n - i - 1
        frac = 0.0 if math.isnan(v) else max(0.0, min(1.0, (v - lo) / (hi - lo) if hi > lo else 0.0))
        ax.add_patch(__import__("matplotlib").patches.Rectangle((0.18, y + 0.2), 0.64, 0.6, color=BORDER))
        ax.add_patch(__import__("matplotlib").patches.Rectangle((0.18, y + 0.2), 0.64 * frac, 0.6,
                                                                color=threshold_colour(v, field)))
        ax.text(0.16, y + 0.5, name, ha="right", va="center", color=TEXT, fontsize=8)
        ax.text(0.84, y + 0.5, fmt_value(v, unit), ha="left", va="center", fontsize=9, fontweight="bold",
                color=threshold_colour(v, field))


def draw_heatmap(ax, panel: dict, series: list[tuple[str, dict]], start, end) -> None:
    """Histogram buckets over time: counts per bucket (cumulative `le` buckets de-accumulated), zero
    cells left empty, colour on a square-root scale (Grafana's "exponential 0.5")."""
    import matplotlib.dates as mdates
    import numpy as np

    def le(item):
        try:
            return float(item[1]["metric"].get("le", "inf"))
        except ValueError:
            return math.inf

    series = sorted(series, key=le)
    times = sorted({t for _, s in series for t in s["t"]})
    col = {t: i for i, t in enumerate(times)}
    cum = np.zeros((len(series), len(times)))
    for r, (_, s) in enumerate(series):
        for t, v in zip(s["t"], s["v"]):
            cum[r, col[t]] = 0.0 if math.isnan(v) else v
    counts = np.diff(np.vstack([np.zeros((1, len(times))), cum]), axis=0).clip(min=0)
    step = (times[1] - times[0]) if len(times) > 1 else 1.0
    edges = mdates.date2num(_dt([times[0] - step / 2] + [t + step / 2 for t in times]))
    from matplotlib.colors import LinearSegmentedColormap

    # Grafana's dark theme draws a scheme from the panel colour up to the scheme's bright end.
    scheme = (panel.get("options", {}).get("color") or {}).get("scheme", "Oranges")
    bright = {"Oranges": "#ffb357", "Blues": "#8ab8ff", "Greens": "#96d98d", "Reds": "#ff7383",
              "Purples": "#ca95e5"}.get(scheme, "#ffb357")
    cmap = LinearSegmentedColormap.from_list("panel", ["#3a2410", bright, "#fff1dc"])
    ax.grid(False)
    ax.pcolormesh(edges, np.arange(len(series) + 1), np.ma.masked_less_equal(np.sqrt(counts), 0), cmap=cmap,
                  shading="flat")
    labels = [s[1]["metric"].get("le", "") for s in series]
    every = max(1, len(labels) // 6)
    ax.set_yticks([i + 0.5 for i in range(0, len(labels), every)])
    ax.set_yticklabels([labels[i] for i in range(0, len(labels), every)], fontsize=6)
    _time_axis(ax, start, end)
    ax.grid(False)


def _reduce_last(s: dict) -> float:
    vals = [v for v in s["v"] if not math.isnan(v)]
    return vals[-1] if vals else math.nan


def render(dashboard: dict, prom: str, out: Path, minutes: float = 15.0, end: float | None = None,
           overrides: dict[str, str] | None = None) -> dict:
    """Draw one dashboard to `out`; returns {"panels": n, "empty": [titles of panels with no data]}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = time.time() if end is None else end
    start = end - minutes * 60
    step = max(1.0, round(minutes * 60 / 240))
    values = cd.variable_values(dashboard)
    values.update(overrides or {})
    panels = dashboard.get("panels", [])
    rows = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels), default=1)
    unit_h = 0.34  # inches per grid row
    head = 0.75
    width = 18.0
    height = rows * unit_h + head
    fig = plt.figure(figsize=(width, height), dpi=100, facecolor=BG)
    fig.text(0.008, 1 - 0.28 / height, dashboard.get("title", ""), color=TEXT, fontsize=14, fontweight="bold",
             va="center")
    var_text = "  ".join(f"{v['name']}={values.get(v['name'], '')}" for v in dashboard.get("templating", {}).get("list", []))
    fig.text(0.992, 1 - 0.28 / height,
             f"{datetime.fromtimestamp(start, timezone.utc):%Y-%m-%d %H:%M:%S} → "
             f"{datetime.fromtimestamp(end, timezone.utc):%H:%M:%S} UTC   {var_text}   (rendered from Prometheus {prom})",
             color=MUTED, fontsize=8, ha="right", va="center")

    bands: list[tuple[float, float]] = []
    for ann in dashboard.get("annotations", {}).get("list", []):
        if "expr" not in ann:
            continue
        try:
            for s in query_range(prom, cd.expand(ann["expr"], values), start, end, step):
                on = [t for t, v in zip(s["t"], s["v"]) if not math.isnan(v)]
                if on:
                    bands.append((on[0], on[-1] + step))
        except PromError:
            pass

    empty = []
    pad_x, pad_y = 0.004, 0.06  # fractions of a grid column / row
    for p in panels:
        g = p["gridPos"]
        left = (g["x"] / 24) + pad_x
        w = g["w"] / 24 - 2 * pad_x
        top_in = head + g["y"] * unit_h
        h_in = g["h"] * unit_h
        bottom = 1 - (top_in + h_in - pad_y * unit_h) / height
        h = (h_in - 2 * pad_y * unit_h) / height
        kind = p.get("type")
        # room for the title, tick labels and legend inside the panel's box
        inset_top = 0.30 / height
        inset_bottom = (0.32 if kind in ("timeseries", "heatmap") else 0.04) / height
        inset_left = (0.55 if kind in ("timeseries", "heatmap") else 0.05) / width
        frame = fig.add_axes([left, bottom, w, h])
        frame.set_facecolor(PANEL_BG)
        frame.set_xticks([])
        frame.set_yticks([])
        for s in frame.spines.values():
            s.set_color(BORDER)
        frame.text(0.01, 1 - 0.12 / h_in, p.get("title", ""), transform=frame.transAxes, color=TEXT, fontsize=9,
                   fontweight="bold", va="top")
        ax = fig.add_axes([left + inset_left, bottom + inset_bottom, w - inset_left - 0.004,
                           h - inset_top - inset_bottom])
        _style(ax, "")
        series: list[tuple[str, dict]] = []
        error = None
        for target in p.get("targets", []):
            expr = cd.expand(target["expr"], values)
            try:
                for s in query_range(prom, expr, start, end, step):
                    series.append((legend(target.get("legendFormat"), s["metric"]), s))
            except PromError as exc:
                error = str(exc)
        has_data = any(any(not math.isnan(v) for v in s["v"]) for _, s in series)
        if not has_data:
            empty.append(p.get("title", ""))
        if error:
            ax.text(0.5, 0.5, f"query error:\n{error[:120]}", color="#f2495c", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        elif not has_data:
            ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes, fontsize=11)
            ax.set_xticks([])
            ax.set_yticks([])
        elif kind == "stat":
            draw_stat(ax, p, series, start, end)
        elif kind == "bargauge":
            draw_bargauge(ax, p, [(name, _reduce_last(s)) for name, s in series])
        elif kind == "heatmap":
            draw_heatmap(ax, p, series, start, end)
        else:
            draw_timeseries(ax, p, series, start, end, bands)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=BG)
    plt.close(fig)
    return {"panels": len(panels), "empty": empty}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prometheus", default="http://127.0.0.1:9091", help="Prometheus base URL (default %(default)s)")
    ap.add_argument("--minutes", type=float, default=15.0, help="time range: the last N minutes (default 15)")
    ap.add_argument("--end", type=float, help="end of the range, Unix seconds (default: now)")
    ap.add_argument("--dashboards", default=str(cd.DASHBOARD_DIR), help="directory of dashboard JSON files")
    ap.add_argument("--out-dir", default=str(ROOT / "docs"), help="where to write the PNGs (default docs/)")
    ap.add_argument("--prefix", default="dashboard-", help="file name prefix (default %(default)s)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="only these dashboards (file names without .json)")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                    help="set a dashboard variable, e.g. --var __rate_interval=30s")
    a = ap.parse_args(argv)
    overrides = dict(v.split("=", 1) for v in a.var)
    try:
        _get(a.prometheus, "/api/v1/query", {"query": "1"})
    except (PromError, OSError) as exc:
        print(f"render_dashboards: cannot query Prometheus at {a.prometheus}: {exc}", file=sys.stderr)
        return 2
    paths = sorted(Path(a.dashboards).glob("*.json"))
    if a.only:
        paths = [p for p in paths if p.stem in a.only]
        missing = set(a.only) - {p.stem for p in paths}
        if missing:
            print(f"render_dashboards: no dashboard named {sorted(missing)}", file=sys.stderr)
            return 2
    for path in paths:
        out = Path(a.out_dir) / f"{a.prefix}{path.stem}.png"
        res = render(json.loads(path.read_text()), a.prometheus, out, a.minutes, a.end, overrides)
        note = f"; no data in: {', '.join(res['empty'])}" if res["empty"] else ""
        print(f"{path.name}: {res['panels']} panels → {out}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
