# Developer entry points. `make check` is the fast gate (also the first step of .ci/run);
# `make test` is the whole suite as CI runs it (root, Docker, systemd nodes, molecule).
.PHONY: check lint fix test manpages

check:
	bash scripts/check.sh

lint:
	bash scripts/check.sh --no-tests

fix:
	.venv/bin/ruff check --fix hakuriver tests bench
	.venv/bin/ruff format hakuriver tests bench

test:
	bash scripts/test.sh

manpages:
	.venv/bin/python -m hakuriver.deploy.manpages
