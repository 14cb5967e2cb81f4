#!/usr/bin/env bash
# Set up foodpipe on this machine and start it, idempotently. Safe to run again.
#
# Usage: scripts/setup_local.sh [--compose | --native | --env-only] [--dry-run]
#
#   --compose   Docker Compose (default when a Docker engine answers):
#                 1. .env from .env.example, and the two database passwords generated into
#                    .secrets/ (Compose secrets); what exists is kept
#                 2. docker compose up -d --build
#                 3. scripts/healthcheck.sh --compose --wait 300
#   --native    no Docker (default otherwise): the native stack of scripts/local_stack.sh
#                 1. scripts/bootstrap.sh (Java, Maven, PostgreSQL binaries, .venv)
#                 2. .env as above
#                 3. scripts/local_stack.sh start
#                 4. scripts/healthcheck.sh --local --min-members 0 --wait 60
#   --env-only  only step 1: write .env and .secrets/
#   --dry-run   print the steps and change nothing
#
# An existing .env is never overwritten; variables that .env.example sets and .env lacks
# are appended, so upgrades keep working. Passwords that an older .env held move into
# .secrets/ (see write_secret).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
say() { printf 'setup_local: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; }

mode=""
dry_run=0
while (($#)); do
  case $1 in
    --compose) mode=compose ;;
    --native) mode=native ;;
    --env-only) mode="env" ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    *) say "unknown option '$1'"; usage; exit 2 ;;
  esac
  shift
done

if [[ -z $mode ]]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then mode=compose; else mode=native; fi
fi

COMPOSE=()
if [[ $mode == compose ]]; then
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
    say "using docker-compose (the Compose v2 plugin, \`docker compose\`, is not installed); every command in the README works with either"
  elif ((dry_run)); then
    COMPOSE=(docker compose)
  else
    say "Docker Compose is not installed: install the compose plugin, or use --native"
    exit 3
  fi
fi

step=0
# run DESCRIPTION COMMAND...: print the step; run it unless --dry-run.
run() {
  local description=$1
  shift
  step=$((step + 1))
  printf '%d. %s\n   $ %s\n' "$step" "$description" "$*"
  ((dry_run)) || "$@"
}

# A password without shell, URL or .env special characters.
new_secret() { head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | cut -c1-32; }

# .env: copy .env.example with its placeholder passwords replaced; append to an existing
# .env only the set variables it lacks.
write_env() {
  local example=.env.example target=.env name value line
  local -a missing=()
  if [[ ! -f $target ]]; then
    (
      umask 077
      while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line =~ ^([A-Z][A-Z0-9_]*_PASSWORD)=(change-me|changeme|password)$ ]]; then
          printf '%s=%s\n' "${BASH_REMATCH[1]}" "$(new_secret)"
        else
          printf '%s\n' "$line"
        fi
      done <"$example" >"$target.tmp"
      mv "$target.tmp" "$target"
    )
    say "wrote $target (mode 600)"
  else
    while IFS= read -r line; do
      [[ $line =~ ^([A-Z][A-Z0-9_]*)=(.*)$ ]] || continue
      name=${BASH_REMATCH[1]}
      grep -qE "^${name}=" "$target" || missing+=("$line")
    done <"$example"
    # A file whose last line has no newline would glue the first addition onto it.
    if ((${#missing[@]})) && [[ -n $(tail -c 1 "$target") ]]; then printf '\n' >>"$target"; fi
    for line in ${missing[@]+"${missing[@]}"}; do
      name=${line%%=*}
      value=${line#*=}
      [[ $name == *_PASSWORD ]] && value=$(new_secret)
      printf '%s=%s\n' "$name" "$value" >>"$target"
      say "added $name to $target"
    done
    ((${#missing[@]})) || say "$target is up to date (kept as it is)"
  fi
  write_secret POSTGRES_PASSWORD
  write_secret POSTGRES_ADMIN_PASSWORD
}

# write_secret NAME: the file that NAME_FILE in .env names (Compose mounts it as a secret)
# holds the password; it is written once, and kept after that. An older .env kept the
# password itself as NAME=...: that value moves into the file (the database volume was
# initialised with it) and the line leaves .env. Otherwise a new password is generated.
# The directory is private (700); the file is readable (644) because Compose without
# Swarm mounts it with the host's mode and the containers read it as non-root users.
write_secret() {
  local name=$1 file value
  file=$(sed -n "s/^${name}_FILE=//p" .env | tail -n 1)
  [[ -n $file ]] || { say "$name""_FILE is empty in .env; set it to the password's file"; exit 2; }
  if [[ -s $file ]]; then
    grep -qE "^${name}=" .env && say "$name is still set in .env; Compose uses $file (delete the line)"
    return 0
  fi
  value=$(sed -n "s/^${name}=//p" .env | tail -n 1)
  if [[ -n $value && ! $value =~ ^(change-me|changeme|password)$ ]]; then
    say "moved $name from .env to $file"
  else
    value=$(new_secret)
    say "wrote $file with a generated password"
  fi
  (umask 077 && mkdir -p "$(dirname "$file")")
  (umask 022 && printf '%s\n' "$value" >"$file.tmp" && mv "$file.tmp" "$file")
  if grep -qE "^${name}=" .env; then
    (umask 077 && grep -vE "^${name}=" .env >.env.tmp && mv .env.tmp .env)
  fi
}

case $mode in
  env)
    run "create .env from .env.example and the database passwords in .secrets/ (existing ones are kept)" write_env
    ;;
  compose)
    run "create .env from .env.example and the database passwords in .secrets/ (existing ones are kept)" write_env
    run "build the image and start Kafka, PostgreSQL, the producer and the consumer" \
      "${COMPOSE[@]}" up -d --build --remove-orphans
    run "wait until the pipeline is healthy" scripts/healthcheck.sh --compose docker-compose.yml --wait 300
    ;;
  native)
    run "install Java, Maven, the PostgreSQL binaries and the Python virtualenv (what is missing)" \
      bash scripts/bootstrap.sh
    run "create .env from .env.example and the database passwords in .secrets/ (existing ones are kept)" write_env
    run "start Kafka and PostgreSQL as local processes" scripts/local_stack.sh start
    run "check the stack (no consumer runs yet, hence --min-members 0)" \
      scripts/healthcheck.sh --local --min-members 0 --wait 60
    ;;
esac

if ((dry_run)); then
  say "dry run: nothing was changed"
else
  say "done ($mode)"
fi
