# Fresh-machine entry points. Each target creates .venv and installs what it needs (amsim, its extras, the
# offline datasets).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := $(VENV)/.data

.PHONY: demo test lint bench gpu-check gpu-check-emulated clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $(STAMP)

$(DATA): scripts/install_data.sh | $(STAMP)
	PYTHON=$(BIN)/python bash scripts/install_data.sh
	touch $(DATA)

demo: $(STAMP) $(DATA)
	$(BIN)/python -m amsim.demo

test: $(STAMP) $(DATA)
	AMSIM_NB_QUICK=1 $(BIN)/python -m pytest -q --nbmake --durations=15 -n auto

lint: $(STAMP)
	$(BIN)/python -m ruff check amsim tests benchmarks scripts
	$(BIN)/python scripts/import_graph.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_cpu_gemm.py
	$(BIN)/python benchmarks/bench_train_step.py
	$(BIN)/python benchmarks/bench_bridge.py

gpu-check: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/gpu_check.sh

# the same script without a GPU: emulated CuPy, small benchmarks (checks the script and code paths, not speed)
gpu-check-emulated: $(STAMP)
	AMSIM_EMULATED_GPU=1 PYTHON=$(BIN)/python OUT=gpu_out_emulated bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache results
