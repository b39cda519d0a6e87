# The two commands of the README. Each installs what it needs on first run.
STACK ?= dev
.PHONY: preview test docs

preview:
	@bash scripts/bootstrap.sh
	@.venv/bin/fleet preview --stack $(STACK)

test:
	@bash scripts/bootstrap.sh --full
	@.venv/bin/python -m pytest $(PYTEST_ARGS)

docs:
	@bash scripts/bootstrap.sh
	@.venv/bin/fleet docs --out docs/configuration.md
