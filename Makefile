# Two entry points for a fresh machine: `make book` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENDOR := book/_vendor
EXTRAS := torch,haiku,triton,data,models,plot,book,dev,scale

.PHONY: venv lint test unit nbval book vendor check-book benchmark clean

venv: $(STAMP)

# torch first and pinned: any unpinned torch request pulls a multi-GB CUDA build.
# dm-haiku is listed without its [jax] extra (that extra asks for a jax that does not exist).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# MathJax, require.js and the widget manager come from the npm registry (versions pinned in
# book/package.json) and are copied into the built site by html_extra_path (see _config.yml), so the
# book needs no CDN. Not in _static/: Jupyter Book injects every .js found there into every page.
# $(VENDOR)/site/vendor/ becomes <site>/vendor/. The widget bundles find their icon fonts next to
# the URL require.js gives their module names; require-paths.js (loaded between require.js and
# embed-amd.js on widget pages) maps those names to vendor/widgets/, where the fonts are copied.
# Paths are relative to the page, and every page sits one folder below the site root.
define REQUIRE_PATHS_JS
// Written by `make vendor`: where require.js finds the @jupyter-widgets modules (see Makefile).
require.config({paths: {"@jupyter-widgets": "../vendor/widgets",
                        "@jupyter-widgets/html-manager/dist": "../vendor/widgets"}});
endef
export REQUIRE_PATHS_JS

$(VENDOR)/.installed: book/package.json
	mkdir -p .npm-assets
	cp book/package.json .npm-assets/package.json
	cd .npm-assets && npm install --no-audit --no-fund --no-package-lock --silent
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)/site/vendor/mathjax $(VENDOR)/site/vendor/widgets
	cp -r .npm-assets/node_modules/mathjax/es5/. $(VENDOR)/site/vendor/mathjax/
	cp .npm-assets/node_modules/requirejs/require.js $(VENDOR)/site/vendor/require.js
	cd .npm-assets/node_modules/@jupyter-widgets/html-manager/dist && \
		cp embed-amd.js *.woff *.woff2 *.ttf *.eot *.svg $(CURDIR)/$(VENDOR)/site/vendor/widgets/
	printf '%s\n' "$$REQUIRE_PATHS_JS" > $(VENDOR)/site/vendor/widgets/require-paths.js
	touch $@

vendor: $(VENDOR)/.installed

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests

nbval: $(STAMP)
	$(VENV)/bin/pytest -q --nbval notebooks --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider

# Lint and type checks take seconds, the tests minutes: they run first. ruff's rules and line lengths
# are in pyproject.toml (120 in the package, 79 in notebooks/ruff.toml); mypy checks posenc/.
lint: $(STAMP)
	$(VENV)/bin/ruff check posenc tests scripts benchmarks notebooks
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q tests
	$(VENV)/bin/pytest -q --nbval notebooks --nbval-sanitize-with notebooks/sanitize.cfg

# Executes every chapter (jupyter-cache in _build/.jupyter_cache) and writes _build/html.
# A failing cell fails the build (execute.raise_on_error in _config.yml), and so does any Sphinx
# warning (-W: a toc entry without its file, a broken reference or citation, a bad heading...);
# --keep-going lists them all before failing. MPLBACKEND is unset because a non-inline backend
# (CI exports Agg) would leave the pages without plots. OMP_NUM_THREADS=1: the chapters are small.
book: $(STAMP) $(VENDOR)/.installed
	env -u MPLBACKEND OMP_NUM_THREADS=1 $(VENV)/bin/jupyter-book build . --path-output . --builder html -W --keep-going

# Opens every built page in headless Chromium with the network cut off and checks maths, plots,
# widgets and requests (scripts/check_book.py; needs chromium). Screenshots go to _build/check/.
check-book: $(STAMP)
	$(PY) scripts/check_book.py --site _build/html

benchmark: $(STAMP)
	$(PY) benchmarks/bench_encodings.py

clean:
	rm -rf _build .pytest_cache
