"""The dashboard in a real browser against a real tickhub process (issue 6): candles, SMA10 and
volume drawn from history, live ticks reaching the last price and the current candle, the
connection indicator across a server crash and restart, the symbol and interval controls, and
a console free of errors. Whatever the page shows is compared with the REST API's candles."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import artifacts_dir
from tests.e2e.conftest import CHROMIUM, Console, Server

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: apt-get install chromium (or `make system-deps`)",
        allow_module_level=True,
    )

from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

pytestmark = pytest.mark.e2e

HISTORY_MINUTES = 40
HISTORY_STEP_S = 10
START_PRICES = {"BTCUSDT": 68_000.0, "ETHUSDT": 2_400.0}
FIELDS = ("open", "high", "low", "close", "volume")

# Whether the page's bars for (symbol, interval) are exactly the expected ones.
BARS_MATCH = """([symbol, interval, expected]) => {
  const s = window.tickhub?.state;
  if (!s || s.loading || s.symbol !== symbol || s.interval !== interval) return false;
  if (s.bars.length !== expected.length) return false;
  const near = (a, b) => Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));
  return expected.every((e, i) => {
    const b = s.bars[i];
    return b.time === e.time && b.count === e.count
      && ['open', 'high', 'low', 'close', 'volume'].every((k) => near(b[k], e[k]));
  });
}"""

STATE = """() => {
  const s = window.tickhub.state;
  return {symbol: s.symbol, interval: s.interval, connection: s.connection, loading: s.loading,
          error: s.error, lastPrice: s.lastPrice, bars: s.bars, sma: s.sma, volume: s.volume,
          metrics: s.metrics};
}"""

# Columns of the chart's pane canvases (axes excluded) holding at least two pixels of each
# series colour, taken from the page's CSS custom properties and composited over the chart
# background the way the library draws them. Two pixels per column leave out the 1-pixel
# dashed last-price line, so `up` and `down` count candle bodies and wicks.
CHART_COLUMNS = """() => {
  const css = getComputedStyle(document.documentElement);
  const probe = document.createElement('canvas');
  probe.width = probe.height = 1;
  const pctx = probe.getContext('2d', {willReadFrequently: true});
  const rgb = (name) => {
    pctx.fillStyle = css.getPropertyValue('--chart-bg').trim();
    pctx.fillRect(0, 0, 1, 1);
    pctx.fillStyle = css.getPropertyValue(name).trim();
    pctx.fillRect(0, 0, 1, 1);
    return [...pctx.getImageData(0, 0, 1, 1).data.slice(0, 3)];
  };
  const targets = {up: rgb('--up'), down: rgb('--down'), sma: rgb('--sma'),
                   volumeUp: rgb('--volume-up'), volumeDown: rgb('--volume-down')};
  const chart = document.getElementById('chart');
  const width = chart.getBoundingClientRect().width;
  const found = Object.fromEntries(Object.keys(targets).map((k) => [k, 0]));
  for (const canvas of chart.querySelectorAll('canvas')) {
    const box = canvas.getBoundingClientRect();
    if (box.width < width * 0.5 || box.height < 40 || !canvas.width || !canvas.height) continue;
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (const [name, [r, g, b]] of Object.entries(targets)) {
      for (let x = 0; x < canvas.width; x += 1) {
        let hits = 0;
        for (let y = 0; y < canvas.height && hits < 2; y += 1) {
          const i = (y * canvas.width + x) * 4;
          if (Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) <= 6
              && data[i + 3] === 255) hits += 1;
        }
        if (hits >= 2) found[name] += 1;
      }
    }
  }
  return found;
}"""


# --- data -----------------------------------------------------------------------------------


def history(symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"), seed: int = 6) -> list[dict]:
    """HISTORY_MINUTES of ticks per symbol, every HISTORY_STEP_S, ending a minute ago."""
    rng = random.Random(seed)
    end = time.time() - 60
    items = []
    for symbol in symbols:
        price = START_PRICES[symbol]
        steps = HISTORY_MINUTES * 60 // HISTORY_STEP_S
        for i in range(steps):
            price = round(price * (1 + rng.gauss(0, 0.002)), 2)
            items.append(
                {
                    "symbol": symbol,
                    "price": price,
                    "ts": round(end - (steps - i) * HISTORY_STEP_S, 3),
                    "volume": round(rng.uniform(0.01, 2), 3),
                    "idempotencyKey": f"{symbol}-{seed}-{i}",
                }
            )
    return items


def current_minute_ticks(symbol: str, prices: list[float], key: str) -> list[dict]:
    """Ticks inside the current minute, up to now, in order, and later than those of any
    earlier call (the page takes an older tick as late: it is not the last price); volumes
    1, 2, 3, ..."""
    now = time.time()
    minute = math.floor(now / 60) * 60
    n = len(prices)
    spread = min(0.001, (now - minute) / (n + 1))  # 1 ms apart, all after the minute began
    return [
        {
            "symbol": symbol,
            "price": price,
            "ts": now - (n - i) * spread,
            "volume": i + 1,
            "idempotencyKey": f"{key}-{i}",
        }
        for i, price in enumerate(prices)
    ]


def as_bars(items: list[dict]) -> list[dict]:
    """REST candles in the page's bar shape (time = bucket start, epoch seconds)."""
    return [{"time": c["ts"], "count": c["count"], **{k: c[k] for k in FIELDS}} for c in items]


