"""The dashboard's last hour: refreshes, errors and budget use per minute as inline SVG.

Drawn on the server from `app.observability.history` buckets: bars with a `<title>` each (the
browser shows it on hover, no script needed), the budget's limit as a dashed line and the
fleet's peak use in a window as a line. The SVGs stretch to their box (`preserveAspectRatio`
none), so the charts follow the page's width down to a phone's; their labels are HTML.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

from app.observability.history import Bucket

CHART_WIDTH, CHART_HEIGHT = 600, 84
HISTORY_STYLE = """
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:14px}
figure.chart{margin:0;min-width:0}figure.chart figcaption{font-weight:600;margin:0 0 4px}
figure.chart svg{display:block;width:100%;height:84px;background:#fbfcfd;
border:1px solid var(--line);border-radius:4px}
.chart rect.ok{fill:var(--ok)}.chart rect.bad{fill:var(--bad)}.chart rect.use{fill:#54aeff}
.chart .limit{stroke:var(--bad);stroke-dasharray:4 3;stroke-width:1}
.chart polyline.peak{fill:none;stroke:#0550ae;stroke-width:1.5}
.chart circle.peak{fill:#0550ae}
.axis{display:flex;justify-content:space-between;color:var(--dim);font-size:11px}
.legend{color:var(--dim);font-size:12px}.legend i{display:inline-block;width:9px;height:9px;
margin:0 3px 0 8px;border-radius:2px}.legend i.ok{background:var(--ok)}
.legend i.bad{background:var(--bad)}.legend i.use{background:#54aeff}
.legend i.peak{background:#0550ae;height:2px;vertical-align:middle}
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _bars(
    values: Sequence[tuple[float, str, str]], slot: int, scale: float, lift: Sequence[float]
) -> str:
    """One bar per minute, stacked on `lift`: (value, css class, tooltip) per slot."""
    width = CHART_WIDTH / slot
    out = []
    for i, (value, kind, tip) in enumerate(values):
        if value <= 0:
            continue
        height = CHART_HEIGHT * value / scale
        y = CHART_HEIGHT - CHART_HEIGHT * lift[i] / scale - height
        out.append(
            f'<rect class="{kind}" x="{i * width + 1:.1f}" y="{y:.1f}" '
            f'width="{max(width - 2, 1):.1f}" height="{height:.1f}">'
            f"<title>{_esc(tip)}</title></rect>"
        )
    return "".join(out)


def _svg(label: str, body: str) -> str:
    return (
        f'<svg viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" preserveAspectRatio="none" role="img" '
        f'aria-label="{_esc(label)}">{body}</svg>'
    )


def _minute(bucket: Bucket) -> str:
    return time.strftime("%H:%M UTC", time.gmtime(bucket.start))


def _chart(chart_id: str, title: str, legend: str, svg: str, data: dict[str, Any]) -> str:
    attrs = "".join(f' data-{_esc(k)}="{_esc(v)}"' for k, v in data.items())
    return (
        f'<figure class="chart" id="{_esc(chart_id)}"{attrs}><figcaption>{_esc(title)} '
        f'<span class="legend">{legend}</span></figcaption>{svg}'
        '<div class="axis"><span>60 min ago</span><span>30 min</span><span>now</span></div>'
        "</figure>"
    )


def refreshes_chart(history: Sequence[Bucket]) -> str:
    """Upstream token requests per minute: succeeded, with the failed ones stacked on top."""
    ok = [b.refreshes for b in history]
    failed = [b.refresh_failures for b in history]
    scale = max([o + f for o, f in zip(ok, failed, strict=True)] + [1])
    tips = [f"{_minute(b)}: {b.refreshes} ok, {b.refresh_failures} failed" for b in history]
    body = _bars(
        [(v, "ok", t) for v, t in zip(ok, tips, strict=True)],
        len(history),
        scale,
        [0] * len(history),
    )
    body += _bars(
        [(v, "bad", t) for v, t in zip(failed, tips, strict=True)], len(history), scale, ok
    )
    legend = f'<i class="ok"></i>{sum(ok)} ok<i class="bad"></i>{sum(failed)} failed'
    data = {"refreshes": sum(ok), "failures": sum(failed), "minutes": len(history)}
    return _chart("chart-refreshes", "Refreshes", legend, _svg("refreshes per minute", body), data)


def errors_chart(history: Sequence[Bucket]) -> str:
    """Errors per minute: failed refreshes and store errors."""
    errors = [b.errors for b in history]
    tips = [f"{_minute(b)}: {b.errors} errors" for b in history]
    body = _bars(
        [(v, "bad", t) for v, t in zip(errors, tips, strict=True)],
        len(history),
        max([*errors, 1]),
        [0] * len(history),
    )
    legend = f'<i class="bad"></i>{sum(errors)} in the hour'
    data = {"errors": sum(errors), "minutes": len(history)}
    return _chart("chart-errors", "Errors", legend, _svg("errors per minute", body), data)


def budget_chart(history: Sequence[Bucket], limit: int) -> str:
    """Permits this instance granted (and refused) per minute, the fleet's peak use in a window
    as the reports saw it, and the limit."""
    n = len(history)
    grants = [b.grants for b in history]
    denials = [b.denials for b in history]
    peaks = [b.budget_used for b in history]
    known = [p for p in peaks if p is not None]
    scale = max([g + d for g, d in zip(grants, denials, strict=True)] + known + [limit, 1])
    tips = [
        f"{_minute(b)}: {b.grants} granted, {b.denials} refused here; fleet peak "
        f"{'?' if b.budget_used is None else b.budget_used} of {limit} in a window"
        for b in history
    ]
    body = _bars([(v, "use", t) for v, t in zip(grants, tips, strict=True)], n, scale, [0] * n)
    body += _bars([(v, "bad", t) for v, t in zip(denials, tips, strict=True)], n, scale, grants)
    y_limit = CHART_HEIGHT - CHART_HEIGHT * limit / scale
    body += f'<line class="limit" x1="0" x2="{CHART_WIDTH}" y1="{y_limit:.1f}" y2="{y_limit:.1f}"/>'
    step = CHART_WIDTH / n
    points = " ".join(
        f"{i * step + step / 2:.1f},{CHART_HEIGHT - CHART_HEIGHT * p / scale:.1f}"
        for i, p in enumerate(peaks)
        if p is not None
    )
    if points:  # a line through the minutes that were seen, a dot on each (one may be alone)
        body += f'<polyline class="peak" points="{points}"/>'
        body += "".join(
            f'<circle class="peak" cx="{x}" cy="{y}" r="2.5"/>'
            for x, y in (point.split(",") for point in points.split())
        )
    legend = (
        f'<i class="use"></i>{sum(grants)} granted<i class="bad"></i>{sum(denials)} refused'
        f'<i class="peak"></i>peak {max(known) if known else "?"} of {limit}'
    )
    data = {
        "grants": sum(grants),
        "denials": sum(denials),
        "peak": max(known) if known else "",
        "limit": limit,
        "minutes": n,
    }
    return _chart("chart-budget", "Budget use", legend, _svg("budget use per minute", body), data)


def history_panel(history: Sequence[Bucket] | None, budget: dict[str, Any]) -> str:
    """The last hour, per minute, as three inline SVG charts (no script)."""
    if not history:
        return ""
    charts = (
        refreshes_chart(history) + errors_chart(history) + budget_chart(history, budget["limit"])
    )
    return (
        '<section class="panel" id="history"><h2>Last hour '
        "<small>(this instance, per minute; the peak is fleet-wide)</small></h2>"
        f'<div class="charts">{charts}</div></section>'
    )
