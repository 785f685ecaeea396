# Comfy Hybrid — `make run` starts everything, `make test` runs every test, `make test-fast` the
# ones that need no Redis, worker, browser or PostgreSQL and take under a second (under a minute in all).
# Both set up what they need first: a virtualenv from requirements.txt, the database,
# and a Redis server if none answers on REDIS_URL.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: run test test-fast bench chaos setup venv redis browser clean

run: setup redis
	@deploy/run.sh

test: venv browser
	@deploy/test.sh $(ARGS)

# Bytecode on (some shells export PYTHONDONTWRITEBYTECODE): the rewritten test modules are
# then cached, and a second run collects in half the time.
test-fast: venv
	@env -u PYTHONDONTWRITEBYTECODE deploy/test.sh -m "not slow" $(ARGS)

bench: setup
	@$(PY) -m bench $(ARGS)

chaos: setup
	@$(PY) -m bench.chaos $(ARGS)

setup: venv
	@$(PY) manage.py migrate --noinput -v 0
	@$(PY) manage.py ensure_admin

venv: $(STAMP)

$(STAMP): requirements.txt deploy/bootstrap.sh
	@deploy/bootstrap.sh
	@touch $(STAMP)

redis: venv
	@deploy/ensure-redis.sh

browser:
	@deploy/ensure-browser.sh

clean:
	rm -rf $(VENV) var
