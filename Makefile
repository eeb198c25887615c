# Two entry points, each self-bootstrapping: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo demo-t2i test test-fast lint docs install bench-memory bench-algorithms bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedumm run configs/quickstart.yaml --set output.overwrite=true

# Federated text-to-image on a tiny Janus (GenEval-style checker, VQ ceiling, images in GenEval's layout).
demo-t2i: $(STAMP)
	$(BIN)/fedumm run configs/t2i_quickstart.yaml --set output.overwrite=true

# The whole suite (CI runs this): lint, format check, import layering, the docs build, every test.
test: lint docs
	$(BIN)/python -m pytest

# The documentation site (docs/ -> .site/); --strict fails on a broken link or page.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The inner loop: lint and the tests not marked slow (end-to-end runs).
test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

bench-memory: $(STAMP)
	$(BIN)/python bench/memory.py

bench-algorithms: $(STAMP)
	$(BIN)/python bench/algorithms.py

# Needs a CUDA GPU (and torch's CUDA build); `bench/gpu_train.py --smoke` checks it on the CPU.
bench-gpu: $(STAMP)
	$(BIN)/python bench/gpu_train.py

clean:
	rm -rf $(VENV) runs .pytest_cache .site

# NVIDIA FLARE engine: its tests, the quickstart in FLARE's simulator, an exported job, the
# exported job on a loopback deployment (provisioned server + 2 sites as processes), the bench.
.PHONY: test-nvflare nvflare-demo nvflare-export nvflare-poc bench-engines

NVFLARE_POC_SET := --set name=poc-demo --set federation.num_clients=2 --set federation.rounds=3 \
	--set eval.centralized_baseline=false \
	--set 'engine.sites={site-1: {seed: 1, data: {synthetic: {train_samples: 400, test_samples: 80}}}, site-2: {seed: 2, data: {synthetic: {train_samples: 400, test_samples: 80}}}}'

test-nvflare: $(STAMP)
	$(BIN)/python -m pytest tests/engines/nvflare

nvflare-demo: $(STAMP)
	$(BIN)/fedumm run configs/quickstart.yaml --set engine.name=nvflare --set output.name=quickstart-nvflare --set output.overwrite=true

nvflare-export: $(STAMP)
	$(BIN)/fedumm export configs/quickstart.yaml --out runs/nvflare-jobs

nvflare-poc: $(STAMP)
	$(BIN)/fedumm export configs/quickstart.yaml --out runs/nvflare-jobs $(NVFLARE_POC_SET)
	$(BIN)/python -m fedumm.engines.nvflare.poc runs/nvflare-jobs/poc-demo --out runs/poc-demo

bench-engines: $(STAMP)
	$(BIN)/python bench/engines.py
