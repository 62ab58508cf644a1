# Two commands for a fresh machine: `make run` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV ?= .venv
# Users elsewhere choose their own build, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124".
TORCH_SPEC ?= torch==2.13.0
# Set to 0 where a CUDA build of torch is wanted.
EXPECT_CPU_TORCH ?= 1
EXTRAS ?= dev,pretrained
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench report clean approx-full glue-quick lm-quick

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	@if [ "$(EXPECT_CPU_TORCH)" = "1" ]; then \
	  $(BIN)/python -c "import torch,sys; assert torch.version.cuda is None, 'expected the CPU build of torch, got CUDA '+str(torch.version.cuda); print('torch', torch.__version__, '(CPU build)')"; fi
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/sltlab approx configs/approx_quick.toml
	$(BIN)/sltlab report --store runs/sltlab.db --out runs/report

test: install
	$(BIN)/python -m pytest tests

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_search_step.py

clean:
	rm -rf $(VENV) runs build *.egg-info
