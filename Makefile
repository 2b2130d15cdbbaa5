PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/harness: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/harness
	$(BIN)/harness search competitions/digits --trials 2
	$(BIN)/harness status competitions/digits
	$(BIN)/harness submit competitions/digits

test: $(BIN)/harness
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) runs
