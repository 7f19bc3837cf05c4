# Every target sets itself up: a fresh clone needs nothing but python3 (>= 3.11) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck unit integration bench soak demo clean install-systemd

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check recomamp tests bench
	$(BIN)/ruff format --check recomamp tests bench

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

unit: install
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration

bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench

# A month of hourly token refreshes for 100 users, time-compressed (about 3 minutes): memory and log cost stay flat.
soak: install
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info .recomamp-demo

demo: install
	$(BIN)/recomamp demo

# Installs this checkout as the service: the unit (pointing at this checkout's .venv), the example
# config (kept if one exists), and the recomamp system user. Run as root. Secrets are yours to place.
install-systemd: install
	id -u recomamp >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin recomamp
	install -d -m 0750 -g recomamp /etc/recomamp
	install -d -m 0700 /etc/recomamp/credentials
	test -f /etc/recomamp/recomamp.toml || install -m 0640 -g recomamp systemd/recomamp.toml /etc/recomamp/recomamp.toml
	sed 's#/opt/recomamp#$(CURDIR)#g' systemd/recomamp.service > /etc/systemd/system/recomamp.service
	systemctl daemon-reload
	@echo "Next: put token-key, amazon-client-secret and database-dsn in /etc/recomamp/credentials (mode 0600),"
	@echo "      then: CREDENTIALS_DIRECTORY=/etc/recomamp/credentials $(BIN)/recomamp migrate up --config /etc/recomamp/recomamp.toml"
	@echo "      then: systemctl enable --now recomamp"
