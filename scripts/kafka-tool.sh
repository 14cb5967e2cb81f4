#!/usr/bin/env bash
# Kafka's own command-line tools, run from the jars the local stack already has.
#
# Usage: scripts/kafka-tool.sh TOOL [ARGS...]
#   topics            kafka-topics.sh            (org.apache.kafka.tools.TopicCommand)
#   consumer-groups   kafka-consumer-groups.sh   (...tools.consumer.group.ConsumerGroupCommand)
#   console-consumer  kafka-console-consumer.sh  (...tools.consumer.ConsoleConsumer)
#   get-offsets       kafka-get-offsets.sh       (...tools.GetOffsetShell)
#   dump-log          kafka-dump-log.sh          (...tools.DumpLogSegments)
#   configs           kafka-configs.sh           (kafka.admin.ConfigCommand)
#
# ARGS are the tool's own, exactly as in Kafka's documentation; pass --bootstrap-server
# yourself (127.0.0.1:19092 for the local stack). `scripts/kafka-tool.sh TOOL --help`
# lists them. The jars are the ones scripts/local_stack.sh resolved into
# .stack/cache/kafka-<version>/libs (FOODPIPE_CACHE_DIR moves the cache), so run
# `scripts/local_stack.sh start` once first. Java 17+.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$REPO/scripts/kafka/pom.xml")
LIBS="${FOODPIPE_CACHE_DIR:-$REPO/.stack/cache}/kafka-$KAFKA_VERSION/libs"

usage() { sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2; }

case ${1:-} in
  topics) main=org.apache.kafka.tools.TopicCommand ;;
  consumer-groups) main=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
  console-consumer) main=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
  get-offsets) main=org.apache.kafka.tools.GetOffsetShell ;;
  dump-log) main=org.apache.kafka.tools.DumpLogSegments ;;
  configs) main=kafka.admin.ConfigCommand ;;
  *) usage ;;
esac
shift

[[ -f $LIBS/.complete ]] || { echo "kafka-tool: no Kafka $KAFKA_VERSION jars in $LIBS; run scripts/local_stack.sh start once" >&2; exit 1; }
command -v java >/dev/null || { echo "kafka-tool: Java 17+ is missing" >&2; exit 1; }

# A short-lived client JVM: small heap, the serial collector, and the C1 compiler only
# (these tools run for a second or two; C2 would not pay for itself).
exec java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
  -Dlog4j2.configurationFile="$REPO/scripts/kafka/tools-log4j2.properties" \
  -cp "$LIBS/*" "$main" "$@"
