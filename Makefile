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

.PHONY: install browser run test lint bench report clean approx-depth approx-full glue-quick lm-quick lm-golf-cpu peft-quick peft-medium peft-masks-medium theory-quick answer hypothesis-pilot theory-blocks collapse-quick collapse-study collapse-deep

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	@if [ "$(EXPECT_CPU_TORCH)" = "1" ]; then \
	  $(BIN)/python -W ignore -c "import torch,sys; assert torch.version.cuda is None, 'expected the CPU build of torch, got CUDA '+str(torch.version.cuda); print('torch', torch.__version__, '(CPU build)')"; fi
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/sltlab approx configs/approx_quick.toml
	$(BIN)/sltlab report --store runs/sltlab.db --out runs/report

# The report test opens the HTML in headless Chromium. Installed here when absent and apt-get can run (root or
# passwordless sudo); otherwise that one test is skipped with the reason. Set BROWSER_INSTALL=0 to never try.
BROWSER_INSTALL ?= 1
browser:
	@if command -v chromium >/dev/null 2>&1 || [ "$(BROWSER_INSTALL)" != "1" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
	  echo "note: chromium absent and apt-get needs root; the headless report test will be skipped"; exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the report test (apt-get)"; \
	  ( $$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	    ( $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 ) ) \
	  || echo "note: could not install chromium; the headless report test will be skipped"; \
	else echo "note: no apt-get; install chromium yourself to run the headless report test"; fi

test: install browser
	$(BIN)/python -m pytest tests

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_search_step.py
	$(BIN)/python benchmarks/bench_artifact.py

report: install
	$(BIN)/sltlab report --store runs/sltlab.db --out runs/report

# The studies behind docs/RESULTS.md, at CPU scale (each resumes from the store; times on 2 idle cores).
approx-depth: install  # ~10 min
	$(BIN)/sltlab approx configs/approx_depth.toml

approx-full: install  # hours on 2 cores; meant for a bigger machine
	$(BIN)/sltlab approx configs/approx_full.toml

theory-quick: install
	$(BIN)/sltlab theory all configs/theory_quick.toml

glue-quick: install
	$(BIN)/sltlab glue configs/glue_quick.toml
	$(BIN)/sltlab glue-table

lm-quick: install
	$(BIN)/sltlab lm configs/lm_quick.toml

# The parameter-golf equal-bytes study on the CPU (docs/results/lm.md; ~3 h of one core on a quiet machine)
lm-golf-cpu: install
	PYTHON=$(BIN)/python bash benchmarks/lm_golf_cpu.sh probe
	PYTHON=$(BIN)/python bash benchmarks/lm_golf_cpu.sh main
	PYTHON=$(BIN)/python DENSE_LR=1e-2 DENSE_D_MATRICES=88 bash benchmarks/lm_golf_cpu.sh dense
	PYTHON=$(BIN)/python bash benchmarks/lm_golf_cpu.sh ablate
	$(BIN)/python benchmarks/lm_golf_figures.py runs/lm_golf_cpu.db --out docs/results

peft-quick: install
	$(BIN)/sltlab peft configs/peft_quick.toml

peft-medium: install  # ~30 min per task on one core; cells on every core (local executor)
	$(BIN)/sltlab peft configs/peft_medium.toml --store runs/peft_medium.db
	$(BIN)/sltlab peft configs/peft_medium.toml --store runs/peft_medium.db --no-run --report docs/results/peft_medium.md

peft-masks-medium: install  # issue 13's five-task study: 132 runs + 5 Fisher runs, about 3 h 25 min on 2 cores (local executor)
	$(BIN)/sltlab peft configs/peft_masks_medium.toml --store runs/peft_masks_medium.db
	$(BIN)/sltlab peft configs/peft_masks_medium.toml --store runs/peft_masks_medium.db --no-run \
		--report docs/results/peft_masks_medium.md

# Issue 20's answer: the like-for-like quality studies, SST-2 with lr per norm, the pre-registered hypothesis study,
# all in one store, and the report whose first screen is the claims table (about 5 h on 2 shared cores).
answer: install
	$(BIN)/sltlab approx configs/approx_quality_mha.toml
	$(BIN)/sltlab approx configs/approx_quality_stack.toml
	$(BIN)/sltlab glue configs/glue_sst2_norms.toml --store runs/answer.db
	$(BIN)/sltlab approx configs/hypothesis.toml
	$(BIN)/sltlab report --store runs/answer.db --out runs/answer_report

# The pilot whose sds size configs/hypothesis.toml (its own seeds and store; ~40 min on 2 shared cores).
hypothesis-pilot: install
	$(BIN)/sltlab approx configs/hypothesis.toml --seeds 100,101,102,103 --set name='"hypothesis-pilot"' \
		--store runs/pilot.db --out runs/pilot
	$(BIN)/sltlab report --store runs/pilot.db --out runs/pilot_report

# Issue 21, the theory with LayerNorm (docs/results/theory.md sections 6-7): whole-block constructed tickets with
# every norm (d=4 ~25 min, d=8 ~22 min on the shared 2-core machine, one worker) and rank collapse across depth
# (quick ~3 min; the documented study 15 min and depth 64 4.4 min by their stores' timestamps, one worker).
theory-blocks: install
	$(BIN)/sltlab theory blocks configs/theory_blocks.toml --store runs/theory_blocks.db --out-dir runs/theory_blocks --workers 1
	$(BIN)/sltlab theory blocks configs/theory_blocks_d8.toml --store runs/theory_blocks_d8.db --out-dir runs/theory_blocks_d8 --workers 1

collapse-quick: install
	$(BIN)/sltlab collapse configs/collapse_quick.toml

collapse-study: install
	$(BIN)/sltlab collapse configs/collapse_study.toml --store runs/collapse_study.db --workers 1

collapse-deep: install
	$(BIN)/sltlab collapse configs/collapse_deep.toml --store runs/collapse_deep.db --workers 1

clean:
	rm -rf $(VENV) runs build *.egg-info
