"""Plots for the benchmarks, as plain SVG: no plotting library, nothing to install.

Each benchmark script takes ``--plot FILE.svg`` and draws its figures with these:

* :func:`cdf`: latency distributions as empirical CDFs, the same-run baseline beside the
  figure (one panel per CPU placement);
* :func:`bars`: rates or ratios per group (IRQs/s per placement, p50/p99 per phase);
* :func:`lines`: scaling curves (y against x per series).

A figure is one or more panels side by side, written with :func:`write`. The SVG is
self-contained (no fonts, scripts or links to fetch) and deterministic for the same data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

#: Colours of the series, in order (baseline first, so it is always the grey one).
PALETTE = ("#6b6b6b", "#1f6fb4", "#d9661f", "#2a9d4b", "#a23bb0", "#b8860b", "#c0392b")
PANEL_W, PANEL_H = 460, 300
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 16, 34, 78


@dataclass
class Panel:
    """One chart: title, axis labels, and SVG elements in data coordinates (drawn later)."""

    title: str
    xlabel: str
    ylabel: str
    log_x: bool = False
    series: list[tuple[str, str]] = field(default_factory=list)  # (label, colour): legend
    _lines: list[tuple[str, list[tuple[float, float]], bool]] = field(default_factory=list)
    _bars: list[tuple[str, list[str], list[tuple[str, list[float]]]]] = field(
        default_factory=list)
    x_range: tuple[float, float] | None = None
    y_range: tuple[float, float] | None = None


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo <= v <= hi:
                ticks.append(float(v))
    if len(ticks) > 8:  # a wide range: decades only
        ticks = [t for t in ticks if f"{t:g}".lstrip("0.").startswith("1")]
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 10_000:
        return f"{v / 1000:g}k"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.3g}"
    return f"{v:.3g}"


def cdf(title: str, samples: dict[str, Sequence[float]], xlabel: str = "latency (µs)",
        log_x: bool = True, clip: float = 0.99) -> Panel:
    """Empirical CDFs of each series (first = the baseline), drawn up to the ``clip``
    quantile (the p99 by default: the tail beyond it is the shared machine's scheduler)."""
    panel = Panel(title, xlabel, "fraction of samples ≤ x", log_x=log_x)
    top = 0.0
    low = math.inf
    for i, (label, values) in enumerate(samples.items()):
        data = sorted(v for v in values if v > 0 or not log_x)
        if not data:
            continue
        keep = data[: max(1, math.ceil(len(data) * clip))]
        n = len(data)
        # at most ~400 points per curve: enough for a smooth step, small files
        stride = max(1, len(keep) // 400)
        pts = [(keep[j], (j + 1) / n) for j in range(0, len(keep), stride)]
        pts.append((keep[-1], len(keep) / n))
        colour = PALETTE[i % len(PALETTE)]
        panel.series.append((f"{label} (median {_fmt(data[n // 2])})", colour))
        panel._lines.append((colour, pts, False))
        top = max(top, keep[-1])
        low = min(low, keep[0])
    if top:
        lo = low * 0.8 if log_x else 0.0
        panel.x_range = (lo, top * (1.15 if log_x else 1.05))
    panel.y_range = (0.0, 1.0)
    return panel


def lines(title: str, series: dict[str, Sequence[tuple[float, float]]], xlabel: str,
          ylabel: str, log_x: bool = False) -> Panel:
    """One polyline (with point markers) per series."""
    panel = Panel(title, xlabel, ylabel, log_x=log_x)
    xs: list[float] = []
    ys: list[float] = []
    for i, (label, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        panel.series.append((label, colour))
        panel._lines.append((colour, list(pts), True))
        xs += [p[0] for p in pts]
        ys += [p[1] for p in pts]
    if xs:
        panel.x_range = (min(xs) * (0.8 if log_x else 1), max(xs) * (1.25 if log_x else 1))
        panel.y_range = (0.0, max(ys) * 1.1 or 1.0)
    return panel


def bars(title: str, groups: Sequence[str], series: dict[str, Sequence[float]],
         ylabel: str) -> Panel:
    """Grouped bars: one group per entry of ``groups``, one bar per series in each."""
    panel = Panel(title, "", ylabel)
    for i, label in enumerate(series):
        panel.series.append((label, PALETTE[i % len(PALETTE)]))
    panel._bars.append(("", list(groups), [(k, list(v)) for k, v in series.items()]))
    top = max((v for vals in series.values() for v in vals), default=1.0)
    panel.y_range = (0.0, top * 1.12 or 1.0)
    return panel


def _render(panel: Panel, ox: float, oy: float) -> list[str]:
    w = PANEL_W - MARGIN_L - MARGIN_R
    h = PANEL_H - MARGIN_T - MARGIN_B
    x0, y0 = ox + MARGIN_L, oy + MARGIN_T
    out = [f'<text x="{ox + PANEL_W / 2:.1f}" y="{oy + 20}" text-anchor="middle" '
           f'font-weight="bold">{escape(panel.title)}</text>',
           f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    ylo, yhi = panel.y_range or (0.0, 1.0)

    def sy(v: float) -> float:
        return y0 + h - (v - ylo) / (yhi - ylo or 1) * h

    for t in _nice_ticks(ylo, yhi):
        y = sy(t)
        out.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<text transform="translate({ox + 14},{y0 + h / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{escape(panel.ylabel)}</text>')
    if panel._lines:
        xlo, xhi = panel.x_range or (0.0, 1.0)
        if panel.log_x:
            xlo = max(xlo, 1e-9)
            lx0, lx1 = math.log10(xlo), math.log10(max(xhi, xlo * 1.01))

            def sx(v: float) -> float:
                return x0 + (math.log10(max(v, xlo)) - lx0) / (lx1 - lx0) * w
            xticks = _log_ticks(xlo, xhi)
        else:
            def sx(v: float) -> float:
                return x0 + (v - xlo) / (xhi - xlo or 1) * w
            xticks = _nice_ticks(xlo, xhi)
        for t in xticks:
            x = sx(t)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y0 + h}" '
                       'stroke="#eee"/>')
            out.append(f'<text x="{x:.1f}" y="{y0 + h + 14}" text-anchor="middle">'
                       f'{_fmt(t)}</text>')
        for colour, pts, markers in panel._lines:
            if panel._lines and not markers:  # a CDF: steps
                d = []
                prev_y = 0.0
                for x, y in pts:
                    d.append(f"{sx(x):.1f},{sy(prev_y):.1f} {sx(x):.1f},{sy(y):.1f}")
                    prev_y = y
                path = " ".join(d)
            else:
                path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                       'stroke-width="1.8"/>')
            if markers:
                out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>'
                        for x, y in pts]
    for _, groups, series in panel._bars:
        gw = w / max(1, len(groups))
        bw = gw * 0.8 / max(1, len(series))
        for g, name in enumerate(groups):
            gx = x0 + g * gw + gw * 0.1
            out.append(f'<text x="{x0 + (g + 0.5) * gw:.1f}" y="{y0 + h + 14}" '
                       f'text-anchor="middle">{escape(name)}</text>')
            for s, (_, values) in enumerate(series):
                if g >= len(values):
                    continue
                v = values[g]
                top = sy(v)
                out.append(f'<rect x="{gx + s * bw:.1f}" y="{top:.1f}" width="{bw * 0.92:.1f}" '
                           f'height="{y0 + h - top:.1f}" fill="{PALETTE[s % len(PALETTE)]}"/>')
                out.append(f'<text x="{gx + (s + 0.46) * bw:.1f}" y="{top - 3:.1f}" '
                           f'text-anchor="middle" font-size="9">{_fmt(round(v, 1))}</text>')
    if panel.xlabel:
        out.append(f'<text x="{x0 + w / 2:.1f}" y="{y0 + h + 30}" text-anchor="middle">'
                   f'{escape(panel.xlabel)}</text>')
    ly = y0 + h + (44 if panel.xlabel else 30)
    for i, (label, colour) in enumerate(panel.series):
        y = ly + i * 13
        out.append(f'<rect x="{x0}" y="{y - 8}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x0 + 14}" y="{y + 1}">{escape(label)}</text>')
    return out


def write(path: str | Path, title: str, panels: Iterable[Panel], note: str = "") -> Path:
    """Write the panels side by side (at most 2 a row) as one SVG file, with a caption."""
    panels = list(panels)
    extra = max((len(p.series) for p in panels), default=0) * 13
    cols = min(2, max(1, len(panels)))
    rows = math.ceil(len(panels) / cols)
    ph = PANEL_H + max(0, extra - 26)
    width, height = cols * PANEL_W, rows * ph + 48
    body = [f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="14" '
            f'font-weight="bold">{escape(title)}</text>']
    if note:
        body.append(f'<text x="{width / 2:.1f}" y="{height - 8}" text-anchor="middle" '
                    f'fill="#555">{escape(note)}</text>')
    for i, panel in enumerate(panels):
        body += _render(panel, (i % cols) * PANEL_W, 26 + (i // cols) * ph)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">\n'
           f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(svg, encoding="utf-8")
    return out
