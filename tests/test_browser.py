"""The built book in a real browser: headless Chromium at a desktop width (1280 px) and a
phone width (390 px) opens the results page and one chapter, served over localhost.

Checked on each: the page body never scrolls sideways (``scrollWidth <= innerWidth``; wide
tables and formulas scroll inside their own boxes), a chapter shows its verdict box, one
search field at most is visible, no display formula is clipped, every figure has alt text.

Chromium is driven over its DevTools pipe (``--remote-debugging-pipe``), with nothing to
install but the browser: headless Chromium does not shrink its window below 500 px, so the
phone width needs ``Emulation.setDeviceMetricsOverride``. Without Chromium the tests skip.
Screenshots go to the test's temporary folder, or to ``$REPRO_BROWSER_SHOTS`` (the committed
evidence in ``results/browser/`` is made with ``REPRO_BROWSER_SHOTS=results/browser``).
``REPRO_BROWSER_HTML=_build/html`` checks an existing build instead of building a copy.
"""
from __future__ import annotations

import base64
import fcntl
import functools
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--hide-scrollbars", "--mute-audio"]
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}

MEASURE = r"""
(() => {
  const W = window.innerWidth;
  const visible = el => { const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'; };
  const scrolls = el => { for (let e = el; e && e !== document.body; e = e.parentElement) {
      const o = getComputedStyle(e).overflowX; if (o === 'auto' || o === 'scroll' || o === 'hidden') return e; }
    return null; };
  const wide = [];
  for (const el of document.querySelectorAll('.bd-article *')) {
    const r = el.getBoundingClientRect();
    if (r.right > W + 1 && r.width > 0 && !scrolls(el.parentElement))
      wide.push(el.tagName.toLowerCase() + (el.className && el.className.baseVal === undefined ? '.' + String(el.className).split(' ')[0] : ''));
  }
  const maths = [...document.querySelectorAll('mjx-container[display="true"], div.math')];
  const clipped = maths.filter(m => { const box = scrolls(m) || m;
    return box.scrollWidth > box.clientWidth + 1 && getComputedStyle(box).overflowX === 'hidden'; });
  const imgs = [...document.querySelectorAll('.bd-article img')].filter(visible);
  return {
    innerWidth: W, scrollWidth: document.scrollingElement.scrollWidth,
    verdictBox: document.querySelectorAll('.verdict-box').length,
    verdictBoxText: (document.querySelector('.verdict-box') || {}).innerText || '',
    searchFields: [...document.querySelectorAll('.search-button-field, .bd-search input')].filter(visible).length,
    overflowing: [...new Set(wide)].slice(0, 8),
    displayMath: maths.length, clippedMath: clipped.length,
    images: imgs.length, imagesWithoutAlt: imgs.filter(i => !(i.getAttribute('alt') || '').trim()).length,
    figureCaptions: document.querySelectorAll('figure figcaption, .figure .caption').length,
    tables: document.querySelectorAll('table.results-table').length,
  };
})()
"""


