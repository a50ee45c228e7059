"""The status page in a real browser: Debian's headless Chromium, driven by Selenium.

The app runs on 127.0.0.1 in a thread of its own over a FakeView. The tests load the page,
check what a person would see (counts, rows, sparklines, colours in a screenshot, no console
error, hence no CSP violation), then change a target's state in the view and wait for the
page to show it without a reload. Screenshots go to the test's tmp dir, and also to
``$SIPALIVE_SCREENSHOT_DIR`` if that is set.

No Chromium, chromedriver or selenium: skipped, but a failure under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from fakeview import FakeView, make_target
from sipalive.http.app import make_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1000",
    "--hide-scrollbars",
]
RED = (0xD9, 0x36, 0x36)  # --unreachable in page.CSS
GREEN = (0x1F, 0x9D, 0x55)  # --reachable
T = TypeVar("T")


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing (pip install selenium)"
    return None


class AppThread:
    """The app on 127.0.0.1:<free port>, served by an event loop in its own thread."""

    def __init__(self, view: FakeView, token: str | None = None) -> None:
        self.view = view
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(make_app(view, token=token))
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> AppThread:
        self.thread.start()
        self.call(self._start)
        return self

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (a plain function or a coroutine function) on the server's loop."""

        async def wrapper() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout=10)

    def __exit__(self, *exc: object) -> None:
        self.call(self.runner.cleanup)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    reason = _missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"headless browser needed under CI: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], T], timeout: float = 8.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def save(png: bytes, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(png)
    if os.environ.get("SIPALIVE_SCREENSHOT_DIR"):
        target = Path(os.environ["SIPALIVE_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit truecolour PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8
            assert colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        method, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if method == 1:
                line[i] = (line[i] + a) & 0xFF
            elif method == 2:
                line[i] = (line[i] + b) & 0xFF
            elif method == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif method == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def share_of(png: bytes, colour: tuple[int, int, int]) -> float:
    """Fraction of the image's pixels within a few levels of ``colour``."""
    width, height, rows = decode_png(png)
    channels = len(rows[0]) // width
    hits = 0
    for row in rows:
        for x in range(0, len(row), channels):
            if all(abs(row[x + k] - colour[k]) <= 4 for k in range(3)):
                hits += 1
    return hits / (width * height)


def text_of(driver: Any, selector: str) -> str:
    return str(driver.execute_script(f"return document.querySelector({selector!r}).textContent"))


def test_status_page_renders_and_follows_changes_live(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    now = time.time()
    view = FakeView.many(57, now=now)
    view.add(make_target('core "A" \\ <b>', "unreachable", i=7, now=now, group="core"))
    with AppThread(view) as app:
        browser.get(app.url + "/")
        assert browser.title == "sipalive · 7 unreachable"
        counts = {
            el.get_attribute("data-count"): int(el.text)
            for el in browser.find_elements(By.CSS_SELECTOR, "[data-count]")
        }
        assert counts == {
            s: sum(t.state == s for t in view.targets())
            for s in ("unreachable", "lagged", "unknown", "reachable", "nonqualified")
        }
        rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert len(rows) == 58
        assert [r.get_attribute("data-state") for r in rows[:7]] == ["unreachable"] * 7
        assert browser.find_element(By.LINK_TEXT, 'core "A" \\ <b>')
        sparks = browser.find_elements(By.CSS_SELECTOR, "svg.spark polyline")
        assert len(sparks) == sum(1 for t in view.targets() if t.recent_rtts)
        assert sparks[0].size["width"] > 60

        badge = rows[0].find_element(By.CSS_SELECTOR, ".badge")
        assert badge.value_of_css_property("background-color") == "rgba(217, 54, 54, 1)"
        assert share_of(badge.screenshot_as_png, RED) > 0.5
        page_png = browser.get_screenshot_as_png()
        save(page_png, tmp_path, "status.png")
        assert len(page_png) > 30_000
        width, height = struct.unpack(">II", page_png[16:24])
        assert width == 1440
        assert height > 600

        search = browser.find_element(By.ID, "search")
        search.send_keys("peer-00001")
        visible = [r for r in rows if r.is_displayed()]
        assert len(visible) == 10
        assert text_of(browser, "#shown") == "10"
        search.clear()
        browser.execute_script(
            "document.getElementById('search').dispatchEvent(new Event('input'))"
        )
        assert len([r for r in rows if r.is_displayed()]) == 58

        browser.execute_script("window.notReloaded = true")
        app.call(lambda: view.transition("peer-000000", "unreachable", "timeout"))
        app.call(lambda: view.transition("peer-000016", "reachable", "recovered", 0.012))
        row0 = 'tr[data-target="peer-000000"] .badge'
        assert wait_for(lambda: text_of(browser, row0) == "unreachable"), "no live update"
        assert text_of(browser, 'tr[data-target="peer-000016"] .badge') == "reachable"
        assert text_of(browser, 'tr[data-target="peer-000016"] .rtt') == "12.0 ms"
        assert wait_for(lambda: text_of(browser, '[data-count="unreachable"]') == "8")
        assert text_of(browser, '[data-count="lagged"]') == str(counts["lagged"] - 1)
        assert text_of(browser, '[data-count="reachable"]') == str(counts["reachable"])
        assert browser.execute_script("return window.notReloaded") is True
        assert browser.title == "sipalive · 8 unreachable"
        assert text_of(browser, "#live") == "live"
        flipped = browser.find_element(By.CSS_SELECTOR, row0)
        assert flipped.value_of_css_property("background-color") == "rgba(217, 54, 54, 1)"
        time.sleep(1.6)  # let the row's highlight fade before the picture
        save(browser.get_screenshot_as_png(), tmp_path, "status-after-change.png")

        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []


def test_target_page_plot(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    now = time.time()
    view = FakeView.many(20, now=now)
    view.fill_series("peer-000001", now)
    view.transition("peer-000001", "lagged", "rtt 412 ms", 0.412)
    view.transition("peer-000001", "reachable", "rtt", 0.015)
    with AppThread(view) as app:
        browser.get(app.url + "/targets/peer-000001")
        plot = browser.find_element(By.CSS_SELECTOR, "svg.plot")
        assert plot.size["width"] > 600
        assert len(plot.find_elements(By.CSS_SELECTOR, "polygon.band")) == 2
        assert len(plot.find_elements(By.CSS_SELECTOR, "polyline.mean")) == 2
        labels = [e.text for e in plot.find_elements(By.CSS_SELECTOR, "text.xlabel")]
        assert "UTC" in labels
        assert len(labels) >= 8
        transitions = browser.find_elements(By.CSS_SELECTOR, "section.panel table tbody tr")
        assert [r.find_elements(By.CSS_SELECTOR, ".badge")[1].text for r in transitions] == [
            "reachable",
            "lagged",
        ]
        png = plot.screenshot_as_png
        assert len(png) > 10_000
        save(browser.get_screenshot_as_png(), tmp_path, "target.png")
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
