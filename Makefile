# Two commands for users: `make demo` and `make test`. Everything else here is how they set up.
# Set-up is incremental: the venv is rebuilt only when requirements.txt or setup.py change.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all venv test demo bench clean

all: test

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip==26.3 setuptools==84.2.1 wheel==0.48.0

$(STAMP): requirements.txt setup.py | $(VPY)
	$(VPY) -m pip install --quiet -r requirements.txt
	$(VPY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(STAMP)

test: venv
	$(VPY) -m pytest $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/vlm2 demo

clean:
	rm -rf $(VENV) build *.egg-info
