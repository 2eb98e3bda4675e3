# The two commands a newcomer needs; both bootstrap .venv on first use.
.PHONY: run test lint

run:
	./scripts/dev.sh run

test:
	./scripts/dev.sh test $(ARGS)

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
