# Two entry points: `make demo` (the main job on embedded defaults) and `make test`.
# Both create/use the local virtual environment $(VENV).
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only machines: a pinned CPU build (on this project's CI machines it lies on disk, no download).
# GPU machines: make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" ...
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo_out

.PHONY: demo test install bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[pipeline,test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/medgan demo --workdir $(DEMO_DIR)

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) bench/train_throughput.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
