#!/usr/bin/env bash
# Runs a Kafka main class with the jars under /opt/kafka/libs, honouring the variables of
# the distribution's bin/kafka-run-class.sh that the official image documents:
# KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS, KAFKA_OPTS and KAFKA_LOG4J_OPTS.
set -euo pipefail
base=/opt/kafka
class=$1
shift
: "${KAFKA_HEAP_OPTS:=-Xmx256M}"
: "${KAFKA_JVM_PERFORMANCE_OPTS:=-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}"
if [[ -z ${KAFKA_LOG4J_OPTS-} ]]; then
  config=$base/config/tools-log4j2.yaml
  [[ -f $config ]] || config=/etc/kafka/docker/tools-log4j2.yaml
  KAFKA_LOG4J_OPTS="-Dlog4j2.configurationFile=$config"
fi
# shellcheck disable=SC2086 # the *_OPTS variables are word lists, as in the original
exec java $KAFKA_HEAP_OPTS $KAFKA_JVM_PERFORMANCE_OPTS $KAFKA_LOG4J_OPTS ${KAFKA_OPTS-} \
  -Dkafka.logs.dir="$base/logs" -cp "$base/libs/*" "$class" "$@"
