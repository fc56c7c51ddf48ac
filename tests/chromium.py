"""Headless Chromium for the tests of HTML output: find the browser, load a page, read back the DOM
it rendered (with a probe's measurements of the layout), the console messages and a screenshot.

Debian's `chromium` package (.ci/run installs it). No Python package: the browser's own command line
(`--dump-dom`, `--screenshot`) and its console log on standard error are all these checks need.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
# `[...:INFO:CONSOLE:12] "message", source: file:///... (12)`, or `CONSOLE(12)` in older builds.
_CONSOLE = re.compile(r':CONSOLE(?::\d+|\(\d+\))\] "(?P<message>.*)", source: (?P<source>.*)$', re.M)


def find() -> str | None:
    """The Chromium executable: $REPLPROXY_CHROMIUM, else the first of NAMES on PATH, else None."""
    configured = os.environ.get("REPLPROXY_CHROMIUM")
    if configured:
        return configured
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@dataclass(frozen=True)
class Page:
    dom: str  # the DOM after the page loaded and its scripts ran (--dump-dom)
    console: list[str]  # every console message: errors, uncaught exceptions, console.log


def _run(exe: str, args: list[str], url: str, timeout: float) -> tuple[str, list[str]]:
    with tempfile.TemporaryDirectory(prefix="replproxy-chromium-") as profile:  # a new empty profile
        done = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"chromium exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout, [m.group("message") for m in _CONSOLE.finditer(done.stderr)]


def load(exe: str, page: Path, width: int = 1280, height: int = 2000, timeout: float = 120) -> Page:
    dom, console = _run(exe, ["--dump-dom", f"--window-size={width},{height}"], page.resolve().as_uri(),
                        timeout)
    return Page(dom, console)


def screenshot(exe: str, page: Path, png: Path, width: int = 1280, height: int = 2000,
               timeout: float = 120) -> list[str]:
    """Save a PNG of the first `width` x `height` pixels; the console messages."""
    _, console = _run(exe, [f"--screenshot={png}", f"--window-size={width},{height}"],
                      page.resolve().as_uri(), timeout)
    if not png.is_file():
        raise AssertionError(f"chromium wrote no screenshot {png}")
    return console


# A probe added to a copy of the page (the report itself has no script): it records errors, then
# measures what the browser laid out and writes it as JSON into <pre id="probe">.
_ERRORS = """<script>window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); });</script>"""
_PROBE = """<script>(function () {
  function box(e) { var r = e.getBoundingClientRect();
    return {left: r.left, top: r.top + scrollY, right: r.right, bottom: r.bottom + scrollY, width: r.width,
            height: r.height}; }
  function shown(e) { var s = getComputedStyle(e);
    return s.visibility === 'visible' && s.display !== 'none' && parseFloat(s.opacity) > 0 && s.fill !== 'none'; }
  function overlap(a, b) { return a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 &&
                                  b.top < a.bottom - 1; }
  var charts = [];
  document.querySelectorAll('figure').forEach(function (figure) {
    var svg = figure.querySelector('svg'); if (!svg) { charts.push({id: figure.id, svg: false}); return; }
    var outer = box(svg), texts = [], outside = [], hidden = [], overlaps = [];
    svg.querySelectorAll('text').forEach(function (t) {
      var b = box(t); b.text = t.textContent;
      if (!(b.width > 0 && b.height > 0) || !shown(t)) { hidden.push(b.text); return; }
      if (b.left < outer.left - 1 || b.right > outer.right + 1 || b.top < outer.top - 1 ||
          b.bottom > outer.bottom + 1) { outside.push(b.text); }
      texts.forEach(function (o) { if (overlap(o, b)) { overlaps.push(o.text + ' / ' + b.text); } });
      texts.push(b);
    });
    var marks = Array.prototype.map.call(svg.querySelectorAll('.mark'), box);
    charts.push({id: figure.id, svg: true, box: outer, caption: box(figure.querySelector('figcaption')),
      texts: texts.length, outside: outside, hidden: hidden, overlaps: overlaps,
      marks: marks.length, drawn: marks.filter(function (m) { return m.width > 0 && m.height > 0 &&
        m.left >= outer.left && m.right <= outer.right; }).length,
      ticks: svg.querySelectorAll('text.tick').length, reference: svg.querySelectorAll('.reference').length,
      diverged: svg.querySelectorAll('rect.diverged').length});
  });
  var body = getComputedStyle(document.body);
  var rows = Array.prototype.map.call(document.querySelectorAll('tr.diverged td'), function (td) {
    return getComputedStyle(td).backgroundColor; });
  var pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({errors: window.__errors, charts: charts, text: document.body.innerText,
    color: body.color, background: body.backgroundColor,
    viewport: innerWidth, scrollWidth: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight, divergedRowBackgrounds: rows});
  document.body.appendChild(pre);
})();</script>"""


def probe(exe: str, page: Path, work: Path, width: int = 1280, height: int = 2000) -> tuple[dict, list[str]]:
    """Load a copy of `page` with the probe; (its measurements, the console messages)."""
    text = page.read_text(encoding="utf-8")
    if "<head>" not in text or "</body>" not in text:
        raise AssertionError("not an HTML page with <head> and </body>")
    probed = work / f"probed-{page.name}"
    probed.write_text(text.replace("<head>", "<head>" + _ERRORS, 1).replace("</body>", _PROBE + "</body>", 1),
                      encoding="utf-8")
    loaded = load(exe, probed, width, height)
    found = re.search(r'<pre id="probe">(.*?)</pre>', loaded.dom, re.S)
    if not found:
        raise AssertionError("the probe did not run:\n" + "\n".join(loaded.console) + loaded.dom[-2000:])
    import html

    return json.loads(html.unescape(found.group(1))), loaded.console
