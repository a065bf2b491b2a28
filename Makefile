# needle-quant: one entry point for students, instructors and CI.
#   make          build the native backends (CPU always, CUDA when nvcc is found)
#   make demo     quantize the shipped MNIST CNN end to end and print the table
#   make test     the whole test suite (library, notebooks, grading pipeline)
#   make bench    kernel and model benchmarks (JSON, markdown table, plot in bench/results)
#   make train    retrain the shipped float checkpoint (checkpoints/mnist_cnn.safetensors)
#   make release / autograde / feedback   the instructor's nbgrader pipeline
#   make autograde JOBS=N   grade the class N at a time (resumable); make gradescope: autograder zips
# Outside a virtual environment (e.g. Colab) use the current interpreter: make build VENV=
PYTHON ?= python3
VENV ?= .venv
ifeq ($(strip $(VENV)),)
PY := $(PYTHON)
DEPS :=
else
PY := $(abspath $(VENV))/bin/python
DEPS := $(VENV)/.installed
endif
BUILD_DIR ?= build
JOBS ?= 2
PYTEST_ARGS ?=

.PHONY: all build deps demo test test-lib test-notebooks test-grading bench train release autograde feedback notebooks clean audit

all: build

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

deps: $(DEPS)

build: $(DEPS)
	cmake -S . -B $(BUILD_DIR) -DPython_EXECUTABLE=$(PY) -DCMAKE_BUILD_TYPE=Release > $(BUILD_DIR).log 2>&1 || (cat $(BUILD_DIR).log; exit 1)
	cmake --build $(BUILD_DIR) -j $(JOBS)

demo: build
	$(PY) -m needle.quant demo

test: build test-lib test-notebooks test-grading

test-lib: build
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

test-notebooks: build
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
	  $(PY) -m pytest -q --nbval notebooks --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider; \
	else echo "no notebooks yet"; fi

test-grading: build
	@if [ -f graders/check_pipeline.py ]; then $(PY) graders/check_pipeline.py; else echo "no grading pipeline yet"; fi
	$(PY) graders/check_scale.py

train: build
	$(PY) -m needle.train --epochs 3 --seed 0 --out checkpoints/mnist_cnn.safetensors

bench: build
	$(PY) bench/run_all.py

release: build
	$(PY) -m graders.release

# JOBS concurrent gradings, each in its own slot; unchanged submissions are skipped
# (AUTOGRADE_ARGS=--force regrades them). Reports in graders/output/.
AUTOGRADE_ARGS ?=
autograde: build
	$(PY) -m graders.batch --jobs $(JOBS) $(AUTOGRADE_ARGS)

feedback: build
	$(PY) -m graders.feedback

# One Gradescope autograder zip per assignment in build/gradescope/ (after `make release`).
.PHONY: gradescope
GRADESCOPE_ARGS ?=
gradescope: build
	$(PY) -m graders.gradescope build $(GRADESCOPE_ARGS)

# Rebuild the course notebooks from graders/nbsrc/*.nbsrc and store their outputs (instructor).
notebooks: build
	$(PY) -m graders.nbbuild --execute

clean:
	rm -rf $(BUILD_DIR) $(BUILD_DIR).log needle/backend_ndarray/*.so release autograded feedback

# The whole grader audit (instructor): every wrong solution of graders/audit_catalog.py against
# the notebooks' tests (C++/CUDA ones rebuild the backend), then the pipeline check with every
# cheat / robustness case of graders/cheat_catalog.py. `make test` runs a fixed part of it.
audit: build
	$(PY) -m graders.audit_fast --native
	$(PY) graders/check_pipeline.py --all-cases
