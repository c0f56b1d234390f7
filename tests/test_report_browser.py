"""`ftlab report`'s page in a real browser: Debian's headless Chromium loads it, takes a screenshot
(kept as build/test-artifacts/report-ARCH.png) and reports every console message, script exception,
failed load and network request. Chromium is driven over its DevTools protocol on a pipe
(--remote-debugging-pipe: JSON messages ended by NUL, commands on fd 3, replies and events on fd 4),
so what is checked is what the browser itself reports, not a scrape of its log text.

`make browser` installs Chromium; where /usr/bin/chromium is missing these tests skip."""

from __future__ import annotations

import base64
import json
import math
import os
import select
import struct
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers import ARCHES
from tracers.cli.main import main

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "build" / "test-artifacts"
TIMEOUT = 60  # seconds for one page, start to close; a page this size takes about one
# Without the networking flags Chromium's background connections are refused by a closed network
# and at every start it fails to look up Google's hosts; --no-sandbox: the tests may run as root.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)
# argv: READ_FD WRITE_FD PROGRAM ARGS...: runs PROGRAM with READ_FD as its fd 3 and WRITE_FD as its fd 4
REMAP = "import os, sys; a = sys.argv; os.dup2(int(a[1]), 3); os.dup2(int(a[2]), 4); os.execv(a[3], a[3:])"
# what the browser reports as a problem with the page
PROBLEMS = ("Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Log.entryAdded", "Network.loadingFailed")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: `make browser` installs Debian's chromium"
)


class Chromium:
    """One headless Chromium, driven over the DevTools pipe; every event it sends is kept."""

    def __init__(self, profile: Path):
        self.deadline = time.monotonic() + TIMEOUT
        to_browser, from_browser = os.pipe(), os.pipe()
        fds = (to_browser[0], from_browser[1])
        # subprocess passes descriptors but does not renumber them (preexec_fn is thread-unsafe): REMAP does
        self.proc = subprocess.Popen(
            [sys.executable, "-c", REMAP, *map(str, fds), str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=fds,
        )
        for fd in fds:
            os.close(fd)
        self.w, self.r = to_browser[1], from_browser[0]
        self.pending, self.events, self.last_id = b"", [], 0

    def send(self, method: str, session: str | None = None, **params):
        self.last_id += 1
        msg = {"id": self.last_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while (reply := self._read()).get("id") != self.last_id:
            pass
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]

    def wait_for(self, method: str) -> dict:
        while True:
            found = [e for e in self.events if e["method"] == method]
            if found:
                return found[0]
            self._read()

    def _read(self) -> dict:
        while b"\0" not in self.pending:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer within {TIMEOUT} s")
            chunk = os.read(self.r, 1 << 16)
            if not chunk:
                raise EOFError(f"chromium exited ({self.proc.poll()})")
            self.pending += chunk
        raw, self.pending = self.pending.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg:
            self.events.append(msg)
        return msg

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(10)
        except (OSError, EOFError, TimeoutError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self.w)
            os.close(self.r)


def load(page: Path, profile: Path, screenshot: Path | None = None) -> dict:
    """Load page in a new tab of a fresh browser: its h2 headings as rendered, the URLs it
    requested, every problem the browser reported, the page's size; a full-page PNG to
    `screenshot`."""
    browser = Chromium(profile)
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        tab = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", tab)
        browser.send(
            "Emulation.setDeviceMetricsOverride", tab, width=1280, height=900, deviceScaleFactor=1, mobile=False
        )
        browser.send("Page.navigate", tab, url=page.as_uri())
        browser.wait_for("Page.loadEventFired")
        size = browser.send("Page.getLayoutMetrics", tab)["cssContentSize"]
        if screenshot is not None:
            shot = browser.send("Page.captureScreenshot", tab, format="png", captureBeyondViewport=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        headings = browser.send(
            "Runtime.evaluate",  # DevTools' own evaluation: the page itself runs no script
            tab,
            expression="Array.from(document.querySelectorAll('h2'), h => h.textContent)",
            returnByValue=True,
        )["result"]["value"]
        events = list(browser.events)
    finally:
        browser.close()
    return {
        "headings": headings,
        "requests": [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"],
        "problems": [(e["method"], e["params"]) for e in events if e["method"] in PROBLEMS],
        "size": (math.ceil(size["width"]), math.ceil(size["height"])),
    }


class _Headings(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headings, self._in = [], False

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._in = True
            self.headings.append("")

    def handle_endtag(self, tag):
        self._in = self._in and tag != "h2"

    def handle_data(self, data):
        if self._in:
            self.headings[-1] += data


@pytest.mark.parametrize("arch", [*ARCHES, "all"])
def test_the_report_renders_whole_with_no_errors(tmp_path, capsys, arch):
    page = tmp_path / "report.html"
    assert main(["report", "--arch", arch, "funcs", "chain_a(10)", "--at", "chain_c", "-o", str(page)]) == 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"report-{arch}.png"
    got = load(page, tmp_path / "profile", shot)
    with capsys.disabled():
        print(f"\nscreenshot: {shot}")
    parsed = _Headings()
    parsed.feed(page.read_text())
    assert got["problems"] == []
    assert got["requests"] == [page.as_uri()]  # the page alone: no asset, nothing from the network
    assert got["headings"] == parsed.headings and len(parsed.headings) == 6  # the DOM arrived whole
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == got["size"] and got["size"][1] > 2000  # the whole page


def test_the_check_sees_console_errors_and_missing_resources(tmp_path):
    """The same check fails a page that logs an error and one that asks for a file that is not there."""
    scripted = tmp_path / "scripted.html"
    scripted.write_text("<!DOCTYPE html><title>t</title><h2>a</h2><script>console.error('deliberate')</script>")
    missing = tmp_path / "missing.html"
    missing.write_text('<!DOCTYPE html><title>t</title><h2>a</h2><img src="no-such-picture.png" alt="">')
    got = load(scripted, tmp_path / "p1")
    assert [(m, p["type"], p["args"][0]["value"]) for m, p in got["problems"]] == [
        ("Runtime.consoleAPICalled", "error", "deliberate")
    ]
    got = load(missing, tmp_path / "p2")
    picture = (tmp_path / "no-such-picture.png").as_uri()
    assert got["requests"] == [missing.as_uri(), picture]
    failed = {(m, p.get("entry", {}).get("url"), p.get("errorText")) for m, p in got["problems"]}
    assert ("Log.entryAdded", picture, None) in failed and (
        "Network.loadingFailed",
        None,
        "net::ERR_FILE_NOT_FOUND",
    ) in failed
