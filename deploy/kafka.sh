#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft) on loopback for tests and benchmarks.
#   deploy/kafka.sh start|stop|status
# The broker's jars come from Maven Central through deploy/kafka/pom.xml and are
# cached outside the repo, so a second run starts without touching the network.
# Settings (environment): KAFKA_PORT (19092), KAFKA_DIR (state, logs, pid file),
# KAFKA_VERSION must match deploy/kafka/pom.xml.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
port=${KAFKA_PORT:-19092}
controller_port=$((port + 1))
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")
cache=${FLOKIT_CACHE:-$HOME/.cache/flokit}
libs="$cache/kafka-$version/libs"
dir=${KAFKA_DIR:-/tmp/flokit-kafka-$port}
pidfile="$dir/broker.pid"

fetch_jars() {
  [ -f "$libs/.complete" ] && return 0
  command -v mvn >/dev/null || { echo "kafka.sh: mvn (Maven) is required to fetch the broker jars" >&2; exit 1; }
  mkdir -p "$libs"
  echo "kafka.sh: fetching Apache Kafka $version jars into $libs" >&2
  mvn -q -f "$here/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$libs" -DincludeScope=runtime >&2
  touch "$libs/.complete"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

ready() {
  # A metadata round trip through the real client protocol, not just an open port.
  java -cp "$libs/*" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" --list >/dev/null 2>&1
}

start() {
  if running; then echo "kafka.sh: broker already running on 127.0.0.1:$port"; return 0; fi
  fetch_jars
  mkdir -p "$dir/data"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
  cat > "$dir/log4j2.properties" <<'PROPS'
rootLogger.level=WARN
rootLogger.appenderRef.stderr.ref=STDERR
appender.stderr.type=Console
appender.stderr.name=STDERR
appender.stderr.target=SYSTEM_ERR
appender.stderr.layout.type=PatternLayout
appender.stderr.layout.pattern=[%d] %p %m (%c)%n
PROPS
  local jvm=(java -Xms256m -Xmx512m -XX:+UseG1GC -cp "$libs/*" -Dlog4j2.configurationFile="$dir/log4j2.properties")
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster_id; cluster_id=$("${jvm[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null)
    "${jvm[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
      >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; exit 1; }
  fi
  nohup "${jvm[@]}" kafka.Kafka "$dir/server.properties" >"$dir/broker.log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 120); do
    if ready; then echo "kafka.sh: broker ready on 127.0.0.1:$port"; return 0; fi
    running || { echo "kafka.sh: broker exited; last log lines:" >&2; tail -n 30 "$dir/broker.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "kafka.sh: broker did not become ready in 60 s" >&2; tail -n 30 "$dir/broker.log" >&2; exit 1
}

stop() {
  running || { rm -f "$pidfile"; return 0; }
  local pid; pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "kafka.sh: broker on 127.0.0.1:$port stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) running && echo "running on 127.0.0.1:$port" || { echo "stopped"; exit 1; } ;;
  fetch) fetch_jars ;;
  *) echo "usage: $0 start|stop|status|fetch" >&2; exit 2 ;;
esac
