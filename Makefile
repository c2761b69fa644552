# tickhub developer loop. Two commands matter: `make up` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8080

.PHONY: up test lint ui bench bench-growth soak system-deps clean

# Runtime dependencies from the lock file (the Dockerfile installs the same file).
$(VENV)/.runtime: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

# Test and lint tools on top of the runtime set.
$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock
	$(BIN)/python -m pip install -q -r requirements-dev.lock
	touch $@

# The front-end files pinned in tickhub/ui/package-lock.json (the dashboard's chart library,
# Swagger UI for /docs), by the code the wheel's build hook runs too (tickhub/ui/assets.py).
ui: tickhub/ui/vendor/.installed
tickhub/ui/vendor/.installed: tickhub/ui/package.json tickhub/ui/package-lock.json tickhub/ui/assets.py
	$(PYTHON) -m tickhub.ui.assets

up: $(VENV)/.runtime ui
	$(BIN)/tickhub up --port $(PORT)

# What the tests need from Debian, installed when missing: chromium for the browser tests
# (Playwright drives it; it never downloads one), libatomic1, which Playwright's bundled
# Node.js driver links and a minimal Debian lacks, and locales, the glibc locale sources the
# collation tests build an en_US locale from.
SYSTEM_TEST_PACKAGES := chromium libatomic1 locales
system-deps:
	@command -v dpkg-query >/dev/null 2>&1 || exit 0; \
	missing=$$(for p in $(SYSTEM_TEST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; \
	done); \
	[ -z "$$missing" ] || { \
	  echo "installing from apt:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; }

lint: $(VENV)/.dev
	$(BIN)/ruff check tickhub tests bench
	$(BIN)/ruff format --check tickhub tests bench
	$(BIN)/lint-imports

test: $(VENV)/.dev ui system-deps
	$(BIN)/ruff check tickhub tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

bench: $(VENV)/.dev ui
	$(BIN)/python -m bench.ingest --size 500
	$(BIN)/python -m bench.ingest --size 500 --env WORKER_CONCURRENCY=1
	$(BIN)/python -m bench.ingest --size 50 --batches 200
	$(BIN)/python -m bench.ingest --mode split --consumers 1
	$(BIN)/python -m bench.ingest --mode split --consumers 2
	$(BIN)/python -m bench.flush_sql --what-if
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.fanout
	$(BIN)/python -m bench.fanout --mode split --clients 1000,2000 --rate 20 --floor-clients 0
	$(BIN)/python -m bench.fanout --mode split --conflate 250 --symbols 100 --client-symbols 1 \
		--clients 1000,5000,10000 --rate 1000 --batch 100 --seconds 10 --floor-clients 0 --p99-limit-ms 250
	$(BIN)/python -m bench.profile
	$(BIN)/python -m bench.replay --concurrency 4
	$(BIN)/python -m bench.retention
	@cat bench/results/ingest.md bench/results/flush_sql.md bench/results/latency.md bench/results/fanout.md bench/results/profile.md bench/results/replay.md bench/results/retention.md

# Ingest and every read route on an empty database, then with ROWS ticks of history filled in
# SQL (default 20 million, as issue 17 asks; ROWS=2000000 for a quick check): ~20 minutes.
bench-growth: $(VENV)/.dev ui
	$(BIN)/python -m bench.growth --rows $(or $(ROWS),20000000)

# Ten minutes of ingest and SSE clients coming and going; RSS and fds over time.
soak: $(VENV)/.dev
	$(BIN)/python -m bench.soak --minutes $(or $(MINUTES),10) --clients $(or $(CLIENTS),1000)

clean:
	rm -rf $(VENV) tickhub/ui/node_modules tickhub/ui/vendor .pytest_cache
