"""Checks the built book in headless Chromium with the network cut off.

Every chapter and prose page of the built site (``notebooks/*.html`` and ``book/*.html`` under
``_build/html``) is opened in headless Chromium, which this script drives over the DevTools
protocol on a pipe (``--remote-debugging-pipe``; standard library only). For each page it checks:

(a) maths: MathJax loaded, every Sphinx math element holds a typeset ``mjx-container``, no
    MathJax error node is left, and no prose outside code still reads ``$...$`` (maths the build
    did not mark as maths, which no math element would show);
(b) plots: every ``<img>`` decoded to a non-zero natural size, and every chapter has at least one;
(c) network: the site is served from 127.0.0.1. Chromium's proxy is a local recorder that refuses
    and logs whatever reaches it, and no host name resolves. A page request to anything other than
    the local server fails the check, and so does a failed request to the local site. Requests the
    proxy saw that no page made are Chromium's own background services (the Debian build enables
    extension updates and Google sign-in, for example). They are listed, and they were refused too;
(d) widgets: pages with embedded Jupyter widgets (e.g. tqdm progress bars) rendered all of them;
(e) scripts: no JavaScript exception;
(f) width: no code block (a cell's code, its text output, any other ``<pre>``), figure or cell
    output is wider than its column at a 1280 px window. An element whose ``scrollWidth`` exceeds
    its ``clientWidth`` (a ``<pre>``, a cell's output, a widget's area), or an image reaching past
    the article's right edge, fails the page, named by its cell (``cell 7 of 21`` and the cell's
    first line of code). Collapsed cells are opened first, since a reader may open them. Wide
    tables scroll in their own box (the theme's design): they are listed, not failed.

A full-page screenshot of each chapter (half scale) is written to ``_build/check/`` for a human look.

Usage:
  python scripts/check_book.py [--site _build/html] [--pages notebooks/01_x.html ...]

Exit status 0 when every check passes, 1 otherwise (failures are printed).
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import shlex
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1280, 2000)  # browser window, CSS pixels: a laptop screen
PAGE_TIMEOUT = 60.0  # seconds for one page to load, typeset and render its widgets

# Known and harmless upstream issue, not raised by anything in this repository: with Sphinx 7.4,
# sphinx-thebe's inline config script is emitted twice, so the second `const THEBE_JS_URL` is a
# SyntaxError. Thebe is disabled in this book, and the first copy defines everything.
KNOWN_HARMLESS_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)

# Evaluated in the page once it has loaded. It waits for MathJax's start-up typesetting and for
# the widget manager, then reports what the page shows.
PROBE = """(async () => {
  const mj = window.MathJax;
  let mathjaxError = null;
  try {
    if (mj && mj.startup && mj.startup.promise) { await mj.startup.promise; }
  } catch (err) { mathjaxError = String(err); }
  const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length;
  const rendered = () => document.querySelectorAll(".widget-subarea > *").length;
  for (let waited = 0; views > 0 && rendered() < views && waited < 20000; waited += 250) {
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  const maths = Array.from(document.querySelectorAll(".math"));
  // Text that still reads "$...$" once MathJax is done: maths the build left as dollars (e.g. a
  // cell's Markdown rendered as CommonMark). Code and typeset maths are not prose, so skipped.
  const prose = document.createTreeWalker(document.querySelector("article") || document.body,
                                          NodeFilter.SHOW_TEXT);
  const dollars = [];
  while (prose.nextNode()) {
    const node = prose.currentNode;
    if (node.parentElement.closest("pre, code, script, style, mjx-container")) { continue; }
    const m = node.textContent.match(/\\$[^$\\n]{1,80}\\$/);
    if (m) { dollars.push(m[0]); }
  }
  return {
    mathjax_version: (mj && mj.version) || null,
    mathjax_error: mathjaxError,
    math_elements: maths.length,
    math_untypeset: maths.filter((m) => !m.querySelector("mjx-container")).length,
    mjx_containers: document.querySelectorAll("mjx-container").length,
    mjx_errors: document.querySelectorAll("mjx-merror").length,
    raw_dollars: dollars,
    images: Array.from(document.querySelectorAll("img")).map((i) => (
      {src: i.getAttribute("src"), width: i.naturalWidth, height: i.naturalHeight})),
    widget_views: views,
    widgets_rendered: rendered(),
    page_height: document.documentElement.scrollHeight,
  };
})()"""

# Evaluated after the screenshot: opens every collapsed cell, then lists what is wider than its
# column. One pixel of slack absorbs sub-pixel rounding.
OVERFLOW_PROBE = """(() => {
  document.querySelectorAll("details").forEach((d) => { d.open = true; });
  const article = document.querySelector("article") || document.body;
  const right = article.getBoundingClientRect().right;
  const cells = Array.from(article.querySelectorAll("div.cell"));
  const where = (el) => {
    const cell = el.closest("div.cell");
    if (!cell) {
      const text = (el.textContent || el.getAttribute("src") || "").trim().split("\\n")[0].slice(0, 60);
      return `outside the cells ("${text}")`;
    }
    const code = cell.querySelector(".cell_input pre");
    const first = code ? code.textContent.trim().split("\\n")[0].slice(0, 60) : "input hidden";
    return `cell ${cells.indexOf(cell) + 1} of ${cells.length} ("${first}")`;
  };
  const found = [];
  const visible = (el) => el.getClientRects().length > 0;
  for (const pre of article.querySelectorAll("pre")) {
    if (visible(pre) && pre.scrollWidth > pre.clientWidth + 1) {
      found.push({kind: pre.closest(".cell_output") ? "text output" : "code block", where: where(pre),
                  scroll: pre.scrollWidth, client: pre.clientWidth});
    }
  }
  for (const out of article.querySelectorAll(".cell_output")) {
    if (visible(out) && out.scrollWidth > out.clientWidth + 1) {
      found.push({kind: "cell output", where: where(out), scroll: out.scrollWidth, client: out.clientWidth});
    }
  }
  // a widget (an explorer's controls and pictures) wider than the output area holding it
  for (const box of article.querySelectorAll(".cell_output .widget-subarea")) {
    if (visible(box) && box.scrollWidth > box.clientWidth + 1) {
      found.push({kind: "widget", where: where(box), scroll: box.scrollWidth, client: box.clientWidth});
    }
  }
  // tables scroll sideways inside their own box by design (the theme's); they are counted, not failed
  const tables = Array.from(article.querySelectorAll(".cell_output table")).filter((t) => {
    const box = t.parentElement;
    return visible(t) && box.scrollWidth > box.clientWidth + 1;
  }).map((t) => where(t));
  for (const img of article.querySelectorAll("img")) {
    const box = img.getBoundingClientRect();
    if (visible(img) && box.right > right + 1) {
      found.push({kind: "figure", where: where(img), scroll: Math.round(box.width),
                  client: Math.round(right - box.left)});
    }
  }
  return {found: found, scrolling_tables: tables};
})()"""


# --------------------------------------------------------------------------------------------
# Local servers: the site, and a proxy that refuses (and records) everything.


class SiteHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the built site read-only and records every request with its status."""

    lock = threading.Lock()
    requests: list[tuple[str, int]] = []

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        with self.lock:
            self.requests.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - no stderr log
        pass


class RefusingProxy(socketserver.StreamRequestHandler):
    """A proxy that forwards nothing: it records the request line and answers 403."""

    lock = threading.Lock()
    attempts: list[str] = []

    def handle(self) -> None:
        line = self.rfile.readline(8192).decode("latin-1").strip()
        with self.lock:
            self.attempts.append(line or "<empty request>")
        self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class ThreadingServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def proxy_host(request_line: str) -> str:
    """The host a proxied request was for: ``CONNECT h:443 ...`` or ``GET http://h/... ...``."""
    parts = request_line.split()
    if len(parts) < 2:
        return request_line
    target = parts[1]
    return target.rsplit(":", 1)[0] if parts[0] == "CONNECT" else (urlsplit(target).hostname or target)


# --------------------------------------------------------------------------------------------
# Chromium over the DevTools protocol (--remote-debugging-pipe: fd 3 in, fd 4 out, NUL-framed JSON).


class Browser:
    """One headless Chromium with a DevTools pipe."""

    def __init__(self, chromium: str, proxy_port: int) -> None:
        self.profile = tempfile.mkdtemp(prefix="check-book-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        args = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
            "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate",
            "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--user-data-dir={self.profile}",
            # Loopback is never proxied, so the local site loads directly. Everything else goes to
            # the refusing proxy, and no host name resolves.
            f"--proxy-server=http://127.0.0.1:{proxy_port}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
            "--remote-debugging-pipe", "about:blank",
        ]
        # The DevTools pipe must be fds 3 and 4 of the browser; a shell puts them there.
        shell = f"exec {shlex.join(args)} 3<&{to_chrome_r} 4>&{from_chrome_w}"
        self.proc = subprocess.Popen(["/bin/sh", "-c", shell], pass_fds=(to_chrome_r, from_chrome_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_chrome, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._cond:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                self._cond.notify_all()
        with self._cond:  # browser gone
            self._cond.notify_all()

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = PAGE_TIMEOUT) -> dict:
        """Sends one DevTools command and returns its result (raises on a protocol error)."""
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while ident not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no reply to {method} within {timeout:.0f} s")
                self._cond.wait(left)
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str, since: int, timeout: float = PAGE_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(e["method"] == method and e.get("sessionId") == session for e in self.events[since:]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {method} within {timeout:.0f} s")
                self._cond.wait(left)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)


# --------------------------------------------------------------------------------------------


@dataclass
class PageResult:
    page: str
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)  # non-local URLs the page requested


def check_page(browser: Browser, page: str, url: str, shot: Path | None) -> PageResult:
    result = PageResult(page)
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    sessions = {session}
    for domain in ("Page", "Network", "Runtime"):
        browser.call(f"{domain}.enable", session=session)
    # iframes and workers get their own sessions; watch their requests as well
    browser.call("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": False, "flatten": True},
                 session=session)
    start = len(browser.events)
    browser.call("Page.navigate", {"url": url}, session=session)
    try:
        browser.wait_event("Page.loadEventFired", session, start)
        report = browser.call("Runtime.evaluate", {"expression": PROBE, "awaitPromise": True,
                                                   "returnByValue": True}, session=session)
    except TimeoutError as err:
        result.failures.append(f"page did not finish: {err}")
        return result
    if "exceptionDetails" in report:
        result.failures.append(f"probe failed: {report['exceptionDetails']}")
        return result
    found = report["result"]["value"]

    if shot is not None:  # the whole page at half scale: text, maths and every plot in one image
        height = min(int(found["page_height"]), 30000)
        png = browser.call("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": WINDOW[0], "height": height, "scale": 0.5}}, session=session)["data"]
        shot.write_bytes(base64.b64decode(png))
        result.notes.append(f"screenshot {shot}")

    # (f) width, measured with every collapsed cell open
    wide = browser.call("Runtime.evaluate", {"expression": OVERFLOW_PROBE, "returnByValue": True},
                        session=session)
    measured = wide.get("result", {}).get("value")
    if "exceptionDetails" in wide or measured is None:
        result.failures.append(f"width probe failed: {wide.get('exceptionDetails')}")
    else:
        overflowing = measured["found"]
        if measured["scrolling_tables"]:
            result.notes.append(f"{len(measured['scrolling_tables'])} tables scroll sideways in their box "
                                f"({'; '.join(measured['scrolling_tables'])})")
        for item in overflowing:
            result.failures.append(f"{item['kind']} wider than its column ({item['scroll']} px in "
                                   f"{item['client']} px): {item['where']}")
        result.notes.append("nothing wider than its column" if not overflowing
                            else f"{len(overflowing)} elements wider than their column")

    # Everything the page (and its frames and workers) asked for, and every script exception.
    events = browser.events[start:]
    sessions |= {e["params"]["sessionId"] for e in events if e["method"] == "Target.attachedToTarget"}
    ours = [e for e in events if e.get("sessionId") in sessions]
    requested = [e["params"]["request"]["url"] for e in ours if e["method"] == "Network.requestWillBeSent"]
    result.external = [u for u in requested
                       if urlsplit(u).scheme in ("http", "https", "ws", "wss")
                       and urlsplit(u).hostname not in ("127.0.0.1", "localhost")]
    failed = [e["params"] for e in ours if e["method"] == "Network.loadingFailed"]
    # Chromium asks for /favicon.ico by itself when a page declares no icon; that miss is no page's.
    bad_status = [f"{e['params']['response']['status']} {e['params']['response']['url']}" for e in ours
                  if e["method"] == "Network.responseReceived" and e["params"]["response"]["status"] >= 400
                  and urlsplit(e["params"]["response"]["url"]).path != "/favicon.ico"]
    exceptions = [e["params"]["exceptionDetails"] for e in ours if e["method"] == "Runtime.exceptionThrown"]
    browser.call("Target.closeTarget", {"targetId": target})

    # (a) maths
    if found["math_elements"]:
        if not found["mathjax_version"]:
            result.failures.append("the page has maths but MathJax did not load")
        if found["mathjax_error"]:
            result.failures.append(f"MathJax failed: {found['mathjax_error']}")
        if found["math_untypeset"]:
            result.failures.append(f"{found['math_untypeset']} of {found['math_elements']} math elements not typeset")
        if found["mjx_errors"]:
            result.failures.append(f"{found['mjx_errors']} MathJax error nodes")
    if found["raw_dollars"]:
        shown = ", ".join(repr(d) for d in found["raw_dollars"][:3])
        n = len(found["raw_dollars"])
        result.failures.append(f"{n} passage{'s' * (n > 1)} of maths left as dollars, not typeset: {shown}")
    result.notes.append(f"math {found['math_elements'] - found['math_untypeset']}/{found['math_elements']} typeset "
                        f"({found['mjx_containers']} mjx-container, MathJax {found['mathjax_version']})")

    # (b) plots
    images = found["images"]
    broken = [i["src"] for i in images if not (i["width"] > 0 and i["height"] > 0)]
    if broken:
        result.failures.append(f"images with zero natural size: {broken}")
    if page.startswith("notebooks/") and not images:
        result.failures.append("a chapter without images (plots missing?)")
    sizes = ", ".join(f"{i['width']}x{i['height']}" for i in images)
    result.notes.append(f"{len(images)} images" + (f" ({sizes})" if sizes else ""))

    # (c) network, as seen by the page
    if result.external:
        result.failures.append(f"requests to outside the machine: {result.external}")
    if failed or bad_status:
        result.failures.append("failed requests: " + "; ".join(
            [f"{e.get('errorText')} ({e.get('type')})" for e in failed] + bad_status))
    result.notes.append(f"{len(requested)} requests, all to 127.0.0.1" if not result.external
                        else f"{len(requested)} requests")

    # (d) widgets
    if found["widget_views"]:
        if found["widgets_rendered"] < found["widget_views"]:
            result.failures.append(f"{found['widgets_rendered']} of {found['widget_views']} widgets rendered")
        result.notes.append(f"{found['widgets_rendered']}/{found['widget_views']} widgets rendered")

    # (e) script exceptions
    for exc in exceptions:
        text = exc.get("exception", {}).get("description") or exc.get("text", "")
        text = text.splitlines()[0] if text else repr(exc)
        if any(known in text for known in KNOWN_HARMLESS_ERRORS):
            result.notes.append(f"ignored known upstream error: {text}")
        else:
            result.failures.append(f"JavaScript exception: {text} ({exc.get('url', '')}:{exc.get('lineNumber')})")
    return result


