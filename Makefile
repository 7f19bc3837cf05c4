# Every target sets itself up: a fresh clone needs nothing but python3 (>= 3.11) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck unit integration bench soak demo clean install-systemd service-venv systemd-check

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info .recomamp-demo .recomamp-standalone

# The demo needs the package and its embedded servers, not the dev tools: a venv made for it installs
# '.[sandbox]' only; one made by `make install` (a superset) is used as it is.
SANDBOX_STAMP := $(VENV)/.sandbox-installed

$(SANDBOX_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@# setuptools warns, on every editable build, about folders named like the package: not a demo's concern.
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[sandbox]'
	touch $(SANDBOX_STAMP)

demo: $(if $(wildcard $(STAMP)),$(STAMP),$(SANDBOX_STAMP))
	@$(BIN)/recomamp demo

# The service runs from a venv of its own: a regular (not editable) install of this checkout, built from a
# Python the service user can execute (systemd/check-python refuses one under /root, /home or /tmp).
SERVICE_VENV ?= /opt/recomamp/venv

# (Re)builds the service venv from this checkout: needs the package index. Upgrades use it too.
service-venv:
	systemd/check-python $(PYTHON)
	test -x $(SERVICE_VENV)/bin/python || $(PYTHON) -m venv $(SERVICE_VENV)
	$(SERVICE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SERVICE_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps . && \
		$(SERVICE_VENV)/bin/python -m pip install --quiet .
	$(SERVICE_VENV)/bin/recomamp --version

# Installs the service: the venv (built when missing), the recomamp system user (home: its state
# directory), /etc/recomamp with the example config (kept if one exists), and the units (recomamp.service, and
# recomamp@.service for several replicas on one host). Run as root.
# Secrets are yours to place. PYTHON=/usr/bin/python3 when the first python3 on the PATH is a pyenv one.
install-systemd:
	test -x $(SERVICE_VENV)/bin/recomamp || $(MAKE) service-venv PYTHON=$(PYTHON) SERVICE_VENV=$(SERVICE_VENV)
	systemd/check-python $(SERVICE_VENV)/bin/python
	id -u recomamp >/dev/null 2>&1 || useradd --system --home-dir /var/lib/recomamp --no-create-home \
		--shell /usr/sbin/nologin recomamp
	install -d -m 0750 -g recomamp /etc/recomamp
	install -d -m 0700 /etc/recomamp/credentials
	test -f /etc/recomamp/recomamp.toml || $(SERVICE_VENV)/bin/recomamp example-config > /etc/recomamp/recomamp.toml
	chgrp recomamp /etc/recomamp/recomamp.toml && chmod 0640 /etc/recomamp/recomamp.toml
	sed 's#/opt/recomamp/venv#$(SERVICE_VENV)#g' systemd/recomamp.service > /etc/systemd/system/recomamp.service
	sed 's#/opt/recomamp/venv#$(SERVICE_VENV)#g' systemd/recomamp@.service > /etc/systemd/system/recomamp@.service
	systemctl daemon-reload
	@echo "Next: put token-key, amazon-client-secret and database-dsn in /etc/recomamp/credentials (mode 0600),"
	@echo "      then: CREDENTIALS_DIRECTORY=/etc/recomamp/credentials $(SERVICE_VENV)/bin/recomamp migrate up --config /etc/recomamp/recomamp.toml"
	@echo "      then: systemctl enable --now recomamp"

# The unit under a real systemd 252 (../shared/tools/systemd-sandbox): start, runs, journalctl recipes,
# reload good and bad, restart, stop with a run in flight, a Postgres outage, the security score, and two
# templated instances (recomamp@a, recomamp@b) on one host: both claim, a reload of one leaves the other alone.
systemd-check: install
	$(BIN)/python -m tests.systemd.check
