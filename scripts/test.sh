#!/usr/bin/env bash
# The test command (CI runs exactly this): install what is missing, lint, type-check,
# then run every test against real Kafka and PostgreSQL with coverage (>= 80% enforced).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not fault" -x
#
# The docker suite (tests/docker) runs the Compose files in a real engine: if none
# answers, scripts/docker_engine.sh starts one (installing Debian's docker.io) and this
# script stops it again at the end. FOODPIPE_DOCKER_TESTS=0 leaves the suite out, for a
# machine that cannot run an engine; CI never sets it.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
bash scripts/bootstrap.sh
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy
rm -f .coverage .coverage.*

# The fault suite controls the broker and database processes: the session's services are
# the local stack's, even when a Docker engine answers (see tests/conftest.py).
export FOODPIPE_TEST_STACK=${FOODPIPE_TEST_STACK:-local}
export FOODPIPE_DOCKER_TESTS=${FOODPIPE_DOCKER_TESTS:-1}

cleanup_docker() {
  # Whatever a failed or interrupted docker test left: its Compose projects, then the
  # engine, if this run started it.
  local ids
  ids=$(docker ps -aq --filter label=com.docker.compose.project 2>/dev/null \
    | xargs -r docker inspect --format '{{.Id}} {{index .Config.Labels "com.docker.compose.project"}}' 2>/dev/null \
    | awk '$2 ~ /^fptest/ {print $1}') || true
  [[ -n $ids ]] && docker rm -f -v $ids >/dev/null 2>&1 || true
  docker volume ls -q --filter label=com.docker.compose.project 2>/dev/null \
    | grep '^fptest' | xargs -r docker volume rm >/dev/null 2>&1 || true
  docker network ls -q --filter label=com.docker.compose.project 2>/dev/null \
    | xargs -r docker network inspect --format '{{.Id}} {{index .Labels "com.docker.compose.project"}}' 2>/dev/null \
    | awk '$2 ~ /^fptest/ {print $1}' | xargs -r docker network rm >/dev/null 2>&1 || true
  scripts/docker_engine.sh stop
}

if [[ $FOODPIPE_DOCKER_TESTS == 1 ]]; then
  scripts/docker_engine.sh start
  trap cleanup_docker EXIT
  docker_start=$SECONDS
  # Compose v2 too, where it can be built (Go): about 2 minutes with a cold Go cache, so
  # it builds in the background while the images build and the first docker tests run.
  # Its test waits for the exit status in FOODPIPE_COMPOSE_V2_STATUS; a failed build
  # skips only that test, with the build's last line.
  export FOODPIPE_COMPOSE_V2_STATUS=$REPO/.docker-engine/compose-v2.status
  mkdir -p "$REPO/.docker-engine"
  rm -f "$FOODPIPE_COMPOSE_V2_STATUS"
  (
    status=0
    scripts/docker_compose_v2.sh >"$REPO/.docker-engine/compose-v2.log" 2>&1 || status=$?
    echo "$status" >"$FOODPIPE_COMPOSE_V2_STATUS"
  ) &
  # Toxiproxy for the network-fault suite (tests/fault/network), likewise from Go
  # (about a minute cold); the suite waits for FOODPIPE_TOXIPROXY_STATUS.
  export FOODPIPE_TOXIPROXY_STATUS=$REPO/.docker-engine/toxiproxy.status
  rm -f "$FOODPIPE_TOXIPROXY_STATUS"
  (
    status=0
    scripts/toxiproxy_image.sh >"$REPO/.docker-engine/toxiproxy.log" 2>&1 || status=$?
    echo "$status" >"$FOODPIPE_TOXIPROXY_STATUS"
  ) &
  scripts/docker_images.sh >/dev/null
  echo "test: docker engine and images ready in $((SECONDS - docker_start))s" >&2
fi

# -rap: the summary names every test with its outcome, so a log shows each docker test
# as PASSED (or why it did not run), not only as a dot.
.venv/bin/pytest --cov --cov-report=term-missing:skip-covered --durations=25 -rap "$@"
