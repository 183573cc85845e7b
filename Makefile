# make demo | make test | make verify | make bench | make demo-reference | make demo-crosscheck | make ui | make recommend TARGET=DIR | make profile-link | make clean
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c envs/constraints.txt
STAMP := $(VENV)/.installed
# One or more config files; later ones are overlays (e.g. CONFIG="config/demo.yaml config/demo_power.yaml").
CONFIG ?= config/demo.yaml
RESULTS ?= results

.PHONY: demo test verify bench demo-reference demo-crosscheck ui recommend profile-link dry-run clean venv data-demo

venv: $(STAMP)

# torch: the CPU wheel, pinned. torchvision 0.28.0 is a CUDA build on PyPI: --no-deps keeps its
# CUDA torch out (atlib.core.compat makes it import on CPU torch). torchattacks pins an old requests;
# nngeometry (the diagonal Fisher's peer in tests and benchmarks) would pull another torch.
# robustbench pins timm==1.0.9 and gdown==5.1.0: --no-deps, then its real dependencies with a current
# timm (setuptools<81 keeps the pkg_resources its loaders import). MadryLab's robustness (and its cox)
# only for the test that writes a checkpoint with their own code: --no-deps, plus what its imports need.
$(STAMP): pyproject.toml envs/constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) --no-deps torchvision==0.28.0 torchattacks==3.5.1 nngeometry==0.4 robustbench==1.1.1 robustness==1.2.1.post2 cox==0.2
	$(PIP) -e '.[test]'
	touch $@

# Fashion-MNIST for the offline demo: torchvision's download where the internet is reachable,
# else Debian's package where we are root with apt, else atlib's message says how to provide it.
data-demo: $(STAMP)
	$(BIN)/python -m atlib.data.fetch

demo: $(STAMP) data-demo
	$(BIN)/python -m atlib.workflow.demo --config $(CONFIG) --results $(RESULTS)

test: $(STAMP)
	$(BIN)/pytest -q

# Every result whose recorded inputs (provenance.json) no longer match the files on disk.
verify: $(STAMP)
	$(BIN)/python -m atlib.workflow.verify $(RESULTS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# The demo from scratch, measured: benchmarks/results/demo.json, the verdicts of record
# (demo_claims.csv) that every `make demo` is compared with, and the README's table made from both.
demo-reference: $(STAMP) data-demo
	$(BIN)/python benchmarks/run_all.py demo

# After `make demo` on a machine other than the reference's: keep this run's comparison with the reference
# (benchmarks/results/crosscheck/<machine>.csv) and regenerate the README's table of record with it.
demo-crosscheck: $(STAMP)
	$(BIN)/python -m atlib.report.reference $(RESULTS)/report/reference_check.csv

dry-run: $(STAMP)
	$(BIN)/snakemake -n --configfile config/config.yaml

# First the address that opens the experiment's runs table (not MLflow's GenAI overview), then the server.
ui: $(STAMP)
	@$(BIN)/python -m atlib.workflow.tracking.ui $(RESULTS) --config $(CONFIG)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(RESULTS))/mlflow.db --host 127.0.0.1 --port 5000

# Which model to fine-tune on an image folder, from a finished run (CONFIG, RESULTS): the ranking in
# seconds; CONFIRM=1 also fine-tunes the top candidates and the standard model to measure it.
# (TARGET is checked when the Makefile is read, before the venv is set up.)
ifneq ($(filter recommend,$(MAKECMDGOALS)),)
ifndef TARGET
$(error usage: make recommend TARGET=DIR [CONFIRM=1] [CONFIG=...] [RESULTS=...])
endif
endif
recommend: $(STAMP)
	$(BIN)/python -m atlib.workflow.recommend --target $(TARGET) --config $(CONFIG) --results $(RESULTS) $(if $(CONFIRM),--confirm)

profile-link:
	mkdir -p $(HOME)/.config/snakemake
	ln -sfn $(abspath profiles/slurm) $(HOME)/.config/snakemake/slurm
	@echo "linked: snakemake --profile slurm now uses $(abspath profiles/slurm)"

clean:
	rm -rf $(RESULTS) .snakemake report.html
