#!/usr/bin/env bash
# Run foodpipe's real dependencies as local processes, without Docker:
#   - Apache Kafka 4.x in KRaft mode (1 node, or 3 for broker-failure tests), from the
#     official jars resolved from Maven Central into a git-ignored cache;
#   - PostgreSQL in a private data folder, with the schema and a least-privilege role.
#
# Usage: scripts/local_stack.sh COMMAND
#   start            start whatever is not running (idempotent); prints the settings that
#                    hold no secret (KAFKA_BOOTSTRAP_SERVERS) as KEY=VALUE
#   stop             stop everything this stack started; leaves no process behind
#   status           what runs, the topics and the orders table; exit 1 if something is down
#   env [--admin]    print the services' KEY=VALUE settings, the app role's password
#                    included; --admin adds DATABASE_ADMIN_URL (the owner: tests, bench)
#   kafka-jars       resolve the Kafka jars only (idempotent) and print their folder
#   connect-plugin   resolve the Kafka jars and the Debezium JDBC sink's plugin archive
#                    (idempotent; for the bench's peer row) and print CONNECT_LIBS=... and
#                    CONNECT_PLUGIN_PATH=...
#   kafka-kill N     SIGKILL broker N          kafka-stop N / kafka-cont N   SIGSTOP / SIGCONT
#   kafka-start N    start broker N again      kafka-term N                  SIGTERM and wait
#   pg-stop          pg_ctl stop -m immediate  pg-start                      start PostgreSQL again
#
# Environment (all optional):
#   STACK_DIR       where data and logs live (default <repo>/.stack; may be relative)
#   KAFKA_NODES     1 or 3 (default 1); 3 gives replication 3 and min.insync.replicas 2
#   KAFKA_PORT      client port of node 1 (default 19092); node N uses KAFKA_PORT+10*(N-1),
#                   its controller the port after it
#   PG_PORT         PostgreSQL port (default 15432)
#   STACK_SERVICES  "kafka pg" (default), or just one of them
#   STACK_SECURED   1: the secured stack (one broker). Kafka's client listener is SASL_SSL
#                   (SCRAM-SHA-512 user "foodpipe", created with Kafka's own ConfigCommand)
#                   and PostgreSQL accepts TLS connections only (ssl=on, hostssl rules).
#                   A CA and a server certificate for 127.0.0.1/localhost are generated
#                   into STACK_DIR/tls on first start. `env` then prints the
#                   KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_CA_LOCATION and
#                   POSTGRES_SSL* settings too. Give it its own STACK_DIR and ports.
#   DEBEZIUM_VERSION  the JDBC sink's version for connect-plugin (default: scripts/kafka/pom.xml)
#   PYTHON          the interpreter that has foodpipe installed (default <repo>/.venv/bin/python)
#
# Non-default ports keep the stack clear of a Compose stack on 9092/5432 on the same machine.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Absolute, symlinks resolved: a relative STACK_DIR (.stack/three-nodes) means the same
# folder from every command, and the PostgreSQL socket path stays short.
STACK_DIR=$(realpath -m "${STACK_DIR:-$REPO/.stack}")
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$REPO/scripts/kafka/pom.xml")
KAFKA_NODES=${KAFKA_NODES:-1}
KAFKA_PORT=${KAFKA_PORT:-19092}
PG_PORT=${PG_PORT:-15432}
STACK_SERVICES=${STACK_SERVICES:-kafka pg}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
CACHE_DIR=${FOODPIPE_CACHE_DIR:-$REPO/.stack/cache}
LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
DEBEZIUM_VERSION=${DEBEZIUM_VERSION:-$(sed -n 's:.*<debezium.version>\(.*\)</debezium.version>.*:\1:p' "$REPO/scripts/kafka/pom.xml")}
PLUGINS="$CACHE_DIR/connect-plugins-debezium-jdbc-$DEBEZIUM_VERSION"
PG_DIR=${PG_DIR:-$STACK_DIR/pg}
PG_ADMIN_USER=foodpipe_admin
PG_APP_USER=foodpipe_app
PG_DB=foodpipe
READY_TIMEOUT=${READY_TIMEOUT:-120}
STACK_SECURED=${STACK_SECURED:-0}
TLS_DIR=$STACK_DIR/tls
KAFKA_USER=foodpipe

