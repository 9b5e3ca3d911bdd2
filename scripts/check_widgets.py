"""Checks in headless Chromium that the built book's static explorer works without a kernel.

Serves the built HTML from 127.0.0.1, opens chapter 06 in Chromium, drives it over the DevTools
protocol (a websocket, through tornado, which the venv has via Jupyter) and checks that moving each
slider of the ``posenc.widgets.StaticExplorer`` changes the picture that is shown:

1. the explorer (the element with class ``posenc-static-explorer``) renders, with two sliders and
   one visible image;
2. pressing an arrow key on the lambda slider's handle changes its readout and the image's bytes;
3. the same for the n_bin slider;
4. the three images seen are pairwise different, and each is the one the embedded widget state
   holds for the sliders' readouts (outer stack child = lambda index, inner child = n_bin index).

Usage (from the repository root, after ``make book``)::

    .venv/bin/python scripts/check_widgets.py [--html _build/html] [--page notebooks/06_smoothness_regularisation.html]

Exits 0 when every check passes, 1 when one fails, 2 when the page or the browser is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from tornado.websocket import websocket_connect

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,2000"]
EXPLORER = ".posenc-static-explorer"

# Runs in the page: the explorer's sliders (description, readout) and the visible image's SHA-256.
STATE_JS = """
(async () => {
  const box = document.querySelector("__EXPLORER__");
  if (!box) return {found: false};
  const sliders = [...box.querySelectorAll(".widget-hslider")].map(s => ({
    label: (s.querySelector(".widget-label") || {}).textContent || "",
    readout: (s.querySelector(".widget-readout") || {}).textContent || "",
  }));
  const shown = [...box.querySelectorAll("img")].filter(i => i.offsetParent !== null && i.naturalWidth > 0);
  let hash = null;
  if (shown.length === 1) {
    const bytes = await (await fetch(shown[0].src)).arrayBuffer();
    const digest = await crypto.subtle.digest("SHA-256", bytes);
    hash = [...new Uint8Array(digest)].map(b => b.toString(16).padStart(2, "0")).join("");
  }
  return {found: true, sliders: sliders, images: shown.length, hash: hash};
})()
""".replace("__EXPLORER__", EXPLORER)

# Runs in the page: centre of the k-th slider's handle (to focus it with a click) and its position.
HANDLE_JS = """
(() => {
  const h = document.querySelectorAll("__EXPLORER__ .widget-hslider .noUi-handle")[__INDEX__];
  h.scrollIntoView({block: "center"});
  const r = h.getBoundingClientRect();
  return {x: r.left + r.width / 2, y: r.top + r.height / 2,
          now: Number(h.getAttribute("aria-valuenow")), max: Number(h.getAttribute("aria-valuemax"))};
})()
""".replace("__EXPLORER__", EXPLORER)


class CheckFailed(Exception):
    """A check on the page did not hold."""


def expected_images(html: str) -> dict[tuple[str, str], str]:
    """``{(lambda label, n_bin label): sha256 of the PNG}`` from the page's embedded widget state.

    Raises:
      CheckFailed: no widget state, no static explorer in it, or a structure other than
        ``VBox([HBox([lam_slider, n_bin_slider]), Stack([Stack([Image, ...]), ...])])``.
    """
    blocks = re.findall(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', html, re.S)
    if not blocks:
        raise CheckFailed("the page embeds no widget state")
    models = json.loads(blocks[0])["state"]

    def model(ref: str) -> dict:
        return models[ref.removeprefix("IPY_MODEL_")]

    boxes = [m for m in models.values() if EXPLORER[1:] in m["state"].get("_dom_classes", [])]
    if len(boxes) != 1:
        raise CheckFailed(f"expected one static explorer in the widget state, found {len(boxes)}")
    header, outer = (model(ref) for ref in boxes[0]["state"]["children"])
    lam, n_bin = (model(ref)["state"]["_options_labels"] for ref in header["state"]["children"])
    out = {}
    for i, inner_ref in enumerate(outer["state"]["children"]):
        for j, image_ref in enumerate(model(inner_ref)["state"]["children"]):
            image = model(image_ref)
            data = next(b["data"] for b in image["buffers"] if b["path"] == ["value"])
            out[(lam[i], n_bin[j])] = hashlib.sha256(base64.b64decode(data)).hexdigest()
    if len(out) != len(lam) * len(n_bin):
        raise CheckFailed(f"{len(out)} images for a {len(lam)} x {len(n_bin)} grid")
    return out


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page target."""

    def __init__(self, conn) -> None:
        self.conn, self.next_id = conn, 0

    @classmethod
    async def connect(cls, url: str) -> DevTools:
        return cls(await websocket_connect(url, max_message_size=256 * 1024 * 1024))

    async def call(self, method: str, **params) -> dict:
        self.next_id += 1
        mid = self.next_id
        await self.conn.write_message(json.dumps({"id": mid, "method": method, "params": params}))
        while True:  # skip events until our answer arrives
            raw = await self.conn.read_message()
            if raw is None:
                raise CheckFailed("the DevTools connection closed")
            msg = json.loads(raw)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CheckFailed(f"{method} failed: {msg['error']}")
                return msg["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise CheckFailed(f"script error in the page: {result['exceptionDetails'].get('text')} "
                              f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result["result"].get("value")

    async def press(self, key: str, code: int) -> None:
        for kind in ("rawKeyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code,
                            nativeVirtualKeyCode=code)

    async def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    """Serves ``root`` on 127.0.0.1 (a free port) from a daemon thread."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


def start_chromium(binary: str, profile: Path) -> tuple[subprocess.Popen, int]:
    """Starts headless Chromium with remote debugging on a free port; returns it and the port."""
    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with status {proc.returncode}")
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text().split()[0])
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("chromium did not open its DevTools port within 30 s")


def page_target(port: int) -> str:
    """The websocket URL of Chromium's first page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
        targets = json.load(resp)
    pages = [t for t in targets if t.get("type") == "page"]
    if not pages:
        raise RuntimeError(f"no page target among {targets}")
    return pages[0]["webSocketDebuggerUrl"]


async def wait_for(dev: DevTools, predicate, what: str, timeout: float) -> dict:
    """Polls the explorer's state until ``predicate(state)`` holds."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = await dev.evaluate(STATE_JS)
        if state and predicate(state):
            return state
        await asyncio.sleep(0.25)
    raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}; last state: {state}")


async def move(dev: DevTools, index: int, before: dict, timeout: float) -> dict:
    """Focuses slider ``index``'s handle, steps it by one arrow key and waits for a new readout and image.

    Steps right unless the handle already sits at the right end.
    """
    pos = await dev.evaluate(HANDLE_JS.replace("__INDEX__", str(index)))
    await dev.click(pos["x"], pos["y"])  # focuses the handle (a click on its centre does not move it)
    await dev.press(*(("ArrowRight", 39) if pos["now"] < pos["max"] else ("ArrowLeft", 37)))
    name = before["sliders"][index]["label"]
    return await wait_for(
        dev, lambda s: s["sliders"][index]["readout"] != before["sliders"][index]["readout"]
        and s["images"] == 1 and s["hash"] not in (None, before["hash"]),
        f"slider {name!r} to move and the image to change", timeout)


def check_shown(state: dict, expected: dict[tuple[str, str], str]) -> None:
    """The shown image must be the one the grid holds for the sliders' readouts."""
    key = (state["sliders"][0]["readout"], state["sliders"][1]["readout"])
    if key not in expected:
        raise CheckFailed(f"slider readouts {key} are not a grid point of {sorted(expected)}")
    if state["hash"] != expected[key]:
        raise CheckFailed(f"at {key} the page shows image {state['hash'][:12]}, the state holds {expected[key][:12]}")


async def check(url: str, chromium_port: int, expected: dict[tuple[str, str], str], timeout: float) -> list[str]:
    """Runs the checks; returns the lines of the report."""
    dev = await DevTools.connect(page_target(chromium_port))
    await dev.call("Page.enable")
    await dev.call("Runtime.enable")
    await dev.call("Page.navigate", url=url)
    start = await wait_for(dev, lambda s: s["found"] and len(s["sliders"]) == 2 and s["images"] == 1 and s["hash"],
                           "the static explorer to render (two sliders, one image)", timeout)
    report = [f"page: {url}",
              f"rendered: sliders {[(s['label'], s['readout']) for s in start['sliders']]}, image {start['hash'][:12]}"]
    lam = await move(dev, 0, start, timeout)
    report.append(f"λ slider:     {start['sliders'][0]['readout']} -> {lam['sliders'][0]['readout']}, "
                  f"image {start['hash'][:12]} -> {lam['hash'][:12]}")
    n_bin = await move(dev, 1, lam, timeout)
    report.append(f"n_bin slider: {lam['sliders'][1]['readout']} -> {n_bin['sliders'][1]['readout']}, "
                  f"image {lam['hash'][:12]} -> {n_bin['hash'][:12]}")
    hashes = {start["hash"], lam["hash"], n_bin["hash"]}
    if len(hashes) != 3:
        raise CheckFailed(f"expected three different images, saw {len(hashes)}")
    for state in (start, lam, n_bin):
        check_shown(state, expected)
    report.append("all three match the embedded state's images for their readouts "
                  f"({len(expected)} images in the grid)")
    dev.conn.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=Path("_build/html"), help="the built book's HTML root")
    parser.add_argument("--page", default="notebooks/06_smoothness_regularisation.html",
                        help="the chapter's page, relative to --html")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium binary")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each step")
    args = parser.parse_args(argv)

    page = args.html / args.page
    if not page.is_file():
        print(f"check_widgets: no page {page} (build the book first: make book)", file=sys.stderr)
        return 2
    binary = shutil.which(args.chromium)
    if binary is None:
        print(f"check_widgets: no Chromium at {args.chromium}", file=sys.stderr)
        return 2
    try:
        expected = expected_images(page.read_text(encoding="utf-8"))
    except CheckFailed as exc:
        print(f"check_widgets: FAIL: {exc}", file=sys.stderr)
        return 1
    server, http_port = serve(args.html)
    with tempfile.TemporaryDirectory(prefix="check-widgets-") as profile:
        proc, devtools_port = start_chromium(binary, Path(profile))
        try:
            url = f"http://127.0.0.1:{http_port}/{args.page}"
            report = asyncio.run(check(url, devtools_port, expected, args.timeout))
        except CheckFailed as exc:
            print(f"check_widgets: FAIL: {exc}", file=sys.stderr)
            return 1
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            server.shutdown()
    print("\n".join(report))
    print("check_widgets: OK: moving either slider changes the image, with no kernel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
