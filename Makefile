# needle-quant: one entry point for students, instructors and CI.
#   make          build the native backends (CPU always, CUDA when nvcc is found)
#   make demo     quantize the shipped MNIST CNN end to end and print the table
#   make test     the whole test suite (library, notebooks, grading pipeline)
#   make bench    kernel and model benchmarks (JSON, markdown table, plot in bench/results)
#   make train    retrain the shipped float checkpoint (checkpoints/mnist_cnn.safetensors)
#   make release / autograde / feedback   the instructor's nbgrader pipeline
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

.PHONY: all build deps demo test test-lib test-notebooks test-grading bench train release autograde feedback notebooks clean

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

train: build
	$(PY) -m needle.train --epochs 3 --seed 0 --out checkpoints/mnist_cnn.safetensors

bench: build
	$(PY) bench/run_all.py

release: build
	$(PY) -m graders.release

autograde: build
	$(PY) -m graders.autograde

feedback: build
	$(PY) -m graders.feedback

# Rebuild the course notebooks from graders/nbsrc/*.nbsrc and store their outputs (instructor).
notebooks: build
	$(PY) -m graders.nbbuild --execute

clean:
	rm -rf $(BUILD_DIR) $(BUILD_DIR).log needle/backend_ndarray/*.so release autograded feedback

# Re-run the QAT fine-tune (4-bit weights and activations) behind notebook 08's results
# (about 15 minutes on 2 idle cores): writes checkpoints/mnist_cnn_qat_w4a4.safetensors.
.PHONY: qat-checkpoint
qat-checkpoint: build
	$(PY) -c "from needle.quant.qat import main; main()"
