# The two commands a newcomer needs: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-slow demo lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[tvm,onnx,search,dev]"
	touch $(STAMP)

# One thread per test worker: two xdist workers with two OpenMP threads each oversubscribe the
# two cores, and spinning OpenMP threads then run 30x slower (measured here).
THREADS := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TVM_NUM_THREADS=1

test: setup
	$(THREADS) $(BIN)/python -m pytest -q -n 2 --dist loadgroup

test-slow: setup
	$(THREADS) $(BIN)/python -m pytest -q -n 2 --dist loadgroup -m slow

demo: setup
	$(BIN)/qcompile demo --out runs/demo

lint: setup
	$(BIN)/ruff check qcompile passes backends search tests benchmarks

bench: setup
	$(BIN)/python -m pytest benchmarks --benchmark-enable -m "not slow" -p no:xdist

clean:
	rm -rf $(VENV) build *.egg-info runs .pytest_cache
