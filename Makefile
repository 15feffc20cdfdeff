# dropline: the two commands of the quick start (make run, make test) and the benchmark.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNDIR ?= var

.PHONY: run test lint typecheck unit venv clean

# The environment is rebuilt when pyproject.toml changes; the stamp records that.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "dropline needs Python 3.11 or newer ($(PYTHON) is older)" >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) || \
	  { echo "could not create a virtual environment: on Debian or Ubuntu, 'apt install python3-venv'" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

# Run the daemon in the foreground on ./var with the example configuration.
run: venv
	@mkdir -p $(RUNDIR)/data/incoming $(RUNDIR)/data/working $(RUNDIR)/data/archive \
	  $(RUNDIR)/data/failed $(RUNDIR)/state
	@sed -e "s|/opt/automation/data|$(CURDIR)/$(RUNDIR)/data|" \
	     -e "s|/var/lib/dropline|$(CURDIR)/$(RUNDIR)/state|" \
	     -e "s|/opt/automation/pipelines|$(CURDIR)/config/pipelines|" \
	     config/dropline.yaml > $(RUNDIR)/dropline.yaml
	@echo "dropline: drop files into $(CURDIR)/$(RUNDIR)/data/incoming/"
	@echo "dropline: they end in $(CURDIR)/$(RUNDIR)/data/archive/ or $(CURDIR)/$(RUNDIR)/data/failed/"
	@echo "dropline: configuration $(CURDIR)/$(RUNDIR)/dropline.yaml; Ctrl-C stops"
	$(BIN)/dropline run --config $(RUNDIR)/dropline.yaml

lint: venv
	$(BIN)/ruff check daemon tests
	$(BIN)/ruff format --check daemon tests

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/python -m pytest

test: lint typecheck unit

clean:
	rm -rf $(VENV) $(RUNDIR) .mypy_cache .pytest_cache .ruff_cache
