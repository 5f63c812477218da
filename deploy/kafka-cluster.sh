#!/usr/bin/env bash
# A real N-node Apache Kafka cluster (KRaft, each node controller and broker) on loopback, for the fault tests.
#   deploy/kafka-cluster.sh start|stop|status|fetch        the whole cluster
#   deploy/kafka-cluster.sh start-node|stop-node|kill N    one node (kill: SIGKILL, as a crash)
#   deploy/kafka-cluster.sh bootstrap                      prints the brokers' host:port list
# Settings (environment): KAFKA_CLUSTER_NODES (3), KAFKA_CLUSTER_PORT (19192: node i's broker listens on
# port+i-1, its controller on port+i-1+100), KAFKA_CLUSTER_DIR (/tmp/flokit-kafka-cluster: node i keeps its
# state under $KAFKA_CLUSTER_DIR-i). The jars are deploy/kafka.sh's, fetched and cached by it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
nodes=${KAFKA_CLUSTER_NODES:-3}
base_port=${KAFKA_CLUSTER_PORT:-19192}
base_dir=${KAFKA_CLUSTER_DIR:-/tmp/flokit-kafka-cluster}
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")
libs="${FLOKIT_CACHE:-$HOME/.cache/flokit}/kafka-$version/libs"

port() { echo $((base_port + $1 - 1)); }
controller_port() { echo $((base_port + $1 - 1 + 100)); }
dir() { echo "$base_dir-$1"; }
pidfile() { echo "$(dir "$1")/broker.pid"; }
running() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }
check_node() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$nodes" ] || {
  echo "kafka-cluster.sh: node must be 1..$nodes" >&2; exit 2; }; }

bootstrap() {
  local list=() i
  for i in $(seq 1 "$nodes"); do list+=("127.0.0.1:$(port "$i")"); done
  (IFS=,; echo "${list[*]}")
}

ready() {  # a metadata round trip through node $1's own listener
  java -cp "$libs/*" -Dlog4j2.configurationFile="$(dir "$1")/log4j2.properties" \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$(port "$1")" --list >/dev/null 2>&1
}

configure() {  # node $1's properties, and its storage formatted with the cluster's id on first use
  local i=$1 d; d=$(dir "$1")
  local voters=() j
  for j in $(seq 1 "$nodes"); do voters+=("$j@127.0.0.1:$(controller_port "$j")"); done
  mkdir -p "$d/data"
  cat > "$d/server.properties" <<PROPS
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$(IFS=,; echo "${voters[*]}")
listeners=PLAINTEXT://127.0.0.1:$(port "$i"),CONTROLLER://127.0.0.1:$(controller_port "$i")
advertised.listeners=PLAINTEXT://127.0.0.1:$(port "$i")
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$d/data
num.partitions=4
default.replication.factor=$((nodes < 3 ? nodes : 3))
offsets.topic.replication.factor=$((nodes < 3 ? nodes : 3))
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$((nodes < 3 ? nodes : 3))
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=$((nodes < 3 ? nodes : 3))
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# A crashed node is fenced, and leaves the in-sync replicas, within seconds rather than the default ~9 s.
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000
PROPS
  sed 's/^  //' > "$d/log4j2.properties" <<'PROPS'
  rootLogger.level=WARN
  rootLogger.appenderRef.stderr.ref=STDERR
  appender.stderr.type=Console
  appender.stderr.name=STDERR
  appender.stderr.target=SYSTEM_ERR
  appender.stderr.layout.type=PatternLayout
  appender.stderr.layout.pattern=[%d] %p %m (%c)%n
PROPS
  if [ ! -f "$d/data/meta.properties" ]; then
    local id_file="$base_dir-1/cluster.id"
    mkdir -p "$base_dir-1"
    [ -s "$id_file" ] || java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null > "$id_file"
    java -cp "$libs/*" -Dlog4j2.configurationFile="$d/log4j2.properties" kafka.tools.StorageTool format \
      -t "$(cat "$id_file")" -c "$d/server.properties" >"$d/format.log" 2>&1 || { cat "$d/format.log" >&2; exit 1; }
  fi
}

launch() {  # node $1 started in the background; returns at once
  local i=$1 d; d=$(dir "$1")
  if running "$i"; then return 0; fi
  configure "$i"
  nohup java -Xms128m -Xmx384m -XX:+UseG1GC -cp "$libs/*" -Dlog4j2.configurationFile="$d/log4j2.properties" \
    kafka.Kafka "$d/server.properties" >>"$d/broker.log" 2>&1 &
  echo $! > "$(pidfile "$i")"
}

wait_ready() {
  local i=$1
  for _ in $(seq 1 180); do
    if ready "$i"; then echo "kafka-cluster.sh: node $i ready on 127.0.0.1:$(port "$i")"; return 0; fi
    running "$i" || { echo "kafka-cluster.sh: node $i exited; last log lines:" >&2
                      tail -n 30 "$(dir "$i")/broker.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "kafka-cluster.sh: node $i not ready in 90 s" >&2; tail -n 30 "$(dir "$i")/broker.log" >&2; exit 1
}

stop_node() {
  local i=$1 pid
  running "$i" || { rm -f "$(pidfile "$i")"; return 0; }
  pid=$(cat "$(pidfile "$i")")
  kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$(pidfile "$i")"
  echo "kafka-cluster.sh: node $i stopped"
}

kill_node() {
  local i=$1 pid
  running "$i" || { echo "kafka-cluster.sh: node $i is not running" >&2; exit 1; }
  pid=$(cat "$(pidfile "$i")")
  kill -9 "$pid"
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$(pidfile "$i")"
  echo "kafka-cluster.sh: node $i killed (SIGKILL)"
}

case "${1:-}" in
  start)
    "$here/kafka.sh" fetch
    # All nodes at once: a node's controller waits for a quorum of the others.
    for i in $(seq 1 "$nodes"); do launch "$i"; done
    for i in $(seq 1 "$nodes"); do wait_ready "$i"; done ;;
  stop) for i in $(seq 1 "$nodes"); do stop_node "$i"; done ;;
  status)
    down=0
    for i in $(seq 1 "$nodes"); do
      if running "$i"; then echo "node $i: running on 127.0.0.1:$(port "$i")"; else echo "node $i: stopped"; down=1; fi
    done
    exit $down ;;
  start-node) check_node "${2:-}"; launch "$2"; wait_ready "$2" ;;
  stop-node) check_node "${2:-}"; stop_node "$2" ;;
  kill) check_node "${2:-}"; kill_node "$2" ;;
  bootstrap) bootstrap ;;
  fetch) "$here/kafka.sh" fetch ;;
  *) echo "usage: $0 start|stop|status|fetch|bootstrap, or start-node|stop-node|kill N" >&2; exit 2 ;;
esac
