# Two entry points for a newcomer: `make run` (the gateway on its embedded default)
# and `make test` (the whole test suite, installing Debian packages first when root).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The public samples beside the project, as .ci/run sets them: the corpus tests run, not skip.
MSGW_CORPUS ?= $(if $(wildcard ../shared/samples),$(abspath ../shared/samples))
export MSGW_CORPUS
DEB_PACKAGES := softhsm2 opensc gpgsm gnupg swaks openssl postfix dirmngr slapd postgresql chromium chromium-driver systemd

.PHONY: run test deps venv lint clean

$(BIN)/msgw: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,fast]'
	touch $(BIN)/msgw

venv: $(BIN)/msgw

deps:
	@if [ "$$(id -u)" = "0" ]; then \
	  missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "not root: make sure these Debian packages are installed: $(DEB_PACKAGES)"; fi

run: venv
	$(BIN)/msgw serve

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test: deps venv lint
	$(BIN)/pytest -q -p no:cacheprovider --durations=30 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
