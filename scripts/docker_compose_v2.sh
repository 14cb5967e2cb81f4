#!/usr/bin/env bash
# Install Docker Compose v2 (`docker compose`) as a Docker CLI plugin, built from its Go
# module, for machines whose package manager has only the legacy docker-compose 1.29
# (Debian bookworm). Idempotent: nothing happens when `docker compose version` answers.
#
# Usage: scripts/docker_compose_v2.sh
# Environment: COMPOSE_V2_VERSION (default below), DOCKER_CONFIG (plugin location,
# default ~/.docker). Needs the Go toolchain and the Go module proxy; about 2 minutes on
# 2 cores with a cold module cache.
set -euo pipefail
VERSION=${COMPOSE_V2_VERSION:-v2.40.3}
PLUGINS=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins
say() { printf 'docker_compose_v2: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

if docker compose version >/dev/null 2>&1; then
  say "already installed: $(docker compose version)"
  exit 0
fi
command -v go >/dev/null || die "no Go toolchain, so Compose v2 cannot be built here; install the docker-compose-plugin package instead"

t0=$SECONDS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# `go install ...@version` refuses this module (its go.mod has exclude directives), so
# download it and build its cmd package inside it.
src=$(go mod download -json "github.com/docker/compose/v2@$VERSION" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])') \
  || die "could not download github.com/docker/compose/v2@$VERSION from the Go module proxy"
cp -r "$src" "$work/src"
chmod -R u+w "$work/src"
(
  cd "$work/src"
  CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$VERSION" \
    -o "$work/docker-compose" ./cmd
) >"$work/build.log" 2>&1 || { tail -20 "$work/build.log" >&2; die "go build of Compose $VERSION failed"; }
mkdir -p "$PLUGINS"
install -m 0755 "$work/docker-compose" "$PLUGINS/docker-compose"
say "installed $(docker compose version) in $PLUGINS in $((SECONDS - t0))s"
