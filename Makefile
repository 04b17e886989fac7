# AnyAnomaly: developer entry points. The first use creates .venv and installs the project.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: system-packages venv node-clients test test-fast lint check protos bench detect serve clean

# make detect VIDEO=path/to/video.mp4 TEXT=running [MODELS=tiny] [OUTPUT=file.json] [ARGS="..."]
VIDEO ?=
TEXT ?=
MODELS ?= default
OUTPUT ?= out/result.json
ARGS ?=

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch/torchvision are pinned as a pair in pyproject.toml (torch==2.14.1, torchvision==0.29.1).
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[all,dev]'
	touch $(STAMP)

venv: $(STAMP)

# The Node.js client example's packages (@grpc/grpc-js, @grpc/proto-loader) and buf, which lints
# the contract: exactly the versions in clients/node/package-lock.json.
NODE_CLIENTS := clients/node/node_modules/.package-lock.json
$(NODE_CLIENTS): clients/node/package.json clients/node/package-lock.json
	npm ci --prefix clients/node --no-audit --no-fund --loglevel=error
	touch $(NODE_CLIENTS)

node-clients: $(NODE_CLIENTS)

# PostgreSQL, Mosquitto and GStreamer's RTSP server, which the tests start (Debian packages).
system-packages:
	bash scripts/system_packages.sh

# Two runs with their own per-test budgets: the unit and integration tests (300 s each, from
# pyproject.toml), then the slow end-to-end tests that run the `anyanomaly` command (1200 s each;
# the longest waits on its own subprocesses for at most 600 s).
test: $(STAMP) system-packages $(NODE_CLIENTS)
	$(PY) -m pytest -m "not slow"
	$(PY) -m pytest -m slow --timeout 1200

test-fast: $(STAMP) system-packages $(NODE_CLIENTS)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

check: lint test

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

bench: $(STAMP)
	$(PY) -m benchmarks

detect: $(STAMP)
	@test -n "$(VIDEO)" -a -n "$(TEXT)" || { echo "usage: make detect VIDEO=<video file or frame folder> TEXT=<anomaly> [MODELS=tiny] [OUTPUT=out/result.json]"; exit 2; }
	$(VENV)/bin/anyanomaly detect "$(VIDEO)" -t "$(TEXT)" --models $(MODELS) --output "$(OUTPUT)" $(ARGS)

serve: $(STAMP)
	$(VENV)/bin/anyanomaly serve --models $(MODELS) $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache clients/node/node_modules
