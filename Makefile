# csd-texture: `make demo` installs everything and textures a bundled asset; `make test` installs and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?=
PROMPT ?= a red and white striped soda can
DEMO_ARGS ?= --preset fast

.PHONY: install test test-fast demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# CPU machines: requirements/cpu.txt pins the CPU build of torch (no multi-GB CUDA download).
# CUDA machines: install torch for your CUDA first, then `pip install -e ".[cuda,test]"` (README).
$(VENV)/.installed: $(BIN)/python pyproject.toml requirements/cpu.txt
	$(BIN)/pip install -q -r requirements/cpu.txt
	$(BIN)/pip install -q -e ".[test,ray,serve]"
	touch $@

install: $(VENV)/.installed

test: install
	bash tools/install_test_deps.sh
	$(BIN)/python -m pytest -q

demo: install
	mkdir -p out
	$(BIN)/csd-texture assets/fuze.obj "$(PROMPT)" -o out/demo.glb --save-maps out/demo-maps \
		$(if $(MODEL),--model $(MODEL)) $(DEMO_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache
