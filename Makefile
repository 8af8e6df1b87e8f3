# Two commands set up a fresh machine and do the work:
#   make dashboard   - install into .venv, then open the dashboard (http://localhost:8501)
#   make test        - install into .venv (and Chromium for the browser test), then lint, check the
#                      architecture's layers, build the docs and test
#   make docs        - serve the manual in docs/ at http://localhost:8000
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Where `make dashboard` listens: this machine only. `make dashboard ADDRESS=0.0.0.0` serves every
# interface (read docs/serving-and-clusters.md, "Serving it to others", first).
ADDRESS ?= localhost

.PHONY: dashboard test browser bench docs

$(VENV)/.installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

dashboard: $(VENV)/.installed
	$(PY) -m streamlit run streamlit_app.py --server.address $(ADDRESS)

# The browser test drives Debian's Chromium with Playwright (no browser download); without it,
# that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		{ apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
		echo "Chromium not installed: the browser test will be skipped"; }

test: $(VENV)/.installed browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-logo
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir $$(mktemp -d)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal

docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr localhost:8000

bench: $(VENV)/.installed
	$(PY) bench/run_all.py
