#!/usr/bin/env bash
# The test command (CI runs exactly this): install what is missing, lint, type-check,
# then run every test against real Kafka and PostgreSQL with coverage (>= 80% enforced).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not fault" -x
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
bash scripts/bootstrap.sh
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy
rm -f .coverage .coverage.*
exec .venv/bin/pytest --cov --cov-report=term-missing:skip-covered "$@"
