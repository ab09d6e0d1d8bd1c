# Two entry points: `make quickstart` (the main job on embedded defaults) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-cluster clean

# torch goes in first: the CPU wheel 2.13.0 unless a CUDA build is already importable (GPU nodes), so
# that no later requirement pulls several GB of CUDA wheels.
$(STAMP): pyproject.toml constraints.txt
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PY) -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then \
	    echo "using the CUDA build of torch already installed"; $(PY) -m venv --system-site-packages $(VENV); \
	  else $(PY) -m venv $(VENV); fi; fi
	@if ! $(BIN)/python -c 'import torch' 2>/dev/null; then $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -c constraints.txt -e ".[train,optuna,pusht,test]"
	@touch $@

install: $(STAMP)

# synthetic shards -> Ray Data -> 2 Ray Train workers with DeepSpeed -> MLflow run + registered model
quickstart: install
	$(BIN)/vwm data synth --out outputs/synth --num-videos 64 --shards 4 --seed 0
	$(BIN)/vwm pretrain --config configs/pretrain/debug_shards.yaml

test: install
	$(BIN)/python -m pytest

# a head and two worker nodes on this machine, a node lost mid-run (4-5 minutes on 2 cores)
test-cluster: install
	$(BIN)/python -m pytest -m cluster

clean:
	rm -rf outputs .pytest_cache
