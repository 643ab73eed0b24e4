# One driver for developers, CI and README. Every target works on a fresh machine with a Rust
# toolchain and Python 3.11: `install` makes .venv and fills it from PyPI.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYO3_PYTHON := $(abspath $(BIN)/python)

.PHONY: install build test test-rust test-python lint bench bench-rust demo docs clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "maturin>=1.9.4,<2" "pytest>=8" "hypothesis>=6.100" "pytest-benchmark>=4" \
		"ruff>=0.6" "mypy>=1.10" typing_extensions pytricia py-radix "httpx>=0.27" "orjson>=3.9"
	# cscapi (the benchmark's peer) pins httpx 0.26; its signal path never uses httpx, so it is
	# installed without that pin and our client is tested on current httpx.
	$(BIN)/python -m pip install -q --no-deps "cscapi==0.7.0"
	$(BIN)/python -m pip install -q sqlalchemy python-dateutil dacite importlib-metadata pyjwt more-itertools
	# Real servers and frameworks for the middleware tests and benchmark; pycrowdsec is the
	# benchmark's peer (its Flask middleware).
	$(BIN)/python -m pip install -q "uvicorn>=0.30" "starlette>=0.37" "fastapi>=0.110" "flask>=3" "gunicorn>=22" \
		"django>=5" "waitress>=3" "websockets>=12" "pycrowdsec==0.0.5"
	touch $(STAMP)

# Built .so files are git-ignored; remove the old one so a failed build cannot leave it in use.
build: install
	rm -f python/capi_fast/_native*.so
	$(BIN)/maturin develop --release --quiet

test-rust: install
	cargo test --release --quiet

test-python: build
	$(BIN)/pytest -q --benchmark-disable

test: test-rust test-python

lint: build
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy
	cargo fmt --check
	cargo clippy --release --all-targets --quiet -- -D warnings

# Full-size benchmarks (1M decisions); prints ratios against the pure-Python reference.
bench: build bench-rust
	BENCH_N=1000000 $(BIN)/pytest benches -q --benchmark-only --benchmark-columns=mean,ops,rounds -p no:randomly

# criterion benches of the crate alone (no Python): build, lookup, parse+lookup, batch codes.
bench-rust:
	BENCH_N=1000000 cargo bench --bench index

demo: build
	$(BIN)/capi-fast demo

# The documentation site (docs/, mkdocs.yml) into site/. --strict: a broken link or reference, or
# a docstring that does not render, fails the build.
docs: build
	$(BIN)/python -m pip install -q "mkdocs>=1.6,<2" "mkdocs-material>=9.5,<10" "mkdocstrings[python]>=0.26,<2"
	$(BIN)/mkdocs build --strict --quiet --site-dir site

clean:
	rm -rf $(VENV) target site dist python/capi_fast/_native*.so
