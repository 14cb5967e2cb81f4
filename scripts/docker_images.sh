#!/usr/bin/env bash
# Build every image the Compose files and the docker tests need, without a registry:
#   1. a Debian bookworm base made with debootstrap and `docker import`;
#   2. local stand-ins for the official images the Compose files name (apache/kafka,
#      postgres, python, prom/prometheus), from docker/standins/: each implements the documented
#      interface of the image it replaces (see the comment at the top of its Dockerfile);
#   3. foodpipe's own image, from the project's Dockerfile, FROM the python stand-in.
# Everything is cached: the base is made once, the stand-ins are tagged with a hash of
# their inputs and rebuilt only when those change, and Docker's layer cache does the rest.
#
# Usage: scripts/docker_images.sh [--print-env]
#   Prints the variables that point the Compose files at these images, as KEY=VALUE
#   lines on stdout: KAFKA_IMAGE, POSTGRES_IMAGE, PYTHON_IMAGE, PROMETHEUS_IMAGE.
# Needs a running engine (scripts/docker_engine.sh start) and, for the base, root.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${DOCKER_ENGINE_DIR:-$REPO/.docker-engine}
BUILD=$DIR/build
STANDINS=$REPO/docker/standins
BASE_IMAGE=foodpipe-standin/debian:bookworm
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$REPO/scripts/kafka/pom.xml")
PYTHON=${PYTHON:-$REPO/.venv/bin/python}

say() { printf 'docker_images: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

docker info >/dev/null 2>&1 || die "no Docker engine answers; run scripts/docker_engine.sh start"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The Debian mirror that apt on this machine uses, read from its configuration.
debian_mirror() {
  local uri
  uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)
  [[ -n $uri ]] || uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    | awk '{print $2}' | grep -v security | head -1)
  [[ -n $uri ]] || die "no Debian mirror found in apt's sources; cannot debootstrap the base image"
  echo "$uri"
}

build_base() {
  have_image "$BASE_IMAGE" && return
  command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install -y debootstrap (or run scripts/docker_engine.sh start)"
  ((EUID == 0)) || die "debootstrap needs root to make the base image $BASE_IMAGE"
  local rootfs=$BUILD/rootfs t0=$SECONDS
  rm -rf "$rootfs"
  mkdir -p "$BUILD"
  say "debootstrapping Debian bookworm (minbase) for $BASE_IMAGE"
  debootstrap --variant=minbase bookworm "$rootfs" "$(debian_mirror)" >"$BUILD/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $BUILD/debootstrap.log"
  tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  say "made $BASE_IMAGE in $((SECONDS - t0))s"
}

# content_tag DIR...: a short hash of every file under the given folders.
content_tag() {
  find "$@" -type f -print0 | sort -z | xargs -0 sha256sum | sed "s:  $DIR/:  :; s:  $REPO/:  :" \
    | sha256sum | cut -c1-12
}

# build_standin NAME CONTEXT REPO_TAG: build CONTEXT as REPO_TAG unless an image of the
# same inputs exists; REPO_TAG is also tagged with the inputs' hash.
build_standin() {
  local name=$1 context=$2 image=$3 tag t0=$SECONDS
  tag=$(content_tag "$context")
  local hashed=${image%%:*}:in-$tag
  if have_image "$hashed"; then
    docker tag "$hashed" "$image"
    return
  fi
  say "building the $name stand-in $image"
  docker build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$image" -t "$hashed" "$context" >"$BUILD/$name.log" 2>&1 \
    || { tail -20 "$BUILD/$name.log" >&2; die "building $image failed; see $BUILD/$name.log"; }
  say "built $image in $((SECONDS - t0))s"
}

# A build context: the stand-in's own files plus what it needs from the host.
stage() {
  local name=$1 context=$BUILD/$1
  mkdir -p "$context"
  find "$context" -mindepth 1 -maxdepth 1 ! -name libs ! -name wheels -exec rm -rf {} +
  cp -a "$STANDINS/$name/." "$context/"
  echo "$context"
}

main() {
  mkdir -p "$BUILD"
  build_base

  local ctx libs
  ctx=$(stage kafka)
  libs=$("$REPO/scripts/local_stack.sh" kafka-jars)
  rm -rf "$ctx/libs"
  cp -a "$libs" "$ctx/libs"
  rm -f "$ctx/libs/.complete"
  build_standin kafka "$ctx" "foodpipe-standin/kafka:$KAFKA_VERSION"

  ctx=$(stage postgres)
  build_standin postgres "$ctx" foodpipe-standin/postgres:15-bookworm

  ctx=$(stage prometheus)
  build_standin prometheus "$ctx" foodpipe-standin/prometheus:2-bookworm

  ctx=$(stage python)
  local want have
  want=$(cat "$REPO/requirements.txt" "$REPO/pyproject.toml" | sha256sum | cut -c1-16)
  have=$(cat "$ctx/wheels/.stamp" 2>/dev/null || true)
  if [[ $want != "$have" ]]; then
    # On the host, where the package index is trusted; the build then installs offline.
    say "downloading the wheels of requirements.txt and the build backend"
    rm -rf "$ctx/wheels"
    "$PYTHON" -m pip download -q -d "$ctx/wheels" -r "$REPO/requirements.txt" \
      "setuptools>=68" >"$BUILD/wheels.log" 2>&1 \
      || die "pip download failed; see $BUILD/wheels.log"
    echo "$want" >"$ctx/wheels/.stamp"
  fi
  build_standin python "$ctx" foodpipe-standin/python:3.11-bookworm

  local t0=$SECONDS
  say "building foodpipe:local from the project's Dockerfile"
  docker build -q --build-arg PYTHON_IMAGE=foodpipe-standin/python:3.11-bookworm \
    -t foodpipe:local "$REPO" >"$BUILD/foodpipe.log" 2>&1 \
    || { tail -20 "$BUILD/foodpipe.log" >&2; die "building foodpipe:local failed; see $BUILD/foodpipe.log"; }
  say "built foodpipe:local in $((SECONDS - t0))s"

  echo "KAFKA_IMAGE=foodpipe-standin/kafka:$KAFKA_VERSION"
  echo "POSTGRES_IMAGE=foodpipe-standin/postgres:15-bookworm"
  echo "PYTHON_IMAGE=foodpipe-standin/python:3.11-bookworm"
  echo "PROMETHEUS_IMAGE=foodpipe-standin/prometheus:2-bookworm"
}

main "$@"
