#!/usr/bin/env bash
# Is foodpipe healthy? Runs `foodpipe health` where the pipeline runs, and exits with its code.
#
# Usage: scripts/healthcheck.sh [WHERE] [OPTIONS]
#
# WHERE (default: --compose if this directory's Compose project has running containers,
# else --local if the native stack runs, else --native):
#   --compose [FILE]   the Compose stack of FILE (default docker-compose.yml): a throwaway
#                      container with the consumer's image and settings runs the checks on
#                      the Compose network (COMPOSE_PROJECT_NAME selects another project;
#                      --env-file PATH another .env than the one next to FILE)
#   --local            the native stack of scripts/local_stack.sh, with the settings it prints
#   --native           this shell's environment and .env, with the foodpipe on PATH or in .venv
#
# OPTIONS are those of `foodpipe health`:
#   --max-lag N        unhealthy above N messages of consumer-group lag (default 1000)
#   --min-members N    unhealthy below N consumers in the group (default 1; 0 if none runs)
#   --wait SECONDS     re-check until healthy or SECONDS pass (default: check once)
#   --timeout SECONDS  deadline of each request (default 10)
#   --json             one JSON document instead of the table
#
# Checks: broker reachable; orders topic with KAFKA_TOPIC_PARTITIONS partitions; DLQ topic;
# PostgreSQL reachable with the app role and the orders table readable; consumer group
# members; consumer-group lag.
# Exit: 0 healthy, 1 a check failed, 2 bad usage or configuration, 3 Kafka or PostgreSQL
# unreachable (or no way to run the check).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf 'healthcheck: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; }

# The Compose front end: `docker compose` (v2 plugin) or the older `docker-compose`.
compose_cmd() {
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
  else
    return 1
  fi
}

compose_running() {
  command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 || return 1
  compose_cmd || return 1
  [[ -n "$(cd "$REPO" && "${COMPOSE[@]}" -f "$1" ps -q 2>/dev/null)" ]]
}

local_running() {
  [[ -d $REPO/.stack ]] && "$REPO/scripts/local_stack.sh" status >/dev/null 2>&1
}

foodpipe_bin() {
  if [[ -n ${FOODPIPE:-} ]]; then
    echo "$FOODPIPE"
  elif command -v foodpipe >/dev/null 2>&1; then
    command -v foodpipe
  elif [[ -x $REPO/.venv/bin/foodpipe ]]; then
    echo "$REPO/.venv/bin/foodpipe"
  else
    return 1
  fi
}

run_native() {
  local bin
  bin=$(foodpipe_bin) || { say "no foodpipe command: run scripts/bootstrap.sh, or set FOODPIPE=/path/to/foodpipe"; exit 3; }
  exec "$bin" health "$@"
}

mode=""
file="docker-compose.yml"
env_file=""
args=()
while (($#)); do
  case $1 in
    --compose)
      mode=compose
      if [[ ${2:-} == *.yml || ${2:-} == *.yaml ]]; then file=$2; shift; fi
      ;;
    --env-file) env_file=${2:?--env-file needs a path}; shift ;;
    --local) mode=local ;;
    --native) mode=native ;;
    -h | --help) usage; exit 0 ;;
    *) args+=("$1") ;;
  esac
  shift
done

if [[ -z $mode ]]; then
  if compose_running "$REPO/$file"; then
    mode=compose
  elif local_running; then
    mode=local
  else
    mode=native
  fi
fi

case $mode in
  compose)
    [[ $file == /* ]] || file="$REPO/$file"
    [[ -f $file ]] || { say "no Compose file $file"; exit 2; }
    compose_cmd || { say "neither 'docker compose' nor 'docker-compose' is installed"; exit 3; }
    compose_args=(-f "$file")
    if [[ -n $env_file ]]; then
      [[ -f $env_file ]] || { say "no env file $env_file"; exit 2; }
      compose_args+=(--env-file "$(cd "$(dirname "$env_file")" && pwd)/$(basename "$env_file")")
    elif [[ ! -f $(dirname "$file")/.env && -z ${POSTGRES_PASSWORD_FILE:-} ]]; then
      say "no .env next to $(basename "$file"): run scripts/setup_local.sh --env-only (it writes .env and the passwords in .secrets/)"
      exit 2
    fi
    # `run --no-deps` starts a fresh container of the consumer service (its image, network
    # and settings) without touching the running ones; it works whether or not a consumer
    # is up, which is exactly when the answer matters.
    cd "$(dirname "$file")"
    exec "${COMPOSE[@]}" "${compose_args[@]}" run --rm --no-deps -T consumer health ${args[@]+"${args[@]}"}
    ;;
  local)
    # The native stack prints its settings as KEY=VALUE lines; the owner URL stays out.
    while IFS='=' read -r key value; do
      [[ $key =~ ^[A-Z_]+$ && $key != DATABASE_ADMIN_URL ]] && export "$key=$value"
    done < <("$REPO/scripts/local_stack.sh" env)
    run_native ${args[@]+"${args[@]}"}
    ;;
  native)
    run_native ${args[@]+"${args[@]}"}
    ;;
esac