say() { printf 'local_stack: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
has() { [[ " $STACK_SERVICES " == *" $1 "* ]]; }

node_port() { echo $((KAFKA_PORT + 10 * ($1 - 1))); }
ctrl_port() { echo $((KAFKA_PORT + 10 * ($1 - 1) + 1)); }
node_dir() { echo "$STACK_DIR/kafka/node$1"; }
# Secured stack: the broker's mutual-TLS listener, for itself and Kafka's admin tools.
internal_port() { echo $((KAFKA_PORT + 10 * ($1 - 1) + 2)); }
secured() { [[ $STACK_SECURED == 1 ]]; }

bootstrap_servers() {
  local out="" n
  for ((n = 1; n <= KAFKA_NODES; n++)); do out+="${out:+,}127.0.0.1:$(node_port "$n")"; done
  echo "$out"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
need_free_port() {
  port_busy "$1" && die "port $1 is already in use by another process; stop it or choose another with $2=..."
  return 0
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Wait until "$@" succeeds, polling, or fail after $READY_TIMEOUT seconds.
poll_until() {
  local what=$1; shift
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$what not ready after ${READY_TIMEOUT}s"
    sleep 0.2
  done
}

# ---------------------------------------------------------------- prerequisites
need_java() {
  command -v java >/dev/null || die "Java 17+ is missing. Install it: apt-get install -y openjdk-17-jre-headless"
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/ *java.specification.version = //p')
  ((${major%%.*} >= 17)) || die "Java $major found; Kafka $KAFKA_VERSION needs 17+. Install openjdk-17-jre-headless"
}

need_python() {
  [[ -x $PYTHON ]] && "$PYTHON" -c 'import foodpipe, confluent_kafka' 2>/dev/null \
    || die "no Python with foodpipe at $PYTHON. Run scripts/bootstrap.sh first (or set PYTHON=...)"
}

pg_bindir() {
  local d
  if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then
    pg_config --bindir; return
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [[ -x $d/initdb ]] && { echo "$d"; return; }
  done
  return 1
}

# PostgreSQL refuses to run as root, so as root the server runs as an unprivileged user.
# If that user cannot reach the repository (a checkout under /root, say), the data
# folder moves to /var/tmp, under a name derived from STACK_DIR.
PG_RUN=()
pg_setup_user() {
  if ((EUID == 0)); then
    local user=postgres
    id -u "$user" >/dev/null 2>&1 || { user=foodpipe-pg; id -u "$user" >/dev/null 2>&1 || useradd --system --no-create-home "$user"; }
    PG_RUN=(runuser -u "$user" --)
    PG_OWNER=$user
    mkdir -p "$STACK_DIR"
    if ! runuser -u "$user" -- test -x "$STACK_DIR"; then
      PG_DIR=/var/tmp/foodpipe-pg-$(printf '%s' "$STACK_DIR" | cksum | cut -d' ' -f1)
      mkdir -p "$PG_DIR"
    fi
  else
    PG_OWNER=$(id -un)
  fi
}

# ---------------------------------------------------------------- TLS (secured stack)
# A CA and a server certificate for 127.0.0.1 and localhost, made once per stack. Every
# private key and password file is mode 600; passwords reach openssl as file: arguments.
make_tls() {
  # Valid for 30 days; made again when less than a day is left (the stack stopped).
  if [[ -f $TLS_DIR/.complete ]]; then
    openssl x509 -checkend 86400 -noout -in "$TLS_DIR/server.pem" >/dev/null && return
    if pid_alive "$(node_dir 1)/pid"; then
      die "the secured stack's certificates expire within a day; run $0 stop, then start"
    fi
  fi
  command -v openssl >/dev/null || die "openssl is missing (the secured stack makes its certificates with it). Install it: apt-get install -y openssl"
  say "generating a CA and a server certificate in $TLS_DIR"
  rm -rf "$TLS_DIR"
  (
    umask 077
    mkdir -p "$TLS_DIR"
    cd "$TLS_DIR"
    python3 -c 'import secrets; print(secrets.token_urlsafe(18))' >keystore.pass
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=foodpipe local CA" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
      -extfile server.ext -out server.pem 2>/dev/null
    openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem -name broker \
      -passout file:keystore.pass -out server.p12
    rm -f server.csr server.ext ca.srl
  ) || die "generating the certificates failed"
  # The CA certificate is public: clients read it.
  chmod 755 "$TLS_DIR"
  chmod 644 "$TLS_DIR/ca.pem"
  touch "$TLS_DIR/.complete"
}

# ---------------------------------------------------------------- Kafka
fetch_kafka() {
  [[ -f $LIBS/.complete ]] && return
  command -v mvn >/dev/null || die "Maven is missing (it fetches the Kafka jars). Install it: apt-get install -y maven"
  say "resolving Apache Kafka $KAFKA_VERSION jars into $LIBS (first start only)"
  rm -rf "$LIBS"; mkdir -p "$LIBS"
  # -C (strict checksums): a jar whose checksum does not match is an error, not a warning.
  mvn -q -B -C -Dstyle.color=never -f "$REPO/scripts/kafka/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIBS" >&2 \
    || die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION; check network access to Maven Central"
  touch "$LIBS/.complete"
}

# The Debezium JDBC sink for Kafka Connect (the bench's peer row). Its own dependency
# graph does not fully resolve from Maven, but its plugin archive (classifier plugin,
# tar.gz) bundles everything it needs; Connect's runtime is among the Kafka jars above.
fetch_connect_plugin() {
  fetch_kafka
  [[ -f $PLUGINS/.complete ]] && return
  local artifact="io.debezium:debezium-connector-jdbc:$DEBEZIUM_VERSION:tar.gz:plugin"
  say "resolving $artifact into $PLUGINS (first use only)"
  rm -rf "$PLUGINS"; mkdir -p "$PLUGINS/download"
  mvn -q -B -C -Dstyle.color=never -f "$REPO/scripts/kafka/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
    -Dartifact="$artifact" -DoutputDirectory="$PLUGINS/download" >&2 \
    || die "Maven could not resolve $artifact; check network access to Maven Central"
  tar -xzf "$PLUGINS"/download/*.tar.gz -C "$PLUGINS" || die "unpacking $artifact failed"
  rm -rf "$PLUGINS/download"
  touch "$PLUGINS/.complete"
}

write_kafka_config() {
  local n=$1 dir voters="" i
  dir=$(node_dir "$n")
  mkdir -p "$dir/data" "$dir/logs"
  for ((i = 1; i <= KAFKA_NODES; i++)); do voters+="${voters:+,}$i@127.0.0.1:$(ctrl_port "$i")"; done
  local rf=1 isr=1
  ((KAFKA_NODES >= 3)) && { rf=3; isr=2; }
  local listeners
  if secured; then
    # Clients: SASL_SSL (TLS and a SCRAM login). The broker itself and Kafka's admin
    # tools: mutual TLS on INTERNAL (only holders of a certificate of this CA get in).
    # The controller listener answers controller requests only, over mutual TLS as well:
    # a local process without the CA's certificate cannot speak to the quorum either.
    listeners="listeners=SASL_SSL://127.0.0.1:$(node_port "$n"),INTERNAL://127.0.0.1:$(internal_port "$n"),CONTROLLER://127.0.0.1:$(ctrl_port "$n")
advertised.listeners=SASL_SSL://127.0.0.1:$(node_port "$n"),INTERNAL://127.0.0.1:$(internal_port "$n")
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL,INTERNAL:SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.internal.ssl.client.auth=required
listener.name.controller.ssl.client.auth=required
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/server.p12
ssl.keystore.password=$(cat "$TLS_DIR/keystore.pass")
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem"
  else
    listeners="listeners=PLAINTEXT://127.0.0.1:$(node_port "$n"),CONTROLLER://127.0.0.1:$(ctrl_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(node_port "$n")
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  fi
  # It may hold the keystore password: this user only.
  (umask 077 && : >"$dir/server.properties")
  cat >"$dir/server.properties" <<EOF
# Generated by scripts/local_stack.sh: KRaft combined mode (broker + controller).
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
$listeners
log.dirs=$dir/data
num.partitions=3
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
share.coordinator.state.topic.num.partitions=1
# A test broker: no 3 s wait for more members before the first rebalance.
group.initial.rebalance.delay.ms=0
# The consumer group protocol (KIP-848, on by default since Kafka 4.0) takes a group's
# session timeout and heartbeat from the broker; foodpipe sets them per group from
# KAFKA_SESSION_TIMEOUT_MS, and these minimums (defaults 45 s and 5 s) let it use the
# same 6-10 s it uses with the classic protocol.
group.consumer.min.session.timeout.ms=6000
group.consumer.min.heartbeat.interval.ms=1000
# The cleaner's dedupe buffer sits on the heap; its 128 MiB default is wasted here.
log.cleaner.dedupe.buffer.size=2097152
# The cleaner looks for compactable logs every second instead of every 15 s, so that
# the compaction experiment (docs/KeyPoints/compaction.md) sees it work at once.
log.cleaner.backoff.ms=1000
num.network.threads=2
num.io.threads=2
background.threads=2
# Fence a killed broker within ~3 s instead of 9 s (broker-failure tests).
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=3000
EOF
}

format_kafka() {
  local n=$1 dir
  dir=$(node_dir "$n")
  [[ -f $dir/data/meta.properties ]] && return
  local id_file="$STACK_DIR/kafka/cluster.id"
  # Like Kafka's own Uuid.randomUuid(): URL-safe base64 of 16 random bytes, never
  # starting with '-', which a command line would read as an option.
  [[ -s $id_file ]] || python3 -c '
import base64, os
while (cid := base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()).startswith("-"):
    pass
print(cid)' >"$id_file"
  java -cp "$LIBS/*" -Dlog4j2.configurationFile="$REPO/scripts/kafka/log4j2.properties" -Dkafka.logs.dir="$dir/logs" \
    kafka.tools.StorageTool format --cluster-id="$(cat "$id_file")" -c "$dir/server.properties" >"$dir/logs/format.log" 2>&1 \
    || die "formatting Kafka storage of node $n failed; see $dir/logs/format.log"
}

start_kafka_node() {
  local n=$1 dir
  dir=$(node_dir "$n")
  pid_alive "$dir/pid" && return
  need_free_port "$(node_port "$n")" KAFKA_PORT
  need_free_port "$(ctrl_port "$n")" KAFKA_PORT
  if secured; then need_free_port "$(internal_port "$n")" KAFKA_PORT; fi
  write_kafka_config "$n"
  format_kafka "$n"
  # Small-broker JVM: the serial collector and a capped heap keep the idle RSS low;
  # ExitOnOutOfMemoryError makes an OOM a visible crash instead of a zombie broker.
  nohup java -Xms128m -Xmx${KAFKA_HEAP_MB:-512}m -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$REPO/scripts/kafka/log4j2.properties" -Dkafka.logs.dir="$dir/logs" \
    -Dfoodpipe.stack="$STACK_DIR" \
    -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" >"$dir/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
}

kafka_ready() {
  # Through the client listener, with the settings `env` prints: in the secured stack
  # this proves the SCRAM login and the certificate chain before anyone relies on them.
  with_stack_env env KAFKA_REPLICATION_FACTOR="$([[ $KAFKA_NODES -ge 3 ]] && echo 3 || echo 1)" \
    LOG_FORMAT=json "$PYTHON" -m foodpipe --env-file /dev/null topics --wait "$READY_TIMEOUT" --min-brokers "$KAFKA_NODES" >"$STACK_DIR/kafka/topics.log" 2>&1
}

# Run "$@" with this stack's settings exported (never on a command line: passwords).
with_stack_env() {
  (
    local line
    while IFS= read -r line; do export "${line?}"; done < <(print_env)
    "$@"
  )
}

# Secured stack: the services' SCRAM user, created (or its password set again) with
# Kafka's own ConfigCommand over the mutual-TLS listener. The client settings and the
# password reach it in mode-600 files, never on its command line.
kafka_scram_user() {
  local dir rc=0
  dir=$(node_dir 1)
  (
    umask 077
    printf '%s\n' "security.protocol=SSL" "ssl.truststore.type=PEM" \
      "ssl.truststore.location=$TLS_DIR/ca.pem" "ssl.keystore.type=PKCS12" \
      "ssl.keystore.location=$TLS_DIR/server.p12" \
      "ssl.keystore.password=$(cat "$TLS_DIR/keystore.pass")" >"$dir/admin-client.properties"
    # In a file the value is the credential's own key=value list, without the brackets.
    printf 'SCRAM-SHA-512=password=%s\n' "$KAFKA_APP_PASSWORD" >"$dir/scram-user.properties"
  )
  java -cp "$LIBS/*" -Dlog4j2.configurationFile="$REPO/scripts/kafka/log4j2.properties" -Dkafka.logs.dir="$dir/logs" \
    kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$(internal_port 1)" \
    --command-config "$dir/admin-client.properties" --alter --entity-type users --entity-name "$KAFKA_USER" \
    --add-config-file "$dir/scram-user.properties" >"$dir/logs/scram-user.log" 2>&1 || rc=$?
  rm -f "$dir/scram-user.properties"
  return $rc
}

start_kafka() {
  need_java
  need_python
  fetch_kafka
  if secured; then
    ((KAFKA_NODES == 1)) || die "the secured stack has one broker; unset KAFKA_NODES"
    make_tls
    stack_secrets
  fi
  local n
  for ((n = 1; n <= KAFKA_NODES; n++)); do start_kafka_node "$n"; done
  if secured; then
    poll_until "the SCRAM user (see $(node_dir 1)/logs/scram-user.log)" kafka_scram_user
  fi
  # Readiness = a metadata call answers and the topics exist (the command polls with a deadline).
  kafka_ready || die "Kafka did not become ready; see $(node_dir 1)/logs/server.log and $STACK_DIR/kafka/topics.log"
}

signal_node() {
  local sig=$1 n=$2 dir
  dir=$(node_dir "$n")
  pid_alive "$dir/pid" || die "broker $n is not running"
  kill "-$sig" "$(cat "$dir/pid")"
}

wait_gone() {
  local pid=$1 deadline=$((SECONDS + ${2:-30}))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then kill -KILL "$pid" 2>/dev/null || true; fi
    sleep 0.1
  done
}

stop_kafka_node() {
  local n=$1 dir pid
  dir=$(node_dir "$n")
  [[ -f $dir/pid ]] || return 0
  pid=$(cat "$dir/pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 30
  fi
  rm -f "$dir/pid"
}

# ---------------------------------------------------------------- PostgreSQL
PG_BIN=""
pg_prepare() {
  PG_BIN=$(pg_bindir) || die "PostgreSQL server binaries not found. Install them: apt-get install -y postgresql"
  pg_setup_user
}

pg_password_file() { echo "$STACK_DIR/secrets.env"; }

# The stack's generated passwords (mode 600), each made the first time it is needed.
stack_secrets() {
  local f name names=(ADMIN_PASSWORD APP_PASSWORD)
  if secured; then names+=(KAFKA_APP_PASSWORD); fi
  f=$(pg_password_file)
  mkdir -p "$(dirname "$f")"
  for name in "${names[@]}"; do
    grep -q "^$name=" "$f" 2>/dev/null && continue
    (umask 077 && printf '%s=%s\n' "$name" "$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')" >>"$f")
  done
  # shellcheck disable=SC1090
  source "$f"
}
pg_secrets() { stack_secrets; }

pg_running() { "${PG_RUN[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; }

# Secured stack: the server certificate in the data folder (PostgreSQL wants its key
# owned by itself, mode 600), and client rules that accept TLS connections only.
pg_secure() {
  make_tls
  install -m 600 -o "$PG_OWNER" "$TLS_DIR/server.pem" "$PG_DIR/data/server.crt"
  install -m 600 -o "$PG_OWNER" "$TLS_DIR/server.key" "$PG_DIR/data/server.key"
  cat >"$PG_DIR/data/pg_hba.conf" <<EOF
# Generated by scripts/local_stack.sh (secured stack): TCP connections must use TLS.
local   all all                scram-sha-256
hostssl all all 127.0.0.1/32   scram-sha-256
hostssl all all ::1/128        scram-sha-256
EOF
  chown "$PG_OWNER" "$PG_DIR/data/pg_hba.conf"
}

pg_start_server() {
  pg_running && return
  need_free_port "$PG_PORT" PG_PORT
  local tls_options=""
  if secured; then
    pg_secure
    tls_options=" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"
  fi
  "${PG_RUN[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t "$READY_TIMEOUT" \
    -o "-p $PG_PORT -k $PG_DIR/run -c listen_addresses=127.0.0.1$tls_options" start >/dev/null \
    || die "PostgreSQL did not start; see $PG_DIR/server.log"
  poll_until "PostgreSQL" "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT"
}

psql_admin() {
  local tls=()
  if secured; then tls=(PGSSLMODE=verify-full PGSSLROOTCERT="$TLS_DIR/ca.pem"); fi
  env ${tls[@]+"${tls[@]}"} PGOPTIONS="-c client_min_messages=warning" PGPASSWORD="$ADMIN_PASSWORD" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_ADMIN_USER" "$@"
}

start_pg() {
  pg_prepare
  pg_secrets
  mkdir -p "$PG_DIR/run"
  if [[ ! -f $PG_DIR/data/PG_VERSION ]]; then
    say "initialising PostgreSQL in $PG_DIR/data"
    mkdir -p "$PG_DIR/data"
    local pwfile="$PG_DIR/.pw"
    (umask 077; echo "$ADMIN_PASSWORD" >"$pwfile")
    chown -R "$PG_OWNER" "$PG_DIR" 2>/dev/null || true
    "${PG_RUN[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U "$PG_ADMIN_USER" --pwfile="$pwfile" \
      --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1 \
      || { rm -f "$pwfile"; die "initdb failed; see $PG_DIR/initdb.log"; }
    rm -f "$pwfile"
  fi
  chown -R "$PG_OWNER" "$PG_DIR" 2>/dev/null || true
  pg_start_server
  if ! psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$PG_DB'" | grep -q 1; then
    psql_admin -d postgres -c "CREATE DATABASE $PG_DB"
  fi
  psql_admin -d "$PG_DB" -f "$REPO/src/database/init.sql"
  # The app password goes in on stdin (a \set line before the script), never on psql's
  # command line, where ps would show it. Generated passwords are URL-safe base64; the
  # quote doubling keeps any other value literal all the same.
  { printf "\\set app_password '%s'\n" "${APP_PASSWORD//\'/\'\'}"; cat "$REPO/src/database/app_role.sql"; } \
    | psql_admin -d "$PG_DB" -v app_user="$PG_APP_USER" -f - >/dev/null
}

stop_pg() {
  pg_prepare
  [[ -f $PG_DIR/data/PG_VERSION ]] || return 0
  pg_running || return 0
  "${PG_RUN[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m "${1:-fast}" -w -t 60 stop >/dev/null
}

# ---------------------------------------------------------------- commands
# The services' settings. The owner URL only with --admin: whatever is written from this
# (a .env, .stack/local.env) reaches the producer and the consumer.
print_env() {
  local admin=0
  case ${1:-} in
    --admin) admin=1 ;;
    "") ;;
    *) die "env takes --admin or nothing, not '$1'" ;;
  esac
  echo "KAFKA_BOOTSTRAP_SERVERS=$(bootstrap_servers)"
  [[ -f $(pg_password_file) ]] || return 0
  # shellcheck disable=SC1090
  source "$(pg_password_file)"
  if secured && has kafka; then
    echo "KAFKA_SECURITY_PROTOCOL=SASL_SSL"
    echo "KAFKA_SASL_MECHANISM=SCRAM-SHA-512"
    echo "KAFKA_SASL_USERNAME=$KAFKA_USER"
    echo "KAFKA_SASL_PASSWORD=${KAFKA_APP_PASSWORD:-}"
    echo "KAFKA_SSL_CA_LOCATION=$TLS_DIR/ca.pem"
  fi
  if has pg; then
    echo "DATABASE_URL=postgresql+psycopg2://$PG_APP_USER:$APP_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
    local query=""
    if secured; then
      echo "POSTGRES_SSLMODE=verify-full"
      echo "POSTGRES_SSLROOTCERT=$TLS_DIR/ca.pem"
      # The owner URL is used as it is (tests, bench): the TLS parameters go inside it.
      query="?sslmode=verify-full&sslrootcert=$TLS_DIR/ca.pem"
    fi
    ((admin)) && echo "DATABASE_ADMIN_URL=postgresql+psycopg2://$PG_ADMIN_USER:$ADMIN_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB$query"
  fi
  return 0
}

cmd_start() {
  local t0=$SECONDS
  mkdir -p "$STACK_DIR"
  has pg && start_pg
  has kafka && start_kafka
  say "ready in $((SECONDS - t0))s (Kafka $KAFKA_VERSION, $KAFKA_NODES node(s); data in $STACK_DIR)"
  # Nothing secret on stdout: start's output ends up in terminals and CI logs.
  echo "KAFKA_BOOTSTRAP_SERVERS=$(bootstrap_servers)"
  has pg && say "the database URLs, passwords included: $0 env (app role), $0 env --admin (owner)"
  return 0
}

cmd_stop() {
  local n
  if has kafka; then
    for n in "$STACK_DIR"/kafka/node*; do [[ -d $n ]] && stop_kafka_node "${n##*node}"; done
    # Nothing left behind, even a broker whose pid file was lost.
    pkill -KILL -f -- "-Dfoodpipe.stack=$STACK_DIR " 2>/dev/null || true
  fi
  has pg && stop_pg fast
  say "stopped"
}

cmd_status() {
  local ok=0 n dir
  if has kafka; then
    for dir in "$STACK_DIR"/kafka/node*; do
      [[ -d $dir ]] || continue
      n=${dir##*node}
      if pid_alive "$dir/pid"; then
        echo "kafka node $n: running (pid $(cat "$dir/pid"), 127.0.0.1:$(node_port "$n"))"
      else
        echo "kafka node $n: stopped"; ok=1
      fi
    done
    [[ -d $STACK_DIR/kafka/node1 ]] || { echo "kafka: not started"; ok=1; }
    if [[ -x $PYTHON ]] && pid_alive "$(node_dir 1)/pid"; then
      with_stack_env "$PYTHON" - <<'EOF' || ok=1
import sys
from confluent_kafka.admin import AdminClient
from foodpipe.kafka import admin_config
from foodpipe.settings import load_settings
admin = AdminClient(admin_config(load_settings(_env_file=None)))
try:
    md = admin.list_topics(timeout=10)
except Exception as exc:  # noqa: BLE001 - a status line, not a crash
    print(f"kafka: metadata request failed: {exc}"); sys.exit(1)
print(f"kafka: {len(md.brokers)} broker(s) answering")
for name in ("food-orders", "food-orders.dlq"):
    topic = md.topics.get(name)
    print(f"topic {name}: " + (f"{len(topic.partitions)} partitions" if topic else "missing"))
    if topic is None: sys.exit(1)
EOF
    fi
  fi
  if has pg; then
    pg_prepare
    if [[ -f $PG_DIR/data/PG_VERSION ]]; then
      if pg_running; then
        pg_secrets
        echo "postgresql: running (127.0.0.1:$PG_PORT, data in $PG_DIR/data)"
        if psql_admin -d "$PG_DB" -tAc "SELECT 'table orders: ' || count(*) || ' rows' FROM orders" 2>/dev/null; then :; else
          echo "table orders: missing"; ok=1
        fi
      else
        echo "postgresql: stopped"; ok=1
      fi
    else
      echo "postgresql: not initialised"; ok=1
    fi
  fi
  return $ok
}

main() {
  local cmd=${1:-}
  shift || true
  case $cmd in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) print_env "$@" ;;
    kafka-jars) fetch_kafka; echo "$LIBS" ;;
    connect-plugin)
      fetch_connect_plugin
      echo "CONNECT_LIBS=$LIBS"
      echo "CONNECT_PLUGIN_PATH=$PLUGINS"
      ;;
    kafka-kill)
      # Wait until it is gone: a JVM takes a moment to die, and a kafka-start right
      # after would otherwise find the old pid alive and start nothing.
      signal_node KILL "${1:?node number}"
      wait_gone "$(cat "$(node_dir "$1")/pid")" 30
      ;;
    kafka-stop) signal_node STOP "${1:?node number}" ;;
    kafka-cont) signal_node CONT "${1:?node number}" ;;
    kafka-term) stop_kafka_node "${1:?node number}" ;;
    kafka-start)
      need_java; start_kafka_node "${1:?node number}"
      ;;
    pg-stop) stop_pg immediate ;;
    pg-start) pg_prepare; pg_secrets; pg_start_server ;;
    *)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
      [[ -z $cmd ]] && exit 2
      die "unknown command '$cmd'"
      ;;
  esac
}

main "$@"
