# Two entry points for a fresh clone: `make serve` and `make test`. Both install into .venv.
# the first interpreter that really runs and is 3.11 or 3.12 (pyenv shims may exist but not run)
PYTHON ?= $(shell for p in python3 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "maskrt needs Python 3.11 or 3.12 (python3 on PATH)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

serve: install
	$(BIN)/maskrt serve

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
