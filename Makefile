# Slipway. `make run` serves the embedded mode; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export SLIPWAY_DATA_DIR ?= $(CURDIR)/var

.PHONY: run test lint bench bench-webhooks faults screenshots system-deps sandbox-deps venv migrate clean worker format

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

migrate: venv
	$(BIN)/python manage.py migrate --noinput

run: venv migrate sandbox-deps
	$(BIN)/python manage.py ensure_admin
	$(BIN)/python manage.py serve

worker: venv sandbox-deps
	$(BIN)/celery -A deployer worker --loglevel=INFO

# Git LFS objects are fetched with git-lfs. Build commands run in bubblewrap with slirp4netns
# as their network (docs/security.md); a root
# worker runs them as the unprivileged account slipway-build. Without them builds are refused
# with a message naming the fix, so `make run` only warns when it cannot install them.
SANDBOX_PACKAGES_MISSING = $$(test -x /usr/bin/bwrap || echo bubblewrap; command -v slirp4netns >/dev/null || echo slirp4netns; command -v ip >/dev/null || test -x /usr/sbin/ip || echo iproute2; command -v git-lfs >/dev/null || echo git-lfs)
sandbox-deps:
	@missing="$(SANDBOX_PACKAGES_MISSING)"; missing=$$(echo $$missing); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing $$missing (the build sandbox) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "Warning: builds will be refused until the sandbox is installed: sudo apt-get install $$missing"; \
	  fi; \
	fi; \
	if [ "$$(id -u)" = 0 ] && ! id -u slipway-build >/dev/null 2>&1; then \
	  echo "Creating the unprivileged build account slipway-build"; \
	  useradd --system --no-create-home --shell /usr/sbin/nologin slipway-build; \
	fi

# OpenSSH's server and Chromium are real parts of the test bed (sshd targets, browser tests);
# bubblewrap and slirp4netns are the build sandbox's; docker-compose checks docker-compose.yml
# in `make lint` (no Docker engine needed); rsync is one of `make bench`'s baselines.
system-deps:
	@missing=""; \
	test -x /usr/sbin/sshd || missing="$$missing openssh-server"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	test -x /usr/bin/bwrap || missing="$$missing bubblewrap"; \
	command -v slirp4netns >/dev/null || missing="$$missing slirp4netns"; \
	test -x /usr/sbin/ip -o -x /sbin/ip -o -x /usr/bin/ip || missing="$$missing iproute2"; \
	command -v git-lfs >/dev/null || missing="$$missing git-lfs"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v rsync >/dev/null || missing="$$missing rsync"; \
	test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "The tests need these Debian packages:$$missing"; \
	    echo "Install them with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi; \
	if [ "$$(id -u)" = 0 ] && ! id -u slipway-build >/dev/null 2>&1; then \
	  useradd --system --no-create-home --shell /usr/sbin/nologin slipway-build; \
	fi

# The suite waits on sshd, git, browsers and workers far more than it computes: three xdist
# workers on two cores (tests/support/workers.py keeps their Redis and data apart).
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
test: venv system-deps
	SLIPWAY_DATA_DIR=$$(mktemp -d /tmp/slipway-test.XXXXXX) \
	SLIPWAY_ALLOW_LOCAL_REPOSITORIES=true \
	SLIPWAY_SECRET_KEY=$${SLIPWAY_SECRET_KEY:-test-secret-key} \
	SLIPWAY_ENCRYPTION_KEYS=$${SLIPWAY_ENCRYPTION_KEYS:-$$($(BIN)/python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')} \
	$(BIN)/python -m pytest -p tests.support.workers -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# mypy's Django plugin loads the settings: give it the embedded defaults, whatever the
# environment selects (CI exports DATABASE_URL and REDIS_URL, which would require keys).
# docker-compose.yml is checked by Debian's docker-compose (make system-deps installs it); its
# required variables get stand-ins, since `config` only reads the file (no Docker engine).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@command -v docker-compose >/dev/null || { echo "make lint needs docker-compose: make system-deps, or sudo apt-get install docker-compose"; exit 1; }
	SLIPWAY_SECRET_KEY=lint SLIPWAY_ENCRYPTION_KEYS=lint docker-compose -f docker-compose.yml config -q
	env -u DATABASE_URL -u REDIS_URL SLIPWAY_DATA_DIR=$$(mktemp -d /tmp/slipway-lint.XXXXXX) $(BIN)/mypy .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# `make bench BENCH_ARGS=--quick` for a short run; the bench makes its own data directory.
bench: venv system-deps
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Signed webhook deliveries against the scaled-out stack (bench/webhooks.py): a database of
# its own on the PostgreSQL server SLIPWAY_BENCH_POSTGRES names (default: the local one, as the
# postgres user), a redis-server of its own, `manage.py serve` and a celery worker.
# BENCH_ARGS="--count 3000 --senders 8"; SLIPWAY_WEB_WORKERS=2 for two web processes.
bench-webhooks: venv
	$(BIN)/python -m bench.webhooks $(BENCH_ARGS)

# The fault campaign (docs/reliability.md): root only (network namespaces, tmpfs, tc); not part
# of `make test`. FAULTS_ARGS="--faults 20 --seed 7" for a short one.
faults: venv system-deps
	SLIPWAY_DATA_DIR=$$(mktemp -d /tmp/slipway-faults-data.XXXXXX) \
	$(BIN)/python -m faults $(FAULTS_ARGS)

# Regenerates docs/screenshots from a real run (Chromium, sshd targets).
screenshots: venv system-deps
	SLIPWAY_SCREENSHOTS=docs/screenshots SLIPWAY_DATA_DIR=$$(mktemp -d /tmp/slipway-shots.XXXXXX) \
	SLIPWAY_ALLOW_LOCAL_REPOSITORIES=true $(BIN)/pytest -m docs tests/dashboard/e2e/test_docs_screenshots.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
