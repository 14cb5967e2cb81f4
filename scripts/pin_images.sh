#!/usr/bin/env bash
# Pin the third-party images to the digests their registries serve now, in .env.
#
# Usage: scripts/pin_images.sh [VARIABLE ...]
#   VARIABLE: KAFKA_IMAGE, POSTGRES_IMAGE, PYTHON_IMAGE, PROMETHEUS_IMAGE or GRAFANA_IMAGE;
#   all five when none is given.
#
# The Compose files name each image by a tag (postgres:16-alpine). A tag moves whenever
# the image is rebuilt, so two `up`s a month apart can run different bytes, and so can two
# hosts. For each variable this pulls the image that its value names (.env's value, else
# the Compose file's default), reads the digest the registry served (that of the
# manifest list, valid on every CPU architecture) and writes
#   VARIABLE=name:tag@sha256:<digest>
# into .env. Compose and the Dockerfile's FROM then fetch exactly that image; the tag is
# kept for people to read. Run it again to move to what the tag names now (after a
# security fix, say). Needs a Docker engine that reaches the registries.
#
# The repository's own files keep tags: a digest can only be resolved and checked against
# the registry, which the machines this project is tested on cannot reach.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
say() { printf 'pin_images: %s\n' "$*" >&2; }
die() { say "$1"; exit "${2:-1}"; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; }
case ${1:-} in -h | --help) usage; exit 0 ;; esac

ALL=(KAFKA_IMAGE POSTGRES_IMAGE PYTHON_IMAGE PROMETHEUS_IMAGE GRAFANA_IMAGE)
if (($#)); then vars=("$@"); else vars=("${ALL[@]}"); fi
for var in "${vars[@]}"; do
  [[ " ${ALL[*]} " == *" $var "* ]] || die "unknown image variable '$var'; use one of: ${ALL[*]}" 2
done
[[ -f .env ]] || die "no .env here; run scripts/setup_local.sh --env-only first" 2
command -v docker >/dev/null || die "docker is not installed" 3

# The Compose file's default for VAR: ${VAR:-default}.
default_of() {
  grep -ho "\${$1:-[^}]*}" docker-compose.yml | head -n 1 | sed "s/^\${$1:-//; s/}\$//"
}

# set_var NAME VALUE: replace NAME's line in .env, or append it; .env keeps its mode.
set_var() {
  local name=$1 value=$2 tmp
  tmp=$(mktemp)
  if grep -qE "^$name=" .env; then
    awk -v n="$name" -v v="$value" 'index($0, n "=") == 1 { print n "=" v; next } { print }' .env >"$tmp"
  else
    cat .env >"$tmp"
    [[ -z $(tail -c 1 .env) ]] || printf '\n' >>"$tmp"
    printf '%s=%s\n' "$name" "$value" >>"$tmp"
  fi
  cat "$tmp" >.env
  rm -f "$tmp"
}

errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
for var in "${vars[@]}"; do
  current=$(sed -n "s/^$var=//p" .env | tail -n 1)
  [[ -n $current ]] || current=$(default_of "$var")
  [[ -n $current ]] || die "$var: no value in .env and no default in docker-compose.yml"
  ref=${current%%@*} # name:tag, without the digest an earlier run added
  [[ ${ref##*/} == *:* ]] || ref="$ref:latest"
  # The name as RepoDigests spells it: without the tag and Docker Hub's default prefixes.
  repository=${ref%:*}
  repository=${repository#docker.io/}
  repository=${repository#library/}
  docker pull -q "$ref" >/dev/null 2>"$errors" \
    || die "$var: cannot pull $ref ($(tail -n 1 "$errors")); check the name and the registry" 3
  digest=$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$ref" \
    | awk -F@ -v r="$repository" '$1 == r || $1 == "docker.io/" r || $1 == "docker.io/library/" r { print $2; exit }')
  [[ $digest == sha256:* ]] || die "$var: the registry gave $ref no digest" 3
  pinned="$ref@$digest"
  if [[ $current == "$pinned" ]]; then
    say "$var=$pinned (unchanged)"
  else
    set_var "$var" "$pinned"
    say "$var=$pinned (was $current)"
  fi
done
