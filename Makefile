# The interface people and scripts use. Process targets run one process tree in
# the foreground, configured only by the environment (PORT, DATABASE_URL, ...).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# uv on PATH, else the one `make install` put into .venv (never `python -m uv`, which
# acts on the interpreter that runs it, not on .venv).
UV := $(shell command -v uv 2>/dev/null || echo $(BIN)/uv)
PORT ?= 8000
REALTIME_PORT ?= $(if $(filter command line environment,$(origin PORT)),$(PORT),8001)

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

.PHONY: install
install: ## create .venv from the hash-pinned lock (uv bootstrapped inside .venv if not on PATH)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make install: $(PYTHON) not found; install Python 3.11+ or pass PYTHON=/path/to/python3" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null \
	  || { echo "make install: Python 3.11 or newer is required; $(PYTHON) is $$($(PYTHON) --version 2>&1). Pass PYTHON=python3.11 (or newer)." >&2; exit 1; }
	$(PYTHON) scripts/install.py --venv $(VENV)

.PHONY: lock
lock: ## re-resolve and write requirements/*.txt (hash-pinned, no URLs)
	$(UV) lock --upgrade
	$(UV) export --quiet --frozen --no-header --no-annotate --package api --no-dev --no-emit-workspace -o requirements/api.txt
	$(UV) export --quiet --frozen --no-header --no-annotate --package worker --no-dev --no-emit-workspace -o requirements/worker.txt
	$(UV) export --quiet --frozen --no-header --no-annotate --package realtime --no-dev --no-emit-workspace -o requirements/realtime.txt
	$(UV) export --quiet --frozen --no-header --no-annotate --all-packages --group dev --no-emit-workspace -o requirements/dev.txt
	$(PYTHON) scripts/lockfiles.py write

.PHONY: lint
lint: ## ruff (format + lint), mypy, import contracts, lock freshness, migration heads and drift, schemas, docs
	$(PYTHON) scripts/lockfiles.py check
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy libs/common/src libs/devservices/src libs/devharness/src libs/client/src services/api/src services/worker/src services/realtime/src services/console/serve.py tests bench
	$(BIN)/python -m devservices run -- $(MAKE) --no-print-directory _migration-check
	$(BIN)/mypy scripts
	$(MAKE) --no-print-directory validate
	$(MAKE) --no-print-directory docs-build

.PHONY: _migration-check
_migration-check:
	cd services/api && ../../$(BIN)/python -m api.migrations_check

.PHONY: format
format: ## rewrite files with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: test
# One pytest worker per core (pytest-xdist), each with its own services, database and
# Redis prefix; a test file runs whole on one worker (its module fixtures once).
# TEST_WORKERS=0 runs in this process, one test at a time.
TEST_WORKERS ?= auto
test: ## unit, integration and system tests (services: TEST_*_URL, else embedded)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

FUZZ_MAX_EXAMPLES ?= 200
.PHONY: fuzz
fuzz: ## schemathesis against the API under gunicorn: no 5xx, answers as documented (FUZZ_MAX_EXAMPLES, FUZZ_SEED)
	FUZZ_MAX_EXAMPLES=$(FUZZ_MAX_EXAMPLES) $(BIN)/pytest -m fuzz -s -p no:cacheprovider tests/system/test_fuzz.py

BENCH_PROFILE ?= quick
.PHONY: bench
bench: ## benchmarks vs baselines started in the same run, into bench/results/ (BENCH_PROFILE=quick|full; needs wrk)
	@command -v wrk >/dev/null 2>&1 || { echo "make bench: wrk is missing; install it (Debian/Ubuntu: apt-get install wrk)" >&2; exit 2; }
	$(BIN)/python -m bench --profile $(BENCH_PROFILE) $(BENCH_ARGS)

.PHONY: migrate
migrate: ## alembic upgrade head on $$DATABASE_URL (under an advisory lock)
	cd services/api && ../../$(BIN)/alembic upgrade head

.PHONY: api
api: ## the API under gunicorn + uvicorn workers on 0.0.0.0:$$PORT, as in production
	PORT=$(PORT) $(BIN)/gunicorn -c services/api/gunicorn.conf.py api.main:app

.PHONY: realtime
realtime: ## the WebSocket service under gunicorn + uvicorn workers on 0.0.0.0:$$PORT (default 8001)
	PORT=$(REALTIME_PORT) $(BIN)/gunicorn -c services/realtime/gunicorn.conf.py realtime.main:app

.PHONY: worker
worker: ## the Celery worker in the foreground, as in production (WORKER_CONCURRENCY: processes)
	$(BIN)/celery -A worker.app worker --loglevel $${LOG_LEVEL:-INFO} --without-gossip --without-mingle

.PHONY: scheduler
scheduler: ## the scheduled work (relay, lease sweep, purge) as a loop; `--once` is the cron form
	$(BIN)/python -m worker.scheduler

# make dev's ports come from the environment (or .env); these are the defaults.
DEV_URLS = --api 127.0.0.1:$${API_PORT:-8000} --realtime 127.0.0.1:$${REALTIME_PORT:-8001} \
  --console 127.0.0.1:$${CONSOLE_PORT:-8002}

.PHONY: dev
dev: ## migrations, then API and realtime (--reload), worker, scheduler and console on Postgres and Redis (embedded unless the URLs are set); Ctrl-C stops it all
	@VENV_BIN=$(BIN) $(BIN)/python -m devservices start Procfile.dev \
	  --announce '$(BIN)/python scripts/stack_ready.py --timeout 120 $(DEV_URLS) && echo "stop: Ctrl-C"'

.PHONY: clean
clean: ## stop nothing, delete .run/ (embedded databases) and caches
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache

