# The two commands of the README: `make run` (the seven-algorithm comparison of configs/compare.toml, ending with
# the report of runs/compare) and `make test`. Both create .venv and install the package if needed.
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
	$(PY) -m locfedmix run --config configs/compare.toml --set dataset=$$dataset --out runs/compare --overwrite && \
	$(PY) -m locfedmix report runs/compare

test: $(INSTALLED) data
	$(PY) -m pytest
