"""Open a generated leaderboard and dashboard in headless Chromium (Chrome DevTools Protocol over a websocket):
the overlay images render (non-blank screenshot with green and red contour pixels) and clicking a column
header re-orders the rows."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

websocket = pytest.importorskip(
    "websocket", reason="websocket-client is not installed (requirements-test.txt)"
)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium():
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """A headless Chromium with a fresh profile, driven through one page's DevTools websocket."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-port=0",
             "--window-size=1200,900"]  # fmt: skip

    def __init__(self, executable):
        self.profile = tempfile.mkdtemp(prefix="modelselector-chromium-")
        self.proc = subprocess.Popen([executable, *self.FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        port = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            if "DevTools listening on ws://" in line:
                port = int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                break
        if port is None:
            self.close()
            raise RuntimeError("chromium did not start its DevTools endpoint")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        self.ws = websocket.create_connection(
            pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True
        )
        self._id = 0
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"].get("value")

    def open(self, path):
        self.call("Page.navigate", url=Path(path).resolve().as_uri())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.js(
                "document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{path} did not finish loading")

    def click(self, selector):
        rect = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
                       " const r = e.getBoundingClientRect();"
                       " return [r.left + r.width / 2, r.top + r.height / 2]; })()")  # fmt: skip
        for kind in ("mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent", type=kind, x=rect[0], y=rect[1], button="left", clickCount=1
            )

    def screenshot(self, selector=None):
        from PIL import Image as PILImage

        params = {"format": "png"}
        if selector:
            r = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
                        " const r = e.getBoundingClientRect();"
                        " return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]; })()")  # fmt: skip
            params["clip"] = {"x": r[0], "y": r[1], "width": r[2], "height": r[3], "scale": 1}
        data = base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
        return np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB")).astype(int)

    def close(self):
        try:
            if getattr(self, "ws", None):
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    exe = find_chromium()
    if exe is None:
        pytest.skip("no chromium executable found (install Debian's chromium package; .ci/run does)")
    b = Browser(exe)
    yield b
    b.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """A leaderboard of three candidates and their dashboards, with real overlays of a shifted square."""
    from ModelSelectorLib.io import Image
    from ModelSelectorLib.ranking.leaderboard import (
        candidate_row,
        render_overlay,
        write_dashboard,
        write_leaderboard,
    )

    root = tmp_path_factory.mktemp("pages")
    rng = np.random.default_rng(0)
    rows, links = [], {}
    for k, (name, shift) in enumerate((("alpha", 1), ("beta", 6), ("gamma", 3))):
        cases = []
        for i in range(3):
            arr = rng.normal(80, 10, (48, 48)).astype(np.float32)
            truth = np.zeros((48, 48), np.uint8)
            truth[12:30, 10 + i : 28 + i] = 1
            pred = np.roll(truth, shift, axis=1)
            arr[truth > 0] += 100
            image = Image(arr, (0.8, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
            render_overlay(image, truth, pred, root / "dashboards" / name / "overlays" / f"case{i}.png")
            inter = np.count_nonzero(truth & pred)
            cases.append({"id": f"case{i}", "dice": 2 * inter / (2 * truth.sum()), "hd95": shift * 0.8,
                          "msd": shift * 0.4, "overlay": f"overlays/case{i}.png"})  # fmt: skip
        ev = {"candidate": name, "model": f"t-{name}", "version": "0.1.0", "bundle": str(root / "none"),
              "evaluated": "today", "cases": cases}  # fmt: skip
        write_dashboard(ev, root / "dashboards" / name, "dice", leaderboard_href="../../leaderboard.html")
        rows.append(candidate_row(ev, {"settings": {"architecture": name, "lr": 10.0 ** -(k + 2)},
                                       "training_time_s": [30.0, 5.0, 12.0][k]}))  # fmt: skip
        links[name] = f"dashboards/{name}/index.html"
    write_leaderboard(rows, root / "leaderboard.html", "dice", "Leaderboard", links)
    # a leaderboard wider and taller than the window: 40 candidates, 30 settings that differ
    wide = [candidate_row({**ev, "candidate": f"c{i:02d}"}, {"settings": {f"setting_{k}": i * k for k in range(30)}})
            for i in range(40)]  # fmt: skip
    write_leaderboard(wide, root / "wide.html", "dice", "Wide leaderboard")
    return root


def _order(browser):
    return browser.js(
        "Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(r => r.dataset.candidate)"
    )


def test_leaderboard_sorts_by_clicked_column(browser, pages):
    browser.open(pages / "leaderboard.html")
    assert _order(browser) == ["alpha", "gamma", "beta"]  # ranked by Dice, best first
    headers = browser.js(
        "Array.from(document.querySelectorAll('#leaderboard thead th')).map(h => h.textContent.trim())"
    )
    col = headers.index("training s") + 1
    browser.click(f"#leaderboard thead th:nth-child({col})")
    assert _order(browser) == ["beta", "gamma", "alpha"]  # 5 s, 12 s, 30 s
    browser.click(f"#leaderboard thead th:nth-child({col})")
    assert _order(browser) == ["alpha", "gamma", "beta"]  # reversed
    browser.click(f"#leaderboard thead th:nth-child({headers.index('candidate') + 1})")
    assert _order(browser) == ["alpha", "beta", "gamma"]  # by name
    shot = browser.screenshot()
    assert shot.std() > 5, "the leaderboard page rendered blank"
    # the link to a dashboard leads to a page that exists
    href = browser.js("document.querySelector('a[href*=\"dashboards/beta\"]').getAttribute('href')")
    assert (pages / href).is_file()


def test_dashboard_overlays_render(browser, pages):
    browser.open(pages / "dashboards" / "beta" / "index.html")
    sizes = browser.js(
        "Array.from(document.querySelectorAll('img.overlay')).map(i => [i.naturalWidth, i.naturalHeight])"
    )
    assert len(sizes) == 3 and all(w > 0 and h > 0 for w, h in sizes), f"overlay images did not load: {sizes}"
    shot = browser.screenshot("img.overlay")
    assert shot.shape[0] > 50 and shot.shape[1] > 50 and shot.std() > 10, "overlay screenshot is blank"
    green = np.all(shot == (0, 255, 0), axis=-1).sum()
    red = np.all(shot == (255, 0, 0), axis=-1).sum()
    assert green > 30 and red > 30, f"contours not visible in the screenshot (green {green}, red {red})"
    # the per-case table sorts too: by case name descending after two clicks
    cases = "Array.from(document.querySelectorAll('#cases tbody tr')).map(r => r.dataset.case)"
    browser.click("#cases thead th:nth-child(1)")
    assert browser.js(cases) == ["case0", "case1", "case2"]
    browser.click("#cases thead th:nth-child(1)")
    assert browser.js(cases) == ["case2", "case1", "case0"]


def test_a_wide_long_table_scrolls_in_its_box_under_a_header_that_stays(browser, pages):
    browser.open(pages / "wide.html")
    page_width, window = browser.js("[document.documentElement.scrollWidth, window.innerWidth]")
    assert page_width <= window, "the page itself got wider than the window"
    box = "document.querySelector('div.scroll')"
    assert browser.js(f"{box}.scrollWidth > {box}.clientWidth && {box}.scrollHeight > {box}.clientHeight")
    browser.js(f"{box}.scrollTop = 600; {box}.scrollLeft = 400")
    header_top, box_top = browser.js(
        f"[document.querySelector('#leaderboard thead th').getBoundingClientRect().top, "
        f"{box}.getBoundingClientRect().top]"
    )
    assert abs(header_top - box_top) <= 2, "the header row scrolled out of view"


def test_an_overlay_thumbnail_opens_its_picture(browser, pages):
    browser.open(pages / "dashboards" / "alpha" / "index.html")
    links = browser.js(
        "Array.from(document.querySelectorAll('a.overlay-link')).map(a => [a.getAttribute('href'), "
        "a.querySelector('img.overlay').getAttribute('src')])"
    )
    assert len(links) == 3 and all(href == src for href, src in links)
    browser.click("a.overlay-link")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not browser.js("location.href").endswith(".png"):
        time.sleep(0.1)
    assert browser.js("location.href") == (pages / "dashboards" / "alpha" / links[0][0]).resolve().as_uri()
