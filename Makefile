# teleport-py developer entry points. `make start` and `make test` are the README's quick start.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data
PLUGINS := plugins/auth plugins/proxy plugins/node plugins/audit_json plugins/storage_s3 plugins/storage_etcd plugins/web

.PHONY: venv start test lint type wheels bench clean

$(BIN)/teleport: pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]' $(addprefix -e ,$(PLUGINS)) -e 'plugins/storage_s3[test]' \
		-e examples/audit-sink-sqlite -e examples/storage-lmdb -e examples/access-request-webhook
	@touch $@

venv: $(BIN)/teleport

# A one-process cluster on embedded defaults (SQLite state, JSON audit log and recordings on disk).
start: venv
	@bash scripts/quickstart.sh $(BIN) $(DATA)

test: venv
	bash scripts/test.sh $(BIN)

lint: venv
	$(BIN)/ruff check .

type: venv
	$(BIN)/mypy

wheels:
	bash scripts/wheels.sh

bench: venv
	$(BIN)/python bench/backend_ops.py
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/audit_json.py --events 200000
	$(BIN)/python bench/auth_certs.py

clean:
	rm -rf $(VENV) dist build .tox .pytest_cache .mypy_cache .ruff_cache
