# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create the virtual environment .venv they need.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo_output

.PHONY: demo test venv bench science learnability label-quality chromium clean

$(BIN)/hamuco: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(BIN)/hamuco

venv: $(BIN)/hamuco

demo: venv
	$(BIN)/hamuco demo --out $(DEMO)

# The report test opens the HTML report in headless Chromium (Debian's chromium + chromium-driver).
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver for the report test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends chromium chromium-driver >/dev/null; }

# One pytest worker per core, a test file to a worker, the longest files first (tests/conftest.py);
# each worker's OpenMP threads are its share of the cores. TEST_ARGS='-n 0' runs them in one process.
test: venv chromium
	$(BIN)/python -m pytest -q --durations=15 -n auto --dist loadfile --no-loadscope-reorder $(TEST_ARGS)

bench: venv
	$(BIN)/python bench/synth.py

# The science benchmark under bench/PROTOCOL.md (held-out captures, 3 seeds, intervals, baselines,
# ablations, noise curve) as Luigi tasks; writes RESULTS.md and results/science.json (see RESULTS.md
# for its run time on 2 cores). Interrupted, it resumes; SCIENCE_ARGS='--quick' is a smoke run.
science: venv
	$(BIN)/python bench/science.py --out science_output --results results $(SCIENCE_ARGS)

# The learnability ladder (bench/learnability.py): rung 1 fit, rung 2 unseen captures with perfect labels,
# rung 3 MediaPipe labels with 3 seeds; results/learnability.json. Each rung runs the recipe of its chosen run
# (LEARN_ARGS='--recipe official' for the official one); LEARN_ARGS='--rungs 1' runs one rung.
learnability: venv
	$(BIN)/python bench/learnability.py --out learnability_output --results results $(LEARN_ARGS)

# Label quality (bench/label_quality.py): MediaPipe labels raw / bootstrapped / bootstrapped + smoothed on
# ring and dome-with-occluder captures; results/label_quality.json and an HTML report per rig.
label-quality: venv
	$(BIN)/python bench/label_quality.py --out label_quality_output --results results

clean:
	rm -rf $(DEMO) build *.egg-info
