# csd-texture: `make demo` installs everything and textures a bundled asset; `make test` installs and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The small pattern prior that ships with the tests (offline, about a minute on a 2-core CPU);
# MODEL= (empty) uses the default Stable Diffusion model instead (downloads about 5 GB once).
MODEL ?= tests/data/pattern-prior
PROMPT ?= a red and white striped soda can
# fuze.obj stands along +Z. The test priors' vocabulary lacks the default negative prompt's words
# (unknown words give them an untrained embedding that pushes the hue off), so they run without it.
DEMO_ARGS ?= --up-axis z $(if $(filter tests/data/%,$(MODEL)),--steps 150 --texture-size 256 --render-size 64 --seed 0 --negative-prompt "",--preset fast)

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

# One pytest-xdist worker per core; a file's tests stay on one worker (they share its fixtures).
PYTEST_PARALLEL ?= -n auto --dist loadfile

test: install
	bash tools/install_test_deps.sh
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

# The suite without the long end-to-end runs (marked slow), for quick local checks; `make test` runs everything.
test-fast: install
	bash tools/install_test_deps.sh
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_PARALLEL)

demo: install
	@echo "make demo: model $(or $(MODEL),default (Stable Diffusion 2.1-base)); MODEL=FOLDER_OR_ID picks another, MODEL= the default"
	mkdir -p out
	$(BIN)/csd-texture assets/fuze.obj "$(PROMPT)" -o out/demo.glb --save-maps out/demo-maps --preview out/demo.png \
		$(if $(MODEL),--model $(MODEL)) $(DEMO_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache
