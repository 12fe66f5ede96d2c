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

.PHONY: demo test bench-perf setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH_SPEC)),$(BIN)/python -m pip install --quiet $(PIP_ARGS) "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/warmup_normalization.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench-perf: $(STAMP)
	$(BIN)/python benchmarks/hvp_cost.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
