# needle-quant: one entry point for students, instructors and CI.
#   make          build the native backends (CPU always, CUDA when nvcc is found)
#   make demo     quantize the shipped MNIST CNN end to end and print the table
#   make test     the whole test suite (library, notebooks, grading pipeline)
#   make bench    kernel and model benchmarks (JSON, markdown table, plot in bench/results)
#   make train    retrain the shipped float checkpoint (checkpoints/mnist_cnn.safetensors)
#   make release / autograde / feedback   the instructor's nbgrader pipeline
#   make colab-emulation   the release's notebooks in a Colab-like runtime (after make release)
# Students get their own Makefile (course/Makefile.student: build, check, validate, submit).
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

# The release's notebooks in fresh kernels of a Colab-like runtime (graders/colab_emulation.py).
.PHONY: colab-emulation
colab-emulation: release
	$(PY) -m graders.colab_emulation --release release
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

# Memory-safety checks (docs/ARCHITECTURE.md, "Limits and validation").
#   make fuzz       the fuzz suite with 10x its CI number of cases
#   make sanitize   ASan + UBSan build of the CPU backend and of the CUDA host emulation (the
#                   latter when the CUDA toolkit is installed) into $(SANITIZE_DIR)/lib, then
#                   the library tests that run native code and the fuzz suite against those
#                   modules (tests/sanitize_runner.py: summary, fails on any report). About
#                   5 CPU-minutes to build and 10 to test: an instructor / nightly target, not
#                   in `make test`. SANITIZE_TESTS=tests runs the whole library suite.
SANITIZE_DIR ?= build-sanitize
SANITIZE_TESTS ?= tests/test_fuzz_native.py tests/test_fuzz_files.py tests/test_safety_regressions.py \
  tests/test_ndarray.py tests/test_qgemm.py tests/test_qgemm_amx.py tests/test_gemm_f32.py \
  tests/test_cuda_backend.py tests/test_ops.py tests/test_nn.py tests/test_quant_modules.py \
  tests/test_serialization.py tests/test_int4.py tests/test_int4_kernel.py tests/test_int4_cuda.py \
  tests/test_dynamic.py tests/test_dynamic_lstm.py tests/test_fork_safety.py \
  tests/test_sanitizer_probe.py
SANITIZE_EMULATION := $(shell command -v nvcc >/dev/null 2>&1 && echo ON || echo OFF)
.PHONY: fuzz sanitize
fuzz: build
	NEEDLE_FUZZ_SCALE=10 $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz_native.py tests/test_fuzz_files.py

sanitize: $(DEPS)
	cmake -S . -B $(SANITIZE_DIR) -DPython_EXECUTABLE=$(PY) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DNEEDLE_CUDA=OFF -DNEEDLE_SANITIZE=ON -DNEEDLE_EMULATION_HOST=$(SANITIZE_EMULATION) \
	  > $(SANITIZE_DIR).log 2>&1 || (cat $(SANITIZE_DIR).log; exit 1)
	nice cmake --build $(SANITIZE_DIR) -j $(JOBS)
	$(PY) tests/sanitize_runner.py $(SANITIZE_DIR) $(SANITIZE_TESTS) $(PYTEST_ARGS)
# Retrain the shipped character-level LSTM language model (checkpoints/lm_char_lstm.*):
# a few minutes on 2 cores, offline (the license corpus of datasets/README.md).
.PHONY: train-lm
train-lm: build
	$(PY) -m needle.apps.train_lm --epochs 5 --threads 1 --out checkpoints/lm_char_lstm.safetensors
# The whole grader audit (instructor): every wrong solution of graders/audit_catalog.py against
# the notebooks' tests (C++/CUDA ones rebuild the backend), then the pipeline check with every
# cheat / robustness case of graders/cheat_catalog.py. `make test` runs a fixed part of it.
audit: build
	$(PY) graders/check_pipeline.py --all-mutants --native-audit --all-cases
# Re-run the QAT fine-tune (4-bit weights and activations) behind notebook 08's results
# (about 15 minutes on 2 idle cores): writes checkpoints/mnist_cnn_qat_w4a4.safetensors.
.PHONY: qat-checkpoint
qat-checkpoint: build
	$(PY) -c "from needle.quant.qat import main; main()"