def find_chromium(explicit: str | None) -> str:
    """The Chromium executable: --chromium, $CHROMIUM, or the first candidate on PATH."""
    for name in ([explicit] if explicit else []) + [os.environ.get("CHROMIUM", ""), *CHROMIUM_CANDIDATES]:
        if name and (path := shutil.which(name)):
            return path
    sys.exit(f"check_book: no Chromium found (tried --chromium, $CHROMIUM, {', '.join(CHROMIUM_CANDIDATES)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--site", default="_build/html", help="the built site (default: _build/html)")
    parser.add_argument("--pages", nargs="*",
                        help="pages relative to the site (default: book/*.html, notebooks/*.html)")
    parser.add_argument("--screenshots", default="_build/check", help="folder for chapter screenshots ('' for none)")
    parser.add_argument("--chromium", help="Chromium executable (default: $CHROMIUM, else chromium on PATH)")
    args = parser.parse_args(argv)

    site = Path(args.site).resolve()
    if not (site / "index.html").is_file():
        print(f"check_book: {site} holds no built book (run `make book` first)", file=sys.stderr)
        return 1
    pages = args.pages or sorted(p.relative_to(site).as_posix()
                                 for folder in ("book", "notebooks") for p in (site / folder).glob("*.html"))
    if not pages:
        print(f"check_book: no pages under {site}/book or {site}/notebooks", file=sys.stderr)
        return 1
    chromium = find_chromium(args.chromium)
    shot_dir = Path(args.screenshots) if args.screenshots else None
    if shot_dir is not None:
        shot_dir.mkdir(parents=True, exist_ok=True)

    site_server = ThreadingServer(("127.0.0.1", 0), functools.partial(SiteHandler, directory=str(site)))
    proxy_server = ThreadingServer(("127.0.0.1", 0), RefusingProxy)
    for server in (site_server, proxy_server):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{site_server.server_address[1]}"
    proxy_port = proxy_server.server_address[1]
    print(f"check_book: {len(pages)} pages of {site} served at {base}; {chromium} headless, every "
          f"non-loopback request sent to a refusing proxy on 127.0.0.1:{proxy_port}, DNS off")

    browser = Browser(chromium, proxy_port)
    results = []
    try:
        browser.call("Target.getTargets", timeout=30)  # the pipe is up
        for page in pages:
            shot = (shot_dir / (page.replace("/", "__").removesuffix(".html") + ".png")
                    if shot_dir is not None and page.startswith("notebooks/") else None)
            results.append(check_page(browser, page, f"{base}/{page}", shot))
    except (TimeoutError, RuntimeError, OSError) as err:
        stderr = browser.proc.stderr.read().decode(errors="replace")[-800:] if browser.proc.poll() is not None else ""
        print(f"check_book: browser failed: {err}\n{stderr}", file=sys.stderr)
        return 1
    finally:
        browser.close()
        site_server.shutdown()
        proxy_server.shutdown()

    ok = True
    for r in results:
        print(f"[{'ok' if not r.failures else 'FAIL'}] {r.page}: " + "; ".join(r.notes))
        for failure in r.failures:
            print(f"       - {failure}")
        ok = ok and not r.failures
    missing = sorted({p for p, code in SiteHandler.requests if code >= 400})
    print(f"local site: {len(SiteHandler.requests)} requests served" + (f"; not found: {missing}" if missing else ""))
    page_hosts = {urlsplit(u).hostname for r in results for u in r.external}
    from_pages = [a for a in RefusingProxy.attempts if proxy_host(a) in page_hosts]
    background = sorted({proxy_host(a) for a in RefusingProxy.attempts if a not in from_pages})
    print(f"refusing proxy: {len(from_pages)} requests from the pages"
          + (f"; refused Chromium background requests to {', '.join(background)}" if background else ""))
    ok = ok and not from_pages
    print("check_book: " + ("all checks passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
