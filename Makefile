# Two entry points: `make demo` (the main job on embedded defaults) and `make test`.
# Both create/use the local virtual environment $(VENV).
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only machines: a pinned CPU build (on this project's CI machines it lies on disk, no download).
# GPU machines: make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" ...
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= medgan_local

.PHONY: demo engine-demo test install bench bench-e2e clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[pipeline,test]"
	touch $@

install: $(VENV)/.installed

# The main job: the whole KFP pipeline, run here by kfp.local on embedded defaults (phantom
# cohort, local Ray, MLflow on sqlite): CycleGAN on UNPAIRED data (the training MR and CT from
# disjoint subjects; preset `unpaired`, docs/results.md). The CPU model removes the small lesions,
# so the lesion audit is reported, not required (the tissue-swap gate always is; see README).
demo: $(VENV)/.installed
	$(PY) pipelines/cyclegan_mr_ct.py --local --workdir $(DEMO_DIR) \
		--param framework=cyclegan --param preset=unpaired --param unpaired=true \
		--param require_audit=false

# The engine alone: phantom -> pix2pix + CycleGAN -> evaluation table (no Ray/KFP/MLflow).
engine-demo: $(VENV)/.installed
	$(VENV)/bin/medgan demo --workdir $(DEMO_DIR)/engine

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) bench/train_throughput.py

# The end-to-end learning check with the demo's recipe (1500 iterations: minutes; the test
# suite trains the same data a fifth as long).
bench-e2e: $(VENV)/.installed
	$(PY) bench/e2e_learning.py --workdir $(DEMO_DIR)/bench_e2e

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