# -- a tiny DevTools client over the pipe ------------------------------------------------
def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class Browser:
    """Headless Chromium with ``--remote-debugging-pipe`` (fd 3: commands in, fd 4: replies out)."""

    def __init__(self, exe: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="repro-chromium-")
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_r, from_w)]   # clear of 3 and 4

        def plumb() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen([exe, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
                                      "about:blank"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=plumb, pass_fds=(3, 4, *high))
        for fd in (to_r, from_w, *high):
            os.close(fd)
        self.w = os.fdopen(to_w, "wb", buffering=0)
        self.r = os.fdopen(from_r, "rb", buffering=0)
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read(self, timeout: float) -> dict:
        import select

        end = time.monotonic() + timeout
        while b"\0" not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("no reply from chromium")
            chunk = self.r.read(1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.w.write(json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float = 60) -> dict:
        for i, ev in enumerate(self.events):
            if ev.get("method") == method and ev.get("sessionId") == session:
                return self.events.pop(i)
        end = time.monotonic() + timeout
        while True:
            ev = self._read(max(0.1, end - time.monotonic()))
            if ev.get("method") == method and ev.get("sessionId") == session:
                return ev
            self.events.append(ev)

    def look(self, url: str, width: int, height: int, shot: Path | None = None) -> dict:
        """Open ``url`` in a fresh tab at ``width`` × ``height`` CSS px; measure (MEASURE) and
        optionally save a screenshot of the first screen."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=s)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": width < 600}, session=s)
        self.send("Page.navigate", {"url": url}, session=s)
        self.wait_event("Page.loadEventFired", s)
        for _ in range(40):   # MathJax typesets after load
            done = self.send("Runtime.evaluate", {"expression": "!document.querySelector('.math') || "
                                                  "!!document.querySelector('mjx-container')", "returnByValue": True},
                             session=s)["result"].get("value")
            if done:
                break
            time.sleep(0.25)
        time.sleep(0.3)
        res = self.send("Runtime.evaluate", {"expression": MEASURE, "returnByValue": True}, session=s)
        if "exceptionDetails" in res:
            raise RuntimeError(f"measuring {url}: {res['exceptionDetails']}")
        out = res["result"]["value"]
        if shot is not None:
            png = self.send("Page.captureScreenshot", {"format": "png"}, session=s)["data"]
            shot.parent.mkdir(parents=True, exist_ok=True)
            shot.write_bytes(base64.b64decode(png))
        self.send("Target.closeTarget", {"targetId": target})
        return out

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for f in (self.w, self.r):
            f.close()
        shutil.rmtree(self.profile, ignore_errors=True)


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def html_dir(tmp_path_factory) -> Path:
    """The built book: ``$REPRO_BROWSER_HTML``, else a fresh build of a copy of the project's."""
    if chromium() is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install -y chromium)")
    given = os.environ.get("REPRO_BROWSER_HTML")
    if given:
        path = (PROJECT / given).resolve()
        if not (path / "book" / "results.html").is_file():
            pytest.skip(f"REPRO_BROWSER_HTML={given} holds no built book")
        return path
    from repro import book

    book.ensure_mathjax(PROJECT)
    root = tmp_path_factory.mktemp("browser-book")
    shutil.copy2(PROJECT / "_config.yml", root / "_config.yml")
    shutil.copytree(PROJECT / "book", root / "book", ignore=shutil.ignore_patterns(".*", "*.failed.ipynb", "__pycache__"))
    if (PROJECT / "results").is_dir():
        shutil.copytree(PROJECT / "results", root / "results", ignore=shutil.ignore_patterns("browser"))
    book.build(root)
    return root / "_build" / "html"


@pytest.fixture(scope="module")
def served(html_dir):
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", html_dir
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def browser():
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install -y chromium)")
    b = Browser(exe)
    yield b
    b.close()


def _shots(tmp_path: Path) -> Path:
    given = os.environ.get("REPRO_BROWSER_SHOTS")
    return (PROJECT / given) if given else tmp_path


def _chapter(html_dir: Path) -> str:
    pages = sorted((html_dir / "book" / "chapters").glob("*.html"))
    if not pages:
        pytest.skip("the book has no chapter yet")
    preferred = [p for p in pages if p.stem == "41-ghostbn"]
    return (preferred or pages)[0].stem


# -- the checks --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("width", list(WIDTHS))
def test_results_page_fits_the_screen(served, browser, width, tmp_path):
    url, _ = served
    w, h = WIDTHS[width]
    m = browser.look(f"{url}/book/results.html", w, h, _shots(tmp_path) / f"results-{w}px.png")
    print(json.dumps(m))
    assert m["innerWidth"] == w
    assert m["scrollWidth"] <= m["innerWidth"], f"the page scrolls sideways at {w} px: {m['overflowing']}"
    assert m["tables"] >= 2, "no summary and claim tables"
    assert m["searchFields"] <= 1, f"{m['searchFields']} search fields visible"


@pytest.mark.slow
@pytest.mark.parametrize("width", list(WIDTHS))
def test_chapter_fits_the_screen_and_shows_its_verdict(served, browser, width, tmp_path):
    url, html_dir = served
    name = _chapter(html_dir)
    w, h = WIDTHS[width]
    m = browser.look(f"{url}/book/chapters/{name}.html", w, h, _shots(tmp_path) / f"{name}-{w}px.png")
    print(json.dumps(m))
    assert m["scrollWidth"] <= m["innerWidth"], f"the page scrolls sideways at {w} px: {m['overflowing']}"
    assert m["verdictBox"] == 1, "no verdict box under the title"
    assert "Verdict" in m["verdictBoxText"] and "tier" in m["verdictBoxText"] and "seeds" in m["verdictBoxText"]
    assert m["clippedMath"] == 0, f"{m['clippedMath']} display formulas are clipped"
    assert m["images"] >= 1 and m["imagesWithoutAlt"] == 0
    assert m["figureCaptions"] >= 1, "no numbered figure captions"
    assert m["searchFields"] <= 1, f"{m['searchFields']} search fields visible"


@pytest.mark.slow
def test_protocol_maths_is_not_clipped_on_a_phone(served, browser, tmp_path):
    url, _ = served
    m = browser.look(f"{url}/book/protocol.html", 390, 844, _shots(tmp_path) / "protocol-390px.png")
    print(json.dumps(m))
    assert m["displayMath"] >= 1 and m["clippedMath"] == 0
    assert m["scrollWidth"] <= m["innerWidth"], m["overflowing"]
