# The two commands a newcomer needs: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup arm-tools test test-slow demo lint bench clean

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

# The aarch64 checks (cross-compiled libraries run under qemu) need qemu-user and the cross g++.
# Installed with apt-get where that works (root, or passwordless sudo); otherwise one line says they are
# skipped and how to enable them, and the tests that need them skip.
ARM_TOOLS := qemu-aarch64 aarch64-linux-gnu-g++
ARM_PKGS := qemu-user g++-aarch64-linux-gnu

arm-tools:
	@missing=""; for t in $(ARM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo="sudo -n"; else sudo=none; fi; \
	if [ "$$sudo" != none ] && command -v apt-get >/dev/null 2>&1 && \
		echo "installing the aarch64 toolchain (missing:$$missing): apt-get install $(ARM_PKGS)" && \
		$$sudo apt-get update -qq >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $(ARM_PKGS) >/dev/null 2>&1; then exit 0; fi; \
	echo "ARM checks skipped (missing:$$missing); enable them with: sudo apt-get install $(ARM_PKGS)"

test: setup arm-tools
	$(THREADS) $(BIN)/python -m pytest -q -n 2 --dist loadgroup

test-slow: setup arm-tools
	$(THREADS) $(BIN)/python -m pytest -q -n 2 --dist loadgroup -m slow

demo: setup arm-tools
	$(BIN)/qcompile demo --out runs/demo

lint: setup
	$(BIN)/ruff check qcompile passes backends search tests benchmarks

bench: setup
	$(BIN)/python -m pytest benchmarks --benchmark-enable -m "not slow" -p no:xdist

clean:
	rm -rf $(VENV) build *.egg-info runs .pytest_cache
