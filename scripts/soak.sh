#!/usr/bin/env bash
# The stability run in one command: the AWS compose file for MINUTES (default 60) at the
# default rate, with a consumer crash and a scale to 2 and back on the way; writes
# bench/results/<date>-soak-1h.{md,json,png} (or -<N>m for other lengths).
#
# Usage: scripts/soak.sh [MINUTES]
# Starts a Docker engine if none answers (scripts/docker_engine.sh) and builds the images
# (scripts/docker_images.sh); the engine it started keeps running (stop it with
# scripts/docker_engine.sh stop).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
bash scripts/bootstrap.sh
exec .venv/bin/python -m tests.docker.soak --minutes "${1:-60}" --out bench/results
