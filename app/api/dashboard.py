"""The /health dashboard: one self-contained HTML page rendered from the /health report.

No script, no external asset (clusters often have no internet): inline CSS and SVG only, and a
Content-Security-Policy that forbids loading anything. It reloads itself with a meta refresh.
Every value from the report goes through `html.escape`, even those we believe to be plain.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

from app.api.history_charts import HISTORY_STYLE, history_panel
from app.observability.history import Bucket

REFRESH_SECONDS = 5
DASHBOARD_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_HTML_TYPES = ("text/html", "application/xhtml+xml")
DOT = " \u00b7 "
DASH = "\u2014"
_TONE = {"ok": "ok", "valid": "ok", "degraded": "warn", "expired": "bad", "down": "bad"}
_TONE |= {"failing": "bad", "rejected": "bad", "unavailable": "bad", "error": "bad"}

STYLE = """
:root{--ok:#1a7f37;--okbg:#dafbe1;--warn:#9a6700;--warnbg:#fff8c5;--bad:#cf222e;--badbg:#ffebe9;
--dim:#6e7781;--dimbg:#eaeef2;--line:#d0d7de}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:20px 28px;
color:#1f2328;background:#f6f8fa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:13px;text-transform:uppercase;letter-spacing:.06em;
color:var(--dim);margin:0 0 8px}
.meta{color:var(--dim);margin:0 0 10px}.meta b{color:#1f2328}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-weight:600;font-size:12px;
vertical-align:middle}
.ok{color:var(--ok);background:var(--okbg)}.warn{color:var(--warn);background:var(--warnbg)}
.bad{color:var(--bad);background:var(--badbg)}.dim{color:var(--dim);background:var(--dimbg)}
h1 .badge{font-size:15px;padding:2px 12px}
#reasons{margin:0 0 14px;padding-left:20px;color:var(--warn)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:14px;
margin:0 0 18px}
.card,section.panel{background:#fff;border:1px solid var(--line);border-radius:8px;
padding:12px 14px}
section.panel{margin:0 0 18px}
.big{font-size:18px;font-weight:600}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:7px 8px;border-top:1px solid var(--line);vertical-align:top}
thead th{border-top:0;color:var(--dim);font-weight:600;font-size:12px}
tbody th{font-family:ui-monospace,monospace}
td.life{width:30%}td.error{width:36%}
.bar{position:relative;height:14px;width:100%;min-width:160px;background:var(--dimbg);
border-radius:7px;overflow:hidden}
.fill{height:100%}.fill.ok{background:var(--ok)}.fill.warn{background:#d4a72c}
.fill.bad{background:var(--bad)}
.mark{position:absolute;top:0;bottom:0;width:2px;background:#1f2328}
small,.small{color:var(--dim);font-size:12px}
.err{color:var(--bad)}
ol#errors{margin:0;padding-left:20px}ol#errors li{margin:3px 0}
ul.fleet{margin:0;padding-left:18px}
svg text{font:600 15px system-ui,sans-serif}
footer{color:var(--dim);font-size:12px}
.err,ol#errors li,ul.fleet li,#reasons li{overflow-wrap:anywhere}
@media (max-width:640px){
body{padding:12px}h1{font-size:19px}
#clients,#clients tbody{display:block}#clients thead{display:none}
#clients tr{display:block;border-top:1px solid var(--line);padding:6px 0}
#clients tbody th,#clients td{display:block;width:auto;border:0;padding:3px 4px}
#clients td.life,#clients td.error{width:auto}
#clients td::before{display:block;color:var(--dim);font-size:11px;font-weight:600;
text-transform:uppercase;letter-spacing:.04em}
#clients td:nth-of-type(1)::before{content:"token"}
#clients td:nth-of-type(2)::before{content:"remaining life"}
#clients td:nth-of-type(3)::before{content:"last refresh"}
#clients td:nth-of-type(4)::before{content:"last error"}
.bar{min-width:0}
}
"""


def esc(value: Any) -> str:
    """`value` as text safe inside HTML content and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def prefers_html(accept: str | None) -> bool:
    """Whether an Accept header ranks HTML above JSON (ties and `*/*` alone mean JSON)."""
    if not accept:
        return False
    best = {"html": -1.0, "json": -1.0, "text": -1.0, "app": -1.0, "any": -1.0}
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        kind = {
            **dict.fromkeys(_HTML_TYPES, "html"),
            "application/json": "json",
            "text/*": "text",
            "application/*": "app",
            "*/*": "any",
        }.get(media.lower())
        if kind is not None:
            best[kind] = max(best[kind], quality)
    html_q = best["html"] if best["html"] >= 0 else best["text"]
    json_q = best["json"] if best["json"] >= 0 else max(best["app"], best["any"])
    return html_q > 0 and html_q > json_q


def duration(seconds: float | None) -> str:
    """`1h 02m`, `4m 05s`, `12s`; an em dash for unknown."""
    if seconds is None:
        return DASH
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def clock_time(unix: float) -> str:
    """`12:03:04 UTC`."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(unix))


def at(unix: float | None, now: float) -> str:
    """`12:03:04 UTC (5m 01s ago)`."""
    if unix is None:
        return DASH
    return f"{clock_time(unix)} ({duration(now - unix)} ago)"


def badge(text: Any, tone: str | None = None, **data: Any) -> str:
    """A coloured pill; the tone follows the text unless given."""
    tone = tone or _TONE.get(str(text), "dim")
    attrs = "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in data.items())
    return f'<span class="badge {tone}"{attrs}>{esc(text)}</span>'


def life_bar(client: dict[str, Any]) -> str:
    """The token's remaining life as a bar, with a mark at the refresh point."""
    lifetime, left = client["lifetime_seconds"], client["expires_in"]
    buffer = client["refresh_buffer_seconds"] or 0
    if not lifetime or left is None:
        note = "no token yet" if client["requested"] else "not requested yet"
        return f'<div class="bar" title="{esc(note)}"></div><small>{esc(note)}</small>'
    share = max(0.0, min(100.0, 100.0 * left / lifetime))
    mark = max(0.0, min(100.0, 100.0 * buffer / lifetime))
    tone = "bad" if left <= 0 else ("warn" if left <= buffer else "ok")
    title = f"{duration(left)} of {duration(lifetime)} left; refresh point at {duration(buffer)}"
    return (
        f'<div class="bar" title="{esc(title)}">'
        f'<div class="fill {tone}" style="width:{share:.1f}%"></div>'
        f'<div class="mark" style="left:{mark:.1f}%" title="refresh point"></div></div>'
        f"<small>{esc(duration(left))} left \u00b7 refresh point at "
        f"{esc(duration(buffer))} left</small>"
    )


def client_row(name: str, client: dict[str, Any], now: float) -> str:
    """One table row per client."""
    outcome = client["last_refresh_outcome"]
    error = DASH
    if client["last_error"]:
        error = (
            f"{badge(client['last_error_category'] or 'error', 'bad')} "
            f'<span class="err">{esc(client["last_error"])}</span>'
            f"<br><small>{esc(at(client['last_error_at'], now))}</small>"
        )
    return (
        f'<tr data-client="{esc(name)}" data-token="{esc(client["token"])}" '
        f'data-outcome="{esc(outcome or "none")}">'
        f"<th>{esc(name)}</th><td>{badge(client['token'])}</td>"
        f'<td class="life">{life_bar(client)}</td>'
        f"<td>{badge(outcome or 'none')}<br>"
        f"<small>{esc(at(client['last_refresh_at'], now))}</small></td>"
        f'<td class="error">{error}</td></tr>'
    )


def clients_panel(report: dict[str, Any]) -> str:
    """The clients table, or a note when per-client detail is switched off."""
    if "clients" not in report:
        body = '<p class="small">Per-client detail is switched off (server.health_details).</p>'
    else:
        now = report["generated_at"]
        rows = "".join(client_row(n, c, now) for n, c in report["clients"].items())
        body = (
            '<table id="clients"><thead><tr><th>client</th><th>token</th>'
            "<th>remaining life</th><th>last refresh</th><th>last error</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    return f'<section class="panel"><h2>Clients</h2>{body}</section>'


def budget_card(budget: dict[str, Any]) -> str:
    """The fleet budget as a gauge over the window."""
    used, limit, cooldown = budget["used"], budget["limit"], budget["cooldown_seconds"]
    share = 0.0 if used is None else max(0.0, min(100.0, 100.0 * used / limit))
    tone = "dim" if used is None else ("bad" if share >= 100 or cooldown else "ok")
    tone = "warn" if tone == "ok" and share >= 75 else tone
    colour = {"ok": "var(--ok)", "warn": "#d4a72c", "bad": "var(--bad)", "dim": "var(--dim)"}
    label = "?" if used is None else f"{used}/{limit}"
    arc = "M10 62 A52 52 0 0 1 114 62"
    return (
        f'<div class="card" id="budget" data-used="{esc(used)}" data-limit="{esc(limit)}">'
        f"<h2>Budget</h2>"
        f'<svg width="124" height="72" viewBox="0 0 124 72" role="img" '
        f'aria-label="{esc(label)} permits used">'
        f'<path d="{arc}" pathLength="100" fill="none" stroke="#eaeef2" stroke-width="12"/>'
        f'<path d="{arc}" pathLength="100" fill="none" stroke="{colour[tone]}" '
        f'stroke-width="12" stroke-dasharray="{share:.1f} 100"/>'
        f'<text x="62" y="60" text-anchor="middle">{esc(label)}</text></svg>'
        f'<div class="small">{esc(budget["remaining"] if used is not None else "?")} of '
        f"{esc(limit)} left per {esc(duration(budget['window_seconds']))} window"
        f"{DOT}cooldown "
        f"{badge(duration(cooldown) if cooldown else 'none', 'bad' if cooldown else 'ok')}"
        f"</div></div>"
    )


def budget_panel(budget: dict[str, Any]) -> str:
    """Per caller: permits granted in the current window and requests waiting."""
    rows = [(name, row) for name, row in sorted(budget.get("callers", {}).items())]
    if "token_requests" in budget:
        rows.append(("token requests (the broker's own)", budget["token_requests"]))
    if not rows:
        return ""
    body = "".join(
        f'<tr data-caller="{esc(name)}"><th>{esc(name)}</th><td>{esc(row["granted"])}</td>'
        f"<td>{esc(row['waiting'])}</td></tr>"
        for name, row in rows
    )
    share = budget.get("local_share")
    mode = (
        badge(f"granting alone: {share['per_window']} per window", "warn")
        if share
        else badge(str(budget.get("mode", "shared")), "warn" if budget.get("degraded") else "ok")
    )
    scope = "this instance" if share else "fleet-wide"
    return (
        f'<section class="panel" id="budget-callers"><h2>Budget by caller</h2>'
        f'<p class="small">{mode}{DOT}{esc(scope)}, current window</p>'
        "<table><thead><tr><th>caller</th><th>granted</th><th>waiting</th></tr></thead>"
        f"<tbody>{body}</tbody></table></section>"
    )


def state_cards(report: dict[str, Any]) -> str:
    """Store, upstream, budget and fleet at a glance."""
    store, upstream, fleet = report["store"], report["upstream"]["state"], report["fleet"]
    store_badge = badge(*(("reachable", "ok") if store["ok"] else ("unreachable", "bad")))
    if fleet is None:
        members = '<p class="small">unknown: the store did not answer</p>'
    else:
        items = "".join(
            f"<li>{esc(i['instance'])} <small>v{esc(i['version'])}"
            f"{DOT + 'this one' if i['self'] else ''}</small></li>"
            for i in fleet["instances"]
        )
        members = f'<ul class="fleet">{items}</ul>'
    return (
        '<div class="cards">'
        f'<div class="card" id="store" data-ok="{esc(str(store["ok"]).lower())}"><h2>Store</h2>'
        f'<div class="big">{esc(store["kind"])}</div>{store_badge}</div>'
        f'<div class="card" id="upstream" data-state="{esc(upstream)}"><h2>Upstream</h2>'
        f"<div>{badge(upstream, 'dim' if upstream == 'unknown' else None)}</div>"
        "<small>from the clients\u2019 last refresh</small></div>"
        f"{budget_card(report['budget'])}"
        f'<div class="card" id="fleet" data-count="{esc(fleet["count"] if fleet else "")}">'
        f"<h2>Fleet</h2>{members}</div></div>"
    )


def errors_panel(report: dict[str, Any]) -> str:
    """The last kinds of error, newest first."""
    if "recent_errors" not in report:
        return ""
    now = report["generated_at"]
    items = "".join(
        f'<li data-source="{esc(e["source"])}">{badge(e["category"], "bad")} '
        f"<b>{esc(e['source'])}</b>{DOT + esc(e['client']) if e['client'] else ''}: "
        f"{esc(e['message'])} <small>\u00d7{esc(e['count'])}, last {esc(at(e['at'], now))}"
        "</small></li>"
        for e in report["recent_errors"]
    )
    body = f'<ol id="errors">{items}</ol>' if items else '<p class="small">none</p>'
    return f'<section class="panel"><h2>Recent errors</h2>{body}</section>'


def render_dashboard(
    report: dict[str, Any],
    refresh_seconds: int = REFRESH_SECONDS,
    *,
    history: Sequence[Bucket] | None = None,
) -> str:
    """The whole page for one /health report (and this instance's last hour, when given)."""
    status = report["status"]
    reasons = "".join(f"<li>{esc(reason)}</li>" for reason in report["reasons"])
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(status)} \u00b7 token broker {esc(report['instance'])}</title>"
        f"<style>{STYLE}{HISTORY_STYLE}</style></head>"
        f'<body data-status="{esc(status)}"><header>'
        f'<h1>Token broker <span id="status">{badge(status)}</span></h1>'
        f'<p class="meta">instance <b>{esc(report["instance"])}</b> \u00b7 version '
        f"<b>{esc(report['version'])}</b> \u00b7 up {esc(duration(report['uptime_seconds']))} "
        f"\u00b7 as of {esc(clock_time(report['generated_at']))}"
        f" \u00b7 reloads every {int(refresh_seconds)} s</p>"
        f'<ul id="reasons">{reasons}</ul></header>'
        f"{state_cards(report)}{history_panel(history, report['budget'])}"
        f"{budget_panel(report['budget'])}{clients_panel(report)}{errors_panel(report)}"
        "<footer>/health, /health/live, /health/ready and /metrics need no credentials: "
        "keep them inside the cluster.</footer></body></html>"
    )
