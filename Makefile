# The README's two commands: `make demo` (the main job) and `make test` (the tests).
# VENV may point outside the clone (CI reuses a cached one); a fresh machine builds it from nothing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.moejet-installed

.PHONY: demo test docs bench clean

$(STAMP): pyproject.toml constraints-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-dev.txt -e '.[dev,export,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/moejet demo $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks configs
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

# the docs site, built strictly (a broken link or API reference fails); served locally by `mkdocs serve`
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir $${TMPDIR:-/tmp}/moejet-site

bench: $(STAMP)
	$(PY) benchmarks/layers.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
