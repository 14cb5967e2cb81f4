#!/usr/bin/env bash
# Run the whole pipeline on this machine without Docker: the local stack (Kafka +
# PostgreSQL), N consumers and one producer, as plain processes.
#
# Usage: scripts/run_local.sh [--consumers N] [--rate R] [--count N] [--seed S] [-d]
#        scripts/run_local.sh stop        stop producer and consumers (the stack keeps running)
#
#   default      run until Ctrl-C, showing every service's log lines (like `docker compose up`)
#   --count N    produce N orders, wait until every one is in PostgreSQL, print
#                `foodpipe status` and `foodpipe audit`, stop the services and exit
#   -d           detach: start the services and return; logs are in .stack/logs/
#
# Settings come from the stack (.stack/local.env, written here, mode 600, without the
# owner's DATABASE_ADMIN_URL) and then from .env.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
STACK_DIR=${STACK_DIR:-$REPO/.stack}
LOGS="$STACK_DIR/logs"
RUN="$STACK_DIR/run"
ENV_FILE="$STACK_DIR/local.env"

consumers=1 rate="" count="" seed="" detach=0
say() { printf 'run_local: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

# kill -0 succeeds on a zombie, and the services are this shell's children, which stay
# zombies until waited for: look at the process state instead.
running() { [[ -r /proc/$1/stat ]] && [[ $(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) != Z ]]; }

stop_services() {
  local pidfile pid
  for pidfile in "$RUN"/*.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pidfile in "$RUN"/*.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    # The services finish their batch and leave the group within a few seconds.
    for _ in $(seq 300); do running "$pid" || break; sleep 0.1; done
    running "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

if [[ ${1:-} == stop ]]; then stop_services; say "stopped"; exit 0; fi
while (($#)); do
  case $1 in
    --consumers) consumers=${2:?}; shift 2 ;;
    --rate) rate=${2:?}; shift 2 ;;
    --count) count=${2:?}; shift 2 ;;
    --seed) seed=${2:?}; shift 2 ;;
    -d | --detach) detach=1; shift ;;
    -h | --help) usage ;;
    *) say "unknown option '$1'"; usage ;;
  esac
done
[[ $consumers =~ ^[1-9][0-9]*$ ]] || { say "--consumers needs a whole number >= 1"; exit 2; }

bash scripts/bootstrap.sh
mkdir -p "$LOGS" "$RUN"
scripts/local_stack.sh start >/dev/null
# The services' settings hold the app role's password: readable by this user only, and
# without the owner's URL (the services run as the least-privilege role).
rm -f "$ENV_FILE"
(umask 077 && scripts/local_stack.sh env >"$ENV_FILE")
# .env (if any) may add settings (its set lines only, not its comments); the stack's
# addresses win because they are what runs.
[[ -f .env ]] && grep -E '^[A-Za-z_][A-Za-z0-9_]*=' .env \
  | grep -v -E '^(KAFKA_BOOTSTRAP_SERVERS|DATABASE_URL|DATABASE_ADMIN_URL)=' >>"$ENV_FILE" || true
foodpipe() { .venv/bin/foodpipe --env-file "$ENV_FILE" "$@"; }

stop_services # a previous detached run
start() {
  local name=$1; shift
  LOG_FORMAT=${LOG_FORMAT:-json} .venv/bin/foodpipe --env-file "$ENV_FILE" "$@" >"$LOGS/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}
for ((i = 1; i <= consumers; i++)); do start "consumer-$i" consume; done
produce_args=(produce --no-progress)
[[ -n $rate ]] && produce_args+=(--rate "$rate")
[[ -n $count ]] && produce_args+=(--count "$count")
[[ -n $seed ]] && produce_args+=(--seed "$seed")
start producer "${produce_args[@]}"
say "started $consumers consumer(s) and a producer; logs in $LOGS"

if ((detach)); then
  say "follow them with: tail -F $LOGS/consumer-1.log   stop them with: scripts/run_local.sh stop"
  exit 0
fi

trap 'stop_services; exit 130' INT TERM
if [[ -z $count ]]; then
  # Foreground, like `docker compose up`: every service's lines, prefixed by its name.
  tail -n +1 -F "$LOGS"/producer.log "$LOGS"/consumer-*.log &
  tail_pid=$!
  trap 'kill $tail_pid 2>/dev/null; stop_services; exit 0' INT TERM
  wait "$tail_pid"
  exit 0
fi

producer_rc=0
wait "$(cat "$RUN/producer.pid")" || producer_rc=$?
rm -f "$RUN/producer.pid"
((producer_rc == 0)) || { say "the producer failed (exit $producer_rc); see $LOGS/producer.log"; stop_services; exit 1; }
say "producer confirmed $count orders; waiting for the consumers to write them all"
# Healthy with lag 0 = every order committed in PostgreSQL (offsets move only after the write).
foodpipe health --max-lag 0 --wait 120 >/dev/null || { say "the consumers did not catch up; see $LOGS/"; stop_services; exit 1; }
foodpipe status
audit_rc=0
foodpipe audit || audit_rc=$?
stop_services
exit "$audit_rc"
