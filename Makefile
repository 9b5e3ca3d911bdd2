# Two entry points for a fresh machine: `make book` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENDOR := book/_vendor
EXTRAS := torch,haiku,triton,data,models,plot,book,dev

.PHONY: venv test unit nbval book vendor benchmark clean

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

# MathJax, require.js and the widget manager come from the npm registry and are copied into the
# built site (html_extra_path), so the book needs no CDN. Not in _static/: Jupyter Book injects every .js there.
$(VENDOR)/.installed: book/package.json
	mkdir -p .npm-assets
	cp book/package.json .npm-assets/package.json
	cd .npm-assets && npm install --no-audit --no-fund --silent
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)/mathjax $(VENDOR)/widgets
	cp -r .npm-assets/node_modules/mathjax/es5/. $(VENDOR)/mathjax/
	cp .npm-assets/node_modules/requirejs/require.js $(VENDOR)/require.js
	cp .npm-assets/node_modules/@jupyter-widgets/html-manager/dist/embed-amd.js $(VENDOR)/widgets/
	touch $@

vendor: $(VENDOR)/.installed

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests

nbval: $(STAMP)
	$(VENV)/bin/pytest -q --nbval notebooks --sanitize-with notebooks/sanitize.cfg -p no:cacheprovider

test: $(STAMP)
	$(VENV)/bin/pytest -q tests
	$(VENV)/bin/pytest -q --nbval notebooks --sanitize-with notebooks/sanitize.cfg

book: $(STAMP) $(VENDOR)/.installed
	$(VENV)/bin/jupyter-book build . --path-output . --builder html

benchmark: $(STAMP)
	$(PY) benchmarks/bench_encodings.py

clean:
	rm -rf _build .pytest_cache
