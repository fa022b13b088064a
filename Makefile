# The two commands of the README: `make run` (ends with the report of runs/default) and `make test`. Both create .venv
# and install the package if needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: run test data

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 is pinned in pyproject.toml: the CPU wheel on this machine's disk (a bare `torch` pulls CUDA).
$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

data:
	@scripts/fetch-data >/dev/null

run: $(INSTALLED)
	@dataset=$$(scripts/fetch-data) && \
	$(PY) -m locfedmix run --config configs/default.toml --set dataset=$$dataset --out runs/default --overwrite && \
	$(PY) -m locfedmix report runs/default

test: $(INSTALLED) data
	$(PY) -m pytest
