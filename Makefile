# Two commands are the contract: `make demo` and `make test`. Both create .venv when it is missing.
#
# torch is installed first, on its own, so that the build is yours to choose:
#   make test TORCH_SPEC="torch==2.13.0"          # default: the CPU build this project is tested with
#   make test TORCH_SPEC="torch>=2.3" PIP_ARGS="--index-url <your wheel index>"   # e.g. a CUDA build
#   make test TORCH_SPEC=                          # keep whatever torch the venv already has
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= all
PIP_ARGS   ?=

BIN   := $(VENV)/bin
# One stamp per install recipe: changing TORCH_SPEC, PIP_ARGS or EXTRAS installs again.
STAMP := $(VENV)/.installed-$(shell printf '%s|%s|%s' '$(TORCH_SPEC)' '$(PIP_ARGS)' '$(EXTRAS)' | cksum | cut -d' ' -f1)

.PHONY: demo test bench-perf bench-science setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH_SPEC)),$(BIN)/python -m pip install --quiet $(PIP_ARGS) "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/warmup_normalization.py

# One intra-op thread unless told otherwise: the test models are tiny, and on 2 cores torch's
# threads and the subprocesses some tests start only fight each other (measured: 78 s instead of about 200 s).
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q

bench-perf: $(STAMP)
	$(BIN)/python benchmarks/hvp_cost.py

# The scientific reproductions, one after the other (about 15 minutes on 2 cores): benchmarks/RESULTS.md
bench-science: $(STAMP)
	$(BIN)/python benchmarks/science/run_all.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
