# Two entry points for a fresh clone: `make serve` and `make test`. Both install into .venv: serve
# only what serving needs, test the test, lint and Ray tooling on top (each with its own stamp).
# the first interpreter that really runs and is 3.11 or 3.12 (pyenv shims may exist but not run)
PYTHON ?= $(shell for p in python3 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test
PIP_INSTALL := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet

.PHONY: install serve test lint typecheck browser clean grpc-proto

$(SERVE_STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "maskrt needs Python 3.11 or 3.12 (python3 on PATH)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) -e .
	touch $@

$(TEST_STAMP): $(SERVE_STAMP)
	$(PIP_INSTALL) -e '.[dev,ray]'
	touch $@

# what `make serve` needs; `make test` adds the rest
install: $(SERVE_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/maskrt serve

# lint, format, types, then the suite: CI (.ci/run) runs exactly this
test: lint typecheck browser $(TEST_STAMP)
	$(BIN)/python -m pytest

# lint: ruff, then the layers of the package (import-linter's contracts in pyproject.toml)
lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(TEST_STAMP)
	$(BIN)/mypy -p maskrt

# The browser tests drive Debian's chromium; as root (CI) it is installed when missing. Under
# CI=true a chromium still missing fails here; elsewhere nothing changes and those tests skip,
# saying why.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		|| echo "could not install Debian's chromium with apt-get" >&2; \
	fi; \
	command -v chromium >/dev/null 2>&1 || [ "$${CI:-}" != true ] \
	|| { echo "CI=true: no chromium for the browser tests (make browser installs it as root)" >&2; exit 1; }

# Triton's gRPC protocol: the Python code generated from server/triton_proto/*.proto (kept in the
# repository; run after replacing the .proto files)
P := server/triton_proto
grpc-proto: install
	$(BIN)/python -m grpc_tools.protoc -I $(P) --python_out=$(P) --pyi_out=$(P) \
		--grpc_python_out=$(P) $(P)/model_config.proto $(P)/grpc_service.proto
	sed -i 's/^import \(model_config\|grpc_service\)_pb2 as/from maskrt.server.triton_proto import \1_pb2 as/' \
		$(P)/*_pb2*.py*
	rm -f $(P)/model_config_pb2_grpc.py  # a file without a service

clean:
	rm -rf $(VENV) .pytest_cache
