"""The /health HTML dashboard: rendered by headless Chromium, negotiated by Accept, escaped."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from app.api.dashboard import prefers_html, render_dashboard
from tests.conftest import EMULATOR_ID, BrokerFactory, Emulator
from tests.contract import NEVER_IN_RESPONSES, assert_error, assert_token, billing, orders
from tests.support.chromium import chromium, shoot

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WRONG_SECRET = "payouts-wrong-secret-value-7731"  # test-only: the upstream rejects it
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1280,900",
)


def chromium_binary() -> str:
    """Path of Debian's chromium; a clear failure (never a skip) when it is missing."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is required for the dashboard test: apt-get install -y chromium")


async def chromium_render(url: str, screenshot: Path) -> str:
    """Load `url` in headless Chromium: return the DOM after load, save a screenshot."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tb-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            chromium_binary(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


class Dom(HTMLParser):
    """Elements with their attributes and text, enough to assert on a rendered page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Record the element; void elements are not kept open."""
        element = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append(element)
        if tag not in ("meta", "br", "link", "img", "input", "path"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        """Close the innermost open element of this tag."""
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i]["tag"] == tag:
                del self._open[i:]
                break

    def handle_data(self, data: str) -> None:
        """Text belongs to every open element."""
        for element in self._open:
            element["text"] += data

    def find(self, tag: str | None = None, **attrs: str) -> list[dict[str, Any]]:
        """Elements (of `tag`) whose attributes include `attrs` (underscores stand for dashes)."""
        wanted = {key.replace("_", "-"): value for key, value in attrs.items()}
        return [
            e
            for e in self.elements
            if (tag is None or e["tag"] == tag) and wanted.items() <= e["attrs"].items()
        ]

    def one(self, tag: str | None = None, **attrs: str) -> dict[str, Any]:
        """The single element matching `tag` and `attrs`."""
        found = self.find(tag, **attrs)
        assert len(found) == 1, (tag, attrs, found)
        return found[0]


def rejected_payouts(emulator: Emulator) -> dict[str, Any]:
    """The `payouts` client configured with a secret the upstream rejects."""
    return {
        "payouts": {
            "token_url": emulator.token_url,
            "api_base_url": emulator.base_url,
            "client_id": EMULATOR_ID,
            "client_secret": WRONG_SECRET,
        }
    }


@pytest.mark.parametrize("store_config", ["redis"], indirect=True)
async def test_dashboard_renders_in_headless_chromium(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """Chromium shows one healthy and one rejected client, store, upstream, budget and errors."""
    async with broker(clients=rejected_payouts(emulator)) as http:
        token = assert_token(await http.get("/token", headers=orders()))["access_token"]
        refused = await http.get("/token?client=payouts", headers=billing())
        assert_error(refused, 502, "upstream_invalid_client")
        for _ in range(3):
            assert (await http.post("/budget/acquire", headers=orders())).status_code == 200
        dom_text = await chromium_render(f"{http.base_url}/health", ARTIFACTS / "dashboard.png")

    for secret in (token, WRONG_SECRET, *NEVER_IN_RESPONSES):
        assert secret not in dom_text
    dom = Dom(dom_text)
    assert not [e for e in dom.elements if e["tag"] in ("script", "link", "img", "iframe")]
    assert dom.one(tag="body")["attrs"]["data-status"] == "degraded"
    assert dom.one(id="store")["attrs"]["data-ok"] == "true"
    assert "redis" in dom.one(id="store")["text"]
    assert dom.one(id="upstream")["attrs"]["data-state"] == "failing"
    budget = dom.one(id="budget")
    assert (budget["attrs"]["data-used"], budget["attrs"]["data-limit"]) == ("3", "50")
    assert "3/50" in budget["text"]
    assert dom.one(id="fleet")["attrs"]["data-count"] == "1"

    healthy = dom.one(data_client="checkout")
    assert (healthy["attrs"]["data-token"], healthy["attrs"]["data-outcome"]) == ("valid", "ok")
    assert "59m" in healthy["text"] and "refresh point at 5m 00s" in healthy["text"]
    fills = [e for e in dom.elements if "fill" in e["attrs"].get("class", "").split()]
    assert len(fills) == 1  # only the client with a token has a life bar
    width = float(fills[0]["attrs"]["style"].removeprefix("width:").rstrip("%"))
    assert 95 < width <= 100
    rejected = dom.one(data_client="payouts")
    assert rejected["attrs"]["data-token"] == "missing"
    assert rejected["attrs"]["data-outcome"] == "rejected"
    assert "invalid_client" in rejected["text"]
    errors = dom.find(data_source="upstream")
    assert len(errors) == 1 and "payouts" in errors[0]["text"]
    assert "invalid_client" in "".join(e["text"] for e in dom.find(id="reasons"))

    screenshot = (ARTIFACTS / "dashboard.png").read_bytes()
    assert screenshot.startswith(b"\x89PNG") and len(screenshot) > 10_000


async def test_accept_header_chooses_html_or_json(broker: BrokerFactory) -> None:
    """Browsers get the self-contained HTML page; curl, Prometheus and probes get JSON."""
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    async with broker() as http:
        page = await http.get("/health", headers={"Accept": browser})
        plain = await http.get("/health", headers={"Accept": "*/*"})
        both = await http.get("/health", headers={"Accept": "application/json, text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert '<meta http-equiv="refresh"' in page.text
    for response in (plain, both):
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["status"] == "ok"


def test_prefers_html_ranks_by_quality() -> None:
    """Only an Accept header that ranks HTML strictly above JSON selects the dashboard."""
    assert prefers_html("text/html")
    assert prefers_html("text/*, application/json;q=0.5")
    assert not prefers_html(None)
    assert not prefers_html("*/*")
    assert not prefers_html("application/json")
    assert not prefers_html("text/html;q=0, */*")
    assert not prefers_html("text/html;q=0.5, application/json")
    assert not prefers_html("text/html;q=bogus, */*;q=0.1")


def hostile_report() -> dict[str, Any]:
    """A /health report whose every text field tries to inject markup."""
    evil = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"
    client = {
        "token": evil,
        "expires_in": 100,
        "lifetime_seconds": 3600,
        "refresh_buffer_seconds": 300,
        "last_refresh_at": 1_800_000_000,
        "last_refresh_outcome": evil,
        "last_error": evil,
        "last_error_category": evil,
        "last_error_at": 1_800_000_000,
        "requested": True,
    }
    return {
        "status": evil,
        "reasons": [evil],
        "version": evil,
        "instance": evil,
        "uptime_seconds": 5,
        "store": {"kind": evil, "ok": False},
        "upstream": {"state": evil},
        "clients": {evil: client},
        "budget": {
            "limit": 50,
            "window_seconds": 60,
            "used": 3,
            "remaining": 47,
            "cooldown_seconds": 0,
        },
        "fleet": {
            "count": 1,
            "instances": [{"instance": evil, "version": evil, "expires_in": 9, "self": True}],
        },
        "recent_errors": [
            {
                "source": evil,
                "client": evil,
                "category": evil,
                "message": evil,
                "at": 1_800_000_000,
                "count": 2,
            }
        ],
        "details": True,
        "generated_at": 1_800_000_100,
    }


def test_every_value_is_escaped() -> None:
    """Markup in any report value comes out as text, never as an element or attribute."""
    page = render_dashboard(hostile_report())
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;" in page
    dom = Dom(page)
    assert {e["tag"] for e in dom.elements} <= {
        *("html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "span"),
        *("p", "b", "ul", "li", "div", "svg", "path", "text", "small", "section", "table"),
        *("thead", "tbody", "tr", "th", "td", "br", "ol", "footer"),
    }
    assert not [e for e in dom.elements if any(a.startswith("on") for a in e["attrs"])]


async def test_details_switched_off_hides_clients(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """With server.health_details = false neither form names clients or shows error texts."""
    async with broker(server={"health_details": False}, clients=rejected_payouts(emulator)) as h:
        refused = await h.get("/token?client=payouts", headers=billing())
        assert_error(refused, 502, "upstream_invalid_client")
        report = (await h.get("/health")).json()
        page = (await h.get("/health", headers={"Accept": "text/html"})).text
    assert report["status"] in ("degraded", "down")
    assert "clients" not in report and "recent_errors" not in report
    assert report["reasons"] and not any("payouts" in reason for reason in report["reasons"])
    assert "payouts" not in page and "invalid_client" not in page
    assert "switched off" in page


async def test_dashboard_over_http_is_escaped_and_self_contained(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """The served page loads nothing from elsewhere and escapes the quotes in error texts."""
    async with broker(clients=rejected_payouts(emulator)) as http:
        await http.get("/token?client=payouts", headers=billing())
        page = await http.get("/health", headers={"Accept": "text/html"})
    assert "client &#x27;payouts&#x27;" in page.text
    for needle in ("<script", "<link", "src=", "http://", "https://", "@import", "url("):
        assert needle not in page.text


# --- layout at desktop and phone widths, and the last hour's charts ---------------------------

MEASURE = """(() => {
  const vw = document.documentElement.clientWidth;
  const box = (e) => { const r = e.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, width: r.width, height: r.height}; };
  const name = (e) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '');
  const outside = [...document.querySelectorAll('body *')].filter((e) => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && (r.right > vw + 0.5 || r.left < -0.5);
  }).map(name);
  const rows = [...document.querySelectorAll('#clients tbody tr')].map(
    (tr) => [...tr.children].map(box));
  return {
    viewport: vw,
    scrollWidth: document.documentElement.scrollWidth,
    outside: outside,
    clients: box(document.querySelector('#clients')),
    thead: getComputedStyle(document.querySelector('#clients thead')).display,
    rows: rows,
    charts: [...document.querySelectorAll('figure.chart svg')].map(box),
    bars: [...document.querySelectorAll('figure.chart rect')].length,
  };
})()"""


def png_width(png: bytes) -> int:
    """The width in the PNG's IHDR chunk."""
    assert png.startswith(b"\x89PNG")
    return int.from_bytes(png[16:20], "big")


