# Two commands: `make book` and `make test`. Both create .venv (Python 3.11) from requirements.txt.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test test-lib venv clean bench data

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml | data
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip -q
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# Fashion-MNIST (chapter 12): Debian's dataset-fashion-mnist. Installed here when running as root
# and missing; otherwise the command is printed. Never fails the build (the tests skip without it).
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
data:
	@if [ -n "$$BGCN_FASHION_MNIST_DIR" ] && [ -d "$$BGCN_FASHION_MNIST_DIR" ]; then :; \
	elif [ -e $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make: apt-get install dataset-fashion-mnist"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "make: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	else \
	  echo "make: Fashion-MNIST not found; install it with: sudo apt-get install dataset-fashion-mnist"; \
	  echo "      (or put the IDX files in a folder and set BGCN_FASHION_MNIST_DIR)"; \
	fi

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book is in $(CURDIR)/_build/html/index.html"

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-lib: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not book and not browser"

clean:
	rm -rf _build

# ---- book helpers -------------------------------------------------------------------------------
# `make book` already works as it is: scripts/bookext.py (named in _config.yml) sets the plotly
# renderer and clears stale execution caches itself. These targets are conveniences.
.PHONY: toc notebooks js test-book test-browser

toc: $(STAMP)                      # rewrite _toc.yml from chapters/NN_*.md (commit the result)
	$(BIN)/python scripts/make_toc.py

notebooks: $(STAMP)                # .ipynb copies for Colab (with outputs after `make book`)
	$(BIN)/python scripts/make_notebooks.py --out notebooks

js:                                # local copies of the CDN scripts, for the browser test
	bash scripts/fetch_js.sh

test-book: $(STAMP)                # build from a clean cache and check the pages
	$(BIN)/python -m pytest -q -ra -m book

test-browser: $(STAMP) js          # open the pages `make book` built in headless Chromium
	BGCN_BOOK_PREBUILT=1 $(BIN)/python -m pytest -q -ra -m browser