def bar_differences(page_bars: list[dict], expected: list[dict]) -> list[str]:
    shown = {b["time"]: b for b in page_bars}
    wanted = {b["time"]: b for b in expected}
    out = [f"missing bar {t}: {wanted[t]}" for t in sorted(wanted.keys() - shown.keys())]
    out += [f"extra bar {t}: {shown[t]}" for t in sorted(shown.keys() - wanted.keys())]
    for t in sorted(wanted.keys() & shown.keys()):
        a, b = shown[t], wanted[t]
        if a["count"] != b["count"] or any(a[k] != pytest.approx(b[k], rel=1e-9) for k in FIELDS):
            out.append(f"bar {t}: page {a} != REST {b}")
    return out


# --- page -----------------------------------------------------------------------------------


def open_dashboard(page: Page, server: Server, query: str = "") -> None:
    page.goto(f"{server.url}/{query}")
    wait_live(page)


def wait_live(page: Page, timeout: float = 10_000) -> None:
    page.wait_for_selector('#connection-status[data-state="live"]', timeout=timeout)
    assert page.evaluate("window.tickhub.state.connection") == "live"


def wait_last_price(page: Page, price: float, timeout: float = 5_000) -> None:
    page.wait_for_function(
        "(p) => window.tickhub.state.lastPrice === p", arg=price, timeout=timeout
    )


def state(page: Page) -> dict[str, Any]:
    return page.evaluate(STATE)


def wait_bars(page: Page, server: Server, symbol: str, interval: str = "1m") -> list[dict]:
    """Wait until the page shows exactly the REST candles of (symbol, interval); return them."""
    items = server.candles(symbol, interval)
    expected = as_bars(items)
    try:
        page.wait_for_function(BARS_MATCH, arg=[symbol, interval, expected], timeout=10_000)
    except PlaywrightTimeoutError:
        shown = state(page)
        pytest.fail(
            f"page shows {shown['symbol']} {shown['interval']} (error {shown['error']!r}), "
            f"not the REST candles of {symbol} {interval}: "
            + "; ".join(bar_differences(shown["bars"], expected)[:5])
        )
    return items


def shown_number(page: Page, selector: str) -> float:
    return float(page.text_content(selector).replace(",", ""))


def screenshot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


# --- tests ----------------------------------------------------------------------------------


def test_page_shows_candles_sma10_and_volume(server: Server, page: Page, console: Console) -> None:
    server.post_ticks(history())
    open_dashboard(page, server, "?symbol=BTCUSDT&interval=1m")
    items = wait_bars(page, server, "BTCUSDT")
    assert len(items) >= HISTORY_MINUTES
    # Ticks keep flowing while the page is open: the last price follows them.
    last = items[-1]["close"]
    for n, step in enumerate((0.35, -0.2, 0.1)):
        price = round(last * (1 + step / 100), 2)
        server.post_ticks(current_minute_ticks("BTCUSDT", [price], f"flow-{n}"))
        wait_last_price(page, price)
    items = wait_bars(page, server, "BTCUSDT")

    shown = state(page)
    # SMA10 and volume are one point per bar, equal to the REST sma10 and volume.
    assert [p["time"] for p in shown["sma"]] == [b["time"] for b in shown["bars"]]
    assert [p["value"] for p in shown["sma"]] == pytest.approx([c["sma10"] for c in items])
    assert sum(c["sma10"] is not None for c in items) >= len(items) - 9 >= 30
    assert [v["value"] for v in shown["volume"]] == pytest.approx([c["volume"] for c in items])
    assert shown_number(page, "#last-price") == price == items[-1]["close"]
    assert page.text_content("#quote-symbol") == "BTCUSDT"

    # The chart really draws them: candle bodies of both colours, the SMA line, volume bars.
    drawn = page.evaluate(CHART_COLUMNS)
    assert drawn["up"] >= 10 and drawn["down"] >= 10, drawn
    assert drawn["sma"] >= 100, drawn
    assert drawn["volumeUp"] + drawn["volumeDown"] >= 20, drawn

    out = artifacts_dir("e2e")
    screenshot(page, out / "dashboard.png")
    # A phone opening the page (same symbol, now remembered by the page).
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(server.url + "/")
    wait_live(page)
    wait_bars(page, server, "BTCUSDT")
    # Nothing wider than the phone: no sideways scrolling.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.locator("#chart").bounding_box()["height"] >= 200
    drawn = page.evaluate(CHART_COLUMNS)
    assert drawn["up"] + drawn["down"] >= 10 and drawn["sma"] >= 50, drawn
    screenshot(page, out / "dashboard-phone.png")
    assert console.unexpected() == []


