# One driver for developers, CI and README. Every target works on a fresh machine with a Rust
# toolchain and Python 3.11: `install` makes .venv and fills it from PyPI.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYO3_PYTHON := $(abspath $(BIN)/python)

.PHONY: install build wheel test test-rust test-python test-wheel lint bench bench-rust bench-abi3 demo docs clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile requirements/dev.txt requirements/test.txt requirements/peers-no-deps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/dev.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements/peers-no-deps.txt
	touch $(STAMP)

# Built .so files are git-ignored; remove the old one so a failed build cannot leave it in use.
build: install
	rm -f python/capi_fast/_native*.so
	$(BIN)/maturin develop --release --quiet

test-rust: install
	cargo test --release --quiet

# The suite against the in-tree build (quick, for development).
test-python: build
	$(BIN)/pytest -q --benchmark-disable

# One wheel for CPython 3.11 and later (stable ABI, cp311-abi3), built from the sdist, so the
# sdist is known to build from scratch. Both land in dist/. The wheel is tagged manylinux_2_34
# (any x86_64 Linux with glibc 2.34+); maturin refuses the build if it needs a newer symbol (built
# through pip it would otherwise be tagged plain linux, which PyPI refuses).
wheel: install
	rm -rf dist
	$(BIN)/maturin sdist --out dist
	MATURIN_PEP517_ARGS="--compatibility manylinux_2_34" \
		$(BIN)/python -m pip wheel -q --no-deps --wheel-dir dist dist/capi_fast-*.tar.gz

# The suite against that wheel installed in a fresh venv per CPython (3.11, 3.12, 3.13 where the
# machine has them; PYTHONS="3.12" to choose).
test-wheel: wheel
	scripts/test-wheel

test: test-rust test-wheel

lint: build
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy
	cargo fmt --check
	cargo clippy --release --all-targets --quiet -- -D warnings

# Full-size benchmarks (1M decisions); prints ratios against the pure-Python reference.
bench: build bench-rust
	BENCH_N=1000000 $(BIN)/pytest benches -q --benchmark-only --benchmark-columns=mean,ops,rounds -p no:randomly

# The stable-ABI build against the build for this one interpreter, side by side in one run
# (benches/compare_builds.py): each wheel in a venv of its own, the hot paths timed in alternation.
bench-abi3: install
	rm -rf .venv-bench dist-bench
	$(BIN)/maturin build --release --quiet --out dist-bench/abi3
	$(BIN)/maturin build --release --quiet --no-default-features --out dist-bench/specific
	for b in abi3 specific; do \
		$(PYTHON) -m venv .venv-bench/$$b && .venv-bench/$$b/bin/python -m pip install -q dist-bench/$$b/*.whl || exit 1; \
	done
	BENCH_N=1000000 $(BIN)/python benches/compare_builds.py \
		specific=.venv-bench/specific/bin/python abi3=.venv-bench/abi3/bin/python --rounds 8

# criterion benches of the crate alone (no Python): build, lookup, parse+lookup, batch codes.
bench-rust:
	BENCH_N=1000000 cargo bench --bench index

demo: build
	$(BIN)/capi-fast demo

# The documentation site (docs/, mkdocs.yml) into site/. --strict: a broken link or reference, or
# a docstring that does not render, fails the build.
docs: build
	$(BIN)/python -m pip install -q -r requirements/docs.txt
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

clean:
	rm -rf $(VENV) .venv-wheel .venv-bench dist-bench target site dist python/capi_fast/_native*.so
