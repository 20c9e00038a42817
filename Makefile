# The README's two commands. Both set up everything they need (apt packages, .venv) and can be run again.
.PHONY: demo test lint bench bootstrap

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	@scripts/demo.sh

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: lint
	.venv/bin/python -m pytest -q --durations=10

bench: bootstrap
	.venv/bin/python -m benchmarks --json benchmark-results/latest.json