def test_live_ticks_reach_the_last_price_and_the_current_candle(
    server: Server, page: Page, console
) -> None:
    server.post_ticks(history(("BTCUSDT",)))
    open_dashboard(page, server, "?symbol=BTCUSDT&interval=1m")
    wait_bars(page, server, "BTCUSDT")

    # Open, high (above all history), low (below it), close: the minute's candle is known.
    prices = [68_011.11, 80_000.25, 50_000.75, 68_123.45]
    ticks = current_minute_ticks("BTCUSDT", prices, "known")
    minute = math.floor(ticks[0]["ts"] / 60) * 60
    expected = {"time": minute, "open": prices[0], "high": prices[1], "low": prices[2]}
    expected |= {"close": prices[3], "volume": 10, "count": 4}
    assert server.post_ticks(ticks)["accepted"] == 4
    # Within a second of the 202 the page shows them.
    page.wait_for_function(
        """([e]) => {
          const s = window.tickhub.state;
          const b = s.bars[s.bars.length - 1];
          return s.lastPrice === e.close && b && b.time === e.time && b.count === e.count
            && b.open === e.open && b.high === e.high && b.low === e.low && b.close === e.close;
        }""",
        arg=[expected],
        timeout=1_000,
    )
    shown = state(page)
    rest = server.client.get(
        "/api/v1/ticks/BTCUSDT/history", params={"view": "ohlc1m", "limit": 5}
    ).json()["items"]
    assert as_bars(rest)[-1] == expected
    assert shown["bars"][-1] == expected
    assert shown["sma"][-1]["value"] == pytest.approx(rest[-1]["sma10"])
    assert shown["lastPrice"] == 68_123.45
    assert shown_number(page, "#last-price") == 68_123.45
    # The change is against the previous candle's close, as REST has it.
    assert page.get_attribute("#last-change", "data-direction") == (
        "up" if rest[-2]["close"] < 68_123.45 else "down"
    )
    # The minute metrics follow: 4 trades, volume 10, VWAP of the four.
    vwap = sum(p * (i + 1) for i, p in enumerate(prices)) / 10
    page.wait_for_function(
        """(minute) => window.tickhub.state.metrics?.windowStart === minute
          && document.querySelector('#metric-count').textContent === '4'""",
        arg=minute,
        timeout=8_000,
    )
    assert shown_number(page, "#metric-volume") == 10
    assert shown_number(page, "#metric-vwap") == pytest.approx(vwap, abs=0.005)
    assert console.unexpected() == []


def test_a_conflated_burst_across_a_minute_boundary_ends_as_rest_has_it(
    server: Server, page: Page, console
) -> None:
    """The page's stream is conflated (one event per symbol per 250 ms). Two flushes in one
    interval, the second closing one minute and opening the next: the page hears the first
    at once and then only the second's last tick, in the new minute; it settles the closed
    minute from REST, so every bar still ends exactly as stored."""
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/realtime/ticks" in r.url else None)
    server.post_ticks(history(("BTCUSDT",)))
    open_dashboard(page, server, "?symbol=BTCUSDT&interval=1m")
    wait_bars(page, server, "BTCUSDT")
    assert streams and all("conflate=250" in url for url in streams), streams

    now = time.time()
    minute = math.floor(now / 60) * 60

    def tick(price: float, ts: float, key: str) -> dict:
        return {"symbol": "BTCUSDT", "price": price, "ts": ts, "volume": 1, "idempotencyKey": key}

    first = [tick(68_000.0 + i, minute - 2 + i / 100, f"first-{i}") for i in range(3)]
    closing = [tick(90_000.0, minute - 1, "high"), tick(40_000.0, minute - 0.5, "low")]
    assert server.post_ticks(first)["accepted"] == 3
    assert server.post_ticks([*closing, tick(68_500.0, now, "open")])["accepted"] == 3
    wait_last_price(page, 68_500.0)
    items = wait_bars(page, server, "BTCUSDT")
    closed = next(c for c in items if c["ts"] == minute - 60)
    assert (closed["high"], closed["low"], closed["close"]) == (90_000.0, 40_000.0, 40_000.0)
    assert console.unexpected() == []


