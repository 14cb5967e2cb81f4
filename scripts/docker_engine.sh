#!/usr/bin/env bash
# A Docker engine on demand, for the docker tests and for trying the Compose files on a
# machine that has no running engine (a CI box, a fresh VM).
#
# Usage: scripts/docker_engine.sh start|stop|status
#   start   If `docker info` already answers (a laptop's Docker Desktop, a system
#           service), use that engine and change nothing. Otherwise install Debian's
#           docker.io, docker-compose and debootstrap if they are missing, start dockerd
#           in the background with its data in $DOCKER_ENGINE_DIR, and wait until it
#           answers. Idempotent.
#   stop    Stop the dockerd that `start` started, and only that one. Idempotent.
#   status  Say which engine answers and whether this script started it; exit 1 if none.
#
# Environment:
#   DOCKER_ENGINE_DIR      data root, pid file and log (default <repo>/.docker-engine,
#                          git-ignored)
#   DOCKER_ENGINE_TIMEOUT  seconds to wait for the daemon to answer (default 60)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${DOCKER_ENGINE_DIR:-$REPO/.docker-engine}
PIDFILE=$DIR/dockerd.pid
LOG=$DIR/dockerd.log
TIMEOUT=${DOCKER_ENGINE_TIMEOUT:-60}

say() { printf 'docker_engine: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

answers() { docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }
ours() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

install_missing() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null \
    || die "no Docker engine answers and ${missing[*]} cannot be installed without apt-get; install Docker and Docker Compose by hand"
  ((EUID == 0)) || die "no Docker engine answers; installing ${missing[*]} needs root (run with sudo, or start Docker yourself)"
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get could not install ${missing[*]}"
}

cmd_start() {
  if ours && answers; then
    say "the engine this script started answers (pid $(cat "$PIDFILE"))"
    return
  fi
  if answers; then
    say "a Docker engine already answers: using it as it is"
    return
  fi
  install_missing
  ((EUID == 0)) || die "dockerd must run as root; run with sudo, or start Docker yourself"
  mkdir -p "$DIR/data"
  # No systemd here, and policy-rc.d forbids service starts: run dockerd ourselves, with
  # its data in our folder so `stop` and a `rm -rf` clean up everything it made.
  nohup dockerd --data-root "$DIR/data" --storage-driver overlay2 --pidfile "$PIDFILE" \
    >"$LOG" 2>&1 </dev/null &
  local deadline=$((SECONDS + TIMEOUT))
  until answers; do
    if ! kill -0 $! 2>/dev/null; then
      die "dockerd exited at start; the last lines of $LOG: $(tail -3 "$LOG" | tr '\n' ' ')"
    fi
    ((SECONDS < deadline)) || die "dockerd did not answer within ${TIMEOUT}s; see $LOG"
    sleep 0.2
  done
  say "started dockerd (pid $(cat "$PIDFILE"), data in $DIR/data, log $LOG)"
}

cmd_stop() {
  if ! ours; then
    rm -f "$PIDFILE"
    say "nothing to stop: no engine started by this script runs"
    return
  fi
  local pid
  pid=$(cat "$PIDFILE")
  kill -TERM "$pid"
  # dockerd stops its containers first (10 s each at most), then exits.
  local deadline=$((SECONDS + 120))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      say "dockerd did not exit within 120s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$PIDFILE"
  say "stopped dockerd (pid $pid)"
}

cmd_status() {
  if ! answers; then
    echo "docker engine: none answers"
    return 1
  fi
  local version
  version=$(docker info --format '{{.ServerVersion}} ({{.Driver}}, cgroup v{{.CgroupVersion}})' 2>/dev/null)
  if ours; then
    echo "docker engine: $version, started by this script (pid $(cat "$PIDFILE"), data in $DIR/data)"
  else
    echo "docker engine: $version, not started by this script (left alone by stop)"
  fi
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
