"""Sphinx extension: drop repeated ``<script>`` entries from every HTML page.

Jupyter Book 1.x sets up sphinx-thebe and sphinx-togglebutton in a way that registers their
inline scripts twice (once in Sphinx's registry, once on the builder), so every page declared
``const THEBE_JS_URL`` twice, and the second declaration is a SyntaxError in the browser
("Identifier 'THEBE_JS_URL' has already been declared"). This handler keeps the first of any
scripts that are equal in source and attributes (inline body included), whatever their priority,
and leaves the order of the rest alone.

Enabled from ``_config.yml``: ``sphinx: local_extensions: {dedupe_scripts: book/_ext}``.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx

# After every other handler of html-page-context (default priority 500), so that scripts added
# per page (e.g. the widget manager on notebook pages) are seen too.
PRIORITY = 900


def script_key(script: Any) -> tuple:
    """What makes two script entries the same script: the file and the attributes (with the body).

    An inline script has no file, recorded as ``None`` or ``""`` depending on whether it was
    added before or after the builder started: both count as the same.
    """
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {})
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def unique_scripts(scripts: list[Any]) -> list[Any]:
    """``scripts`` without repeats, first occurrences in their original order."""
    seen: set[tuple] = set()
    out = []
    for script in scripts:
        key = script_key(script)
        if key not in seen:
            seen.add(key)
            out.append(script)
    return out


def dedupe_page_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """html-page-context handler: de-duplicates ``context["script_files"]`` in place."""
    if "script_files" in context:
        context["script_files"] = unique_scripts(list(context["script_files"]))


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("html-page-context", dedupe_page_scripts, priority=PRIORITY)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