@pytest.mark.parametrize("store_config", ["redis"], indirect=True)
async def test_dashboard_fits_1280_and_390_pixels_and_shows_the_last_hour(
    broker: BrokerFactory, emulator: Emulator
) -> None:
    """At 1280 px the clients are a table and the three charts sit side by side; at 390 px
    nothing is cut off or scrolls sideways: each client's cells stack and the charts stack; the
    charts count this run's refreshes, failure and permits."""
    async with broker(clients=rejected_payouts(emulator)) as http:
        assert_token(await http.get("/token", headers=orders()))
        refused = await http.get("/token?client=payouts", headers=billing())
        assert_error(refused, 502, "upstream_invalid_client")
        for _ in range(3):
            assert (await http.post("/budget/acquire", headers=orders())).status_code == 200
        page = await http.get("/health", headers={"Accept": "text/html"})
        async with chromium() as browser:
            wide = await shoot(browser, f"{http.base_url}/health", 1280, MEASURE)
            narrow = await shoot(browser, f"{http.base_url}/health", 390, MEASURE)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard-1280.png").write_bytes(wide.png)
    (ARTIFACTS / "dashboard-390.png").write_bytes(narrow.png)

    for shot, width in ((wide, 1280), (narrow, 390)):
        measured = shot.measured
        assert measured["viewport"] == width
        assert png_width(shot.png) == width and len(shot.png) > 10_000
        assert measured["scrollWidth"] <= width, "the page scrolls sideways"
        assert measured["outside"] == [], "elements cut off at the right edge"
        assert measured["clients"]["right"] <= width
        assert len(measured["charts"]) == 3 and measured["bars"] >= 3
        for chart in measured["charts"]:
            assert 0 < chart["right"] <= width and chart["height"] > 40

    # Desktop: a real table (header shown, each row's cells side by side), charts in one row.
    assert wide.measured["thead"] != "none"
    for cells in wide.measured["rows"]:
        assert len({round(cell["top"]) for cell in cells}) == 1
    assert len({round(chart["top"]) for chart in wide.measured["charts"]}) == 1
    # Phone: the header hidden, each row's cells stacked at the same left edge, charts stacked.
    assert narrow.measured["thead"] == "none"
    for cells in narrow.measured["rows"]:
        assert len({round(cell["left"]) for cell in cells}) == 1
        tops = [cell["top"] for cell in cells]
        assert tops == sorted(tops) and len(set(tops)) == len(tops)
    assert len({round(chart["top"]) for chart in narrow.measured["charts"]}) == 3

    dom = Dom(page.text)
    refreshes = dom.one(id="chart-refreshes")["attrs"]
    assert (refreshes["data-refreshes"], refreshes["data-failures"]) == ("1", "1")
    assert refreshes["data-minutes"] == "60"
    assert dom.one(id="chart-errors")["attrs"]["data-errors"] == "1"
    budget = dom.one(id="chart-budget")["attrs"]
    assert (budget["data-grants"], budget["data-peak"], budget["data-limit"]) == ("3", "3", "50")
    assert "<script" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
