#!/usr/bin/env bash
# Build the Toxiproxy image the network-fault suite (tests/fault/network) puts between
# the clients and Kafka/PostgreSQL, for latency and jitter: this kernel has no netem, so
# delay must come from a user-space proxy. Built from the upstream Go module (no registry
# is needed), statically, into a FROM-scratch image (docker/standins/toxiproxy).
# Idempotent: an image that is already there is kept. Prints TOXIPROXY_IMAGE=<name>.
#
# Usage: scripts/toxiproxy_image.sh
# Environment: TOXIPROXY_VERSION (default below). Needs the Go toolchain, the Go module
# proxy and a Docker engine; about a minute on 2 cores with a cold Go cache.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=${TOXIPROXY_VERSION:-v2.5.0}
IMAGE=foodpipe-standin/toxiproxy:${VERSION#v}
say() { printf 'toxiproxy_image: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "TOXIPROXY_IMAGE=$IMAGE"
  exit 0
fi
command -v go >/dev/null || die "no Go toolchain, so Toxiproxy cannot be built here; install Go, or load an image named $IMAGE"

t0=$SECONDS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$REPO/docker/standins/toxiproxy/Dockerfile" "$work/"
GOBIN="$work" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
  "github.com/Shopify/toxiproxy/v2/cmd/server@$VERSION" >"$work/build.log" 2>&1 \
  || { tail -20 "$work/build.log" >&2; die "go install of Toxiproxy $VERSION failed"; }
mv "$work/server" "$work/toxiproxy"
docker build -q -t "$IMAGE" "$work" >/dev/null 2>"$work/docker.log" \
  || { tail -5 "$work/docker.log" >&2; die "docker build of $IMAGE failed"; }
say "built $IMAGE in $((SECONDS - t0))s"
echo "TOXIPROXY_IMAGE=$IMAGE"
