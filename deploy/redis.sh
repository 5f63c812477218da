#!/usr/bin/env bash
# Redis on loopback for tests and benchmarks (Debian's redis-server).
#   deploy/redis.sh start|stop|status
# Settings (environment): REDIS_PORT (16379), REDIS_DIR (pid file, log, append-only file).
set -euo pipefail
port=${REDIS_PORT:-16379}
dir=${REDIS_DIR:-/tmp/flokit-redis-$port}
pidfile="$dir/redis.pid"

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

start() {
  if running; then echo "redis.sh: redis already running on 127.0.0.1:$port"; return 0; fi
  if ! command -v redis-server >/dev/null; then
    echo "redis.sh: installing Debian's redis-server" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2 \
      || { echo "redis.sh: could not install redis-server" >&2; exit 1; }
  fi
  mkdir -p "$dir"
  # Append-only file, fsynced every second: a restart keeps keys, rate counts and idempotency records (README,
  # "In production"), losing at most the last second's writes if the machine itself goes down.
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --pidfile "$pidfile" \
    --dir "$dir" --logfile "$dir/redis.log" --save "" --appendonly yes --appendfsync everysec
  for _ in $(seq 1 50); do
    if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then echo "redis.sh: redis ready on 127.0.0.1:$port"; return 0; fi
    sleep 0.1
  done
  echo "redis.sh: redis did not answer PING in 5 s" >&2; tail -n 20 "$dir/redis.log" >&2; exit 1
}

stop() {
  running || { rm -f "$pidfile"; return 0; }
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$pidfile")"
  for _ in $(seq 1 50); do running || break; sleep 0.1; done
  rm -f "$pidfile"
  echo "redis.sh: redis on 127.0.0.1:$port stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) running && echo "running on 127.0.0.1:$port" || { echo "stopped"; exit 1; } ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
