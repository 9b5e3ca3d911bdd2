"""Sphinx extension: give the widget manager the one MathJax 2 call it makes, on MathJax 3.

``@jupyter-widgets/html-manager`` typesets widget labels with ``MathJax.Hub.Queue`` (MathJax 2),
while the book serves MathJax 3, which has no ``Hub``: every slider or dropdown with a
description threw "Cannot read properties of undefined (reading 'Queue')". This inline script
runs before MathJax loads and keeps a ``Hub`` on whatever object ``window.MathJax`` becomes:
before MathJax has started, ``Hub.Queue`` does nothing (MathJax 3 typesets the whole page,
labels included, when it starts); afterwards it typesets the element it is given with
``MathJax.typesetPromise`` once MathJax's startup promise resolves. Harmless on pages without
MathJax.

Enabled from ``_config.yml``: ``sphinx: local_extensions: {mathjax2_shim: book/_ext}``.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx

SHIM = """\
(function () {
  var hub = {Queue: function (job) {
    var mj = window.MathJax;
    if (mj && mj.startup && mj.startup.promise) {
      mj.startup.promise.then(function () { if (mj.typesetPromise) { return mj.typesetPromise([job[2]]); } });
    }
  }};
  var current = {Hub: hub};
  // MathJax 3 replaces window.MathJax when its script runs, before it is ready: keep a Hub on
  // whatever object is assigned, so the widget manager never finds it missing.
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) { if (value && !value.Hub) { value.Hub = hub; } current = value; }
  });
})();"""

# Before the MathJax script itself (Sphinx adds it at the default priority, 500).
PRIORITY = 400


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_js_file(None, body=SHIM, priority=PRIORITY)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