def test_server_crash_and_restart_reconnects_with_complete_bars(
    server: Server, page: Page, console
) -> None:
    server.post_ticks(history(("BTCUSDT",)))
    open_dashboard(page, server, "?symbol=BTCUSDT&interval=1m")
    before = wait_bars(page, server, "BTCUSDT")
    server.post_ticks(current_minute_ticks("BTCUSDT", [68_200.0], "pre-crash"))
    wait_last_price(page, 68_200.0)

    server.kill()
    page.wait_for_selector('#connection-status[data-state="reconnecting"]', timeout=10_000)
    assert page.text_content("#connection-status") == "reconnecting"

    server.start()  # same port, same database
    # Posted before the page is back: it must not miss them. One lands in an old minute.
    late = {
        "symbol": "BTCUSDT",
        "price": 99_999.99,
        "ts": before[5]["ts"] + 30,
        "volume": 1,
        "idempotencyKey": "late",
    }
    server.post_ticks([*current_minute_ticks("BTCUSDT", [68_300.0, 68_250.5], "down"), late])
    wait_live(page, timeout=30_000)
    assert page.text_content("#connection-status") == "live"
    # And after it is back, live events flow again.
    server.post_ticks(current_minute_ticks("BTCUSDT", [68_275.75], "after"))
    wait_last_price(page, 68_275.75)
    after = wait_bars(page, server, "BTCUSDT")
    assert len(before) < len(after) <= len(before) + 2  # the current minute (or two)
    assert any(c["high"] == 99_999.99 for c in after)
    # Failed requests while the server was down are expected; nothing else is.
    assert console.unexpected(allow_network=True) == []


def test_symbol_and_interval_controls_switch_the_series(
    server: Server, page: Page, console
) -> None:
    server.post_ticks(history())
    open_dashboard(page, server)  # no preference yet: the first symbol, 1m
    wait_bars(page, server, "BTCUSDT", "1m")
    assert page.input_value("#symbol-select") == "BTCUSDT"

    # Keyboard: focus the select and step to the next option.
    page.focus("#symbol-select")
    page.keyboard.press("ArrowDown")
    wait_bars(page, server, "ETHUSDT", "1m")
    assert page.input_value("#symbol-select") == "ETHUSDT"
    page.focus("#interval-select")
    page.keyboard.press("ArrowDown")
    assert page.input_value("#interval-select") == "5m"
    five = wait_bars(page, server, "ETHUSDT", "5m")
    assert len(five) >= HISTORY_MINUTES // 5
    assert page.text_content("#quote-symbol") == "ETHUSDT"

    # Pointer-style selection, and the URL follows so a reload keeps the view.
    page.select_option("#symbol-select", "BTCUSDT")
    wait_bars(page, server, "BTCUSDT", "5m")
    assert "symbol=BTCUSDT" in page.url and "interval=5m" in page.url
    # A live tick folds into the current 5-minute bar exactly as the server aggregates it.
    server.post_ticks(current_minute_ticks("BTCUSDT", [68_555.55, 68_444.44], "five"))
    wait_last_price(page, 68_444.44)
    wait_bars(page, server, "BTCUSDT", "5m")
    page.reload()
    wait_live(page)
    wait_bars(page, server, "BTCUSDT", "5m")
    assert console.unexpected() == []


def test_no_console_errors_in_normal_use(server: Server, page: Page, console: Console) -> None:
    server.post_ticks(history())
    open_dashboard(page, server, "?symbol=BTCUSDT")
    wait_bars(page, server, "BTCUSDT")
    for n in range(3):
        server.post_ticks(
            current_minute_ticks("BTCUSDT", [68_100.0 + n], f"b{n}")
            + current_minute_ticks("ETHUSDT", [2_410.0 + n], f"e{n}")
        )
    wait_last_price(page, 68_102.0)
    # The watchlist shows both symbols; clicking one switches the chart.
    page.click('#watchlist button:has-text("ETHUSDT")')
    wait_bars(page, server, "ETHUSDT")
    page.click("#tz-toggle")
    assert page.text_content("#tz-toggle") == "Times: UTC"
    for interval in ("5m", "15m", "1h", "1d", "1m"):
        page.select_option("#interval-select", interval)
        wait_bars(page, server, "ETHUSDT", interval)
    page.wait_for_function("() => window.tickhub.state.metrics?.count >= 1", timeout=8_000)
    # The page renders on its next animation frame: no message stays up once all is loaded.
    page.wait_for_selector("#message", state="hidden", timeout=5_000)
    assert console.unexpected() == []
