# Two commands: `make book` and `make test`. Both create .venv (Python 3.11) from requirements.txt.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test test-lib venv clean notebooks bench

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip -q
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book is in $(CURDIR)/_build/html/index.html"

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-lib: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not book and not browser"

clean:
	rm -rf _build
