PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean postgres browser

$(BIN)/harness: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,postgres]'
	touch $@

demo: $(BIN)/harness
	$(BIN)/harness search competitions/digits --trials 2
	$(BIN)/harness status competitions/digits
	$(BIN)/harness submit competitions/digits

test: $(BIN)/harness postgres browser
	$(BIN)/pytest -q

# tests/test_workers.py starts a throw-away PostgreSQL cluster: install the server when it is missing
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || \
	  echo "the postgresql package could not be installed: the PostgreSQL tests will skip"

# tests/test_report.py opens report.html in a headless browser: install Debian's chromium when it is missing
browser:
	@command -v chromium >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "the chromium package could not be installed: the browser test will skip"

clean:
	rm -rf $(VENV) runs
