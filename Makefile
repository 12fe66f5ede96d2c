# Two commands are the contract: `make demo` and `make test`. Both create .venv when it is missing.
#
# torch is installed first, on its own, so that the build is yours to choose:
#   make test TORCH_SPEC="torch==2.13.0"          # default: the CPU build this project is tested with
#   make test TORCH_SPEC="torch>=2.4" PIP_ARGS="--index-url <your wheel index>"   # e.g. a CUDA build
#   make test TORCH_SPEC=                          # keep whatever torch the venv already has
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= all,dev
PIP_ARGS   ?=

# The curvature tools bench-perf compares with, pinned, installed without their dependencies:
# curvlinops pulls backpack, which pulls torchvision and with it another torch.
PEERS ?= pyhessian==0.1 hessian-eigenthings==1.0.0a5 curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 \
         einops==0.8.2 opt_einsum==3.4.0 einconv==0.1.0 unfoldNd==0.2.3 linear_operator==0.6.1 tqdm

BIN   := $(VENV)/bin
# One stamp per install recipe: changing TORCH_SPEC, PIP_ARGS or EXTRAS installs again.
STAMP := $(VENV)/.installed-$(shell printf '%s|%s|%s' '$(TORCH_SPEC)' '$(PIP_ARGS)' '$(EXTRAS)' | cksum | cut -d' ' -f1)

.PHONY: demo test lint bench-perf bench-science bench-detectors setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(strip $(TORCH_SPEC)),$(BIN)/python -m pip install --quiet $(PIP_ARGS) "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install --quiet --no-deps $(PEERS)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/warmup_normalization.py

# One intra-op thread unless told otherwise: the test models are tiny, and on 2 cores torch's
# threads and the subprocesses some tests start only fight each other (measured: 78 s instead of about 200 s).
test: lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q

# The linter and the type checker on the package (configured in pyproject.toml); make test runs them first.
lint: $(STAMP)
	$(BIN)/ruff check edgewatch
	$(BIN)/mypy

# The peers side by side, HVP costs, warm starts, the Monitor's overhead and its default budget (about 15 minutes): benchmarks/PERFORMANCE.md
bench-perf: $(STAMP)
	$(BIN)/python benchmarks/perf/run_all.py

# The scientific reproductions, one after the other (about 15 minutes on 2 cores): benchmarks/RESULTS.md
bench-science: $(STAMP)
	$(BIN)/python benchmarks/science/run_all.py

# The detectors judged on generated, labelled runs (about 1-2 minutes on one core): benchmarks/DETECTORS.md
bench-detectors: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python benchmarks/detectors/run.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
