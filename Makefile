# The two commands of the README. Each builds the virtualenv first (once) with the README's install step.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e ".[dev]"
	touch $@

.PHONY: install test
install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PYTHON) -m pytest -q