# --- deploy: Render Blueprint, images, compose (issue 7) -----------------------
# Render's published Blueprint schema, vendored so validation needs no network
# (refresh it from https://render.com/schema/render.yaml.json now and then).
RENDER_SCHEMA ?= deploy/schemas/render-blueprint.schema.json

.PHONY: validate
validate: ## render.yaml, docker-compose.yml and the GitHub workflows against their schemas; hadolint
	$(BIN)/check-jsonschema --schemafile $(RENDER_SCHEMA) render.yaml
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(BIN)/hadolint deploy/Dockerfile deploy/console.Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

.PHONY: rehearse
rehearse: ## deploy every render.yaml service here as Render would: build, pre-deploy, start, health, SIGTERM
	REHEARSE_UV="$(UV)" $(BIN)/python -m scripts.rehearse

.PHONY: cluster
cluster: ## several hosts of every service (network namespaces) behind HAProxy, started and left running
	@command -v haproxy >/dev/null 2>&1 || { echo "make cluster: haproxy is missing; install it (Debian/Ubuntu: apt-get install haproxy)" >&2; exit 2; }
	$(BIN)/python -m scripts.cluster up

.PHONY: cluster-down
cluster-down: ## stop every process of make cluster, delete its namespaces and links, check nothing is left
	$(BIN)/python -m scripts.cluster down

# `docker compose` (v2) where it works, else `docker-compose` (v1); with neither,
# scripts/compose.sh says what is missing and _compose stops the target. Found once,
# and only when a target uses it; COMPOSE=... picks another (podman-compose, say).
COMPOSE ?= $(eval COMPOSE := $$(shell scripts/compose.sh))$(COMPOSE)
IMAGE_PREFIX ?= fastapi-microservices
IMAGE_TAG ?= dev
UP_TIMEOUT ?= 240

.PHONY: images
images: ## build the api, worker, realtime (deploy/Dockerfile) and console images (PYTHON_IMAGE: base)
	for service in api worker realtime; do \
	  docker build --force-rm -f deploy/Dockerfile --build-arg SERVICE=$$service --target $$service \
	    $${PYTHON_IMAGE:+--build-arg PYTHON_IMAGE=$$PYTHON_IMAGE} \
	    -t $(IMAGE_PREFIX)/$$service:$(IMAGE_TAG) . || exit 1; \
	done
	docker build --force-rm -f deploy/console.Dockerfile $${PYTHON_IMAGE:+--build-arg PYTHON_IMAGE=$$PYTHON_IMAGE} \
	  -t $(IMAGE_PREFIX)/console:$(IMAGE_TAG) .

# The stack's JWT_SECRET: the environment's, else one generated once into
# .run/jwt_secret (the file `make dev` uses too). Nothing committed is a secret:
# the settings refuse a committed, empty or short one in every environment.
# Made after _compose has found Docker and Compose, and read only when a compose
# recipe runs (`private`: not by _compose, which must run nothing but its check).
JWT_SECRET_FILE := .run/jwt_secret
$(JWT_SECRET_FILE):
	@mkdir -p $(@D) && umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_hex(32))" > $@
up down down-v logs ps: private export JWT_SECRET ?= $(shell cat $(JWT_SECRET_FILE) 2>/dev/null)

.PHONY: _compose
_compose:
	@test -n "$(COMPOSE)" # else scripts/compose.sh has said what is missing

.PHONY: up
up: _compose $(JWT_SECRET_FILE) ## build and start the compose stack (docker-compose.yml), wait until ready, print the URLs
	$(COMPOSE) up -d --build
	@# The published ports as compose resolved them (environment, .env or default).
	@api=$$($(COMPOSE) port api 8000); ws=$$($(COMPOSE) port realtime 8001); \
	console=$$($(COMPOSE) port console 8002); \
	if ! $(PYTHON) scripts/stack_ready.py --timeout $(UP_TIMEOUT) --api $$api --realtime $$ws \
	    --console $$console; then \
	  $(COMPOSE) ps; $(COMPOSE) logs --tail 40; exit 1; \
	fi; \
	echo "logs: make logs   status: make ps   stop: make down (make down-v also deletes the data)"

.PHONY: down
down: _compose $(JWT_SECRET_FILE) ## stop and remove the compose stack's containers and network (keeps the data volumes)
	$(COMPOSE) down --remove-orphans

.PHONY: down-v
down-v: _compose $(JWT_SECRET_FILE) ## stop the compose stack and delete its volumes (Postgres and Redis data) too
	$(COMPOSE) down --remove-orphans --volumes

.PHONY: logs
logs: _compose $(JWT_SECRET_FILE) ## follow the compose stack's logs (SERVICE=api for one)
	$(COMPOSE) logs --follow --tail 100 $(SERVICE)

.PHONY: ps
ps: _compose $(JWT_SECRET_FILE) ## the compose stack's containers and their health
	$(COMPOSE) ps

# --- docs: the site in docs/, configured by mkdocs.yml -------------------------
.PHONY: docs
docs: ## serve the documentation site at http://127.0.0.1:8003, rebuilt on every change
	$(BIN)/mkdocs serve

.PHONY: docs-build
docs-build: ## type-check the docs hooks and build the site into site/ with --strict (broken links fail)
	$(BIN)/mypy docs/hooks
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

.PHONY: docs-screenshots
docs-screenshots: ## retake docs/images/console.png and swagger-ui.png from the browser tests (needs Chromium)
	@test -x /usr/bin/chromium || { echo "make docs-screenshots: /usr/bin/chromium is missing (apt-get install chromium)" >&2; exit 2; }
	CONSOLE_SCREENSHOT=docs/images/console.png DOCS_SCREENSHOT=docs/images/swagger-ui.png \
	  $(BIN)/pytest -p no:cacheprovider tests/browser -k "TestConsoleFlow and report or TestDocsPages"
