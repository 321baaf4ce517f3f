#!/usr/bin/env bash
# What the enrollment event feed costs AssignCourse: a build without it (BASELINE, e.g. built
# from commit 35474e0, the last before the feed) against this build with the outbox only and
# with the outbox and the NATS relay, alternating, ROUNDS rounds, on SQLite and PostgreSQL.
# Needs: cargo build --release; PostgreSQL at $PG (default postgres://postgres@127.0.0.1:5432);
# NATS JetStream at nats://127.0.0.1:4222 (a stream per run is left behind: BENCH_<port>).
#
# usage: [BACKENDS="sqlite postgres"] bench/events_cost.sh BASELINE_BINARY [ROUNDS]
#   git worktree add /tmp/base 35474e0 && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target cargo build --release)
#   bench/events_cost.sh /tmp/base-target/release/student-service 2
set -u
cd "$(dirname "$0")/.."
baseline=$1
rounds=${2:-2}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
port=50150
run() { # LABEL BINARY URL [nats]
  local label=$1 binary=$2 url=$3 nats=${4:-}
  port=$((port + 1))
  local env=(DATABASE_URL="$url" LISTEN_ADDR="127.0.0.1:$port" RUST_LOG=warn)
  if [[ -n $nats ]]; then
    env+=(EVENTS_NATS_URL=nats://127.0.0.1:4222 EVENTS_NATS_STREAM="BENCH_$port" EVENTS_NATS_SUBJECT_PREFIX="bench.$port")
  fi
  env "${env[@]}" "$binary" &
  local pid=$!
  for _ in $(seq 50); do grpcurl -plaintext "127.0.0.1:$port" grpc.health.v1.Health/Check >/dev/null 2>&1 && break; sleep 0.2; done
  printf '%-28s %s\n' "$label" "$(target/release/loadgen --target "http://127.0.0.1:$port" --rpc assign-course \
    --duration 10s --students 2000 --courses-per-student 2 2>/dev/null | grep '^AssignCourse')"
  kill -TERM "$pid"; wait "$pid"
}
echo "label                        rpc                 requests     req/s  ratio  enroll/s     p50     p90     p99   p99.9      max"
for round in $(seq "$rounds"); do
  for backend in ${BACKENDS:-sqlite postgres}; do
    for variant in baseline outbox nats; do
      if [[ $backend == sqlite ]]; then
        rm -f "/tmp/events_cost_$variant.db"*; url="sqlite:/tmp/events_cost_$variant.db"
      else
        psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS events_cost_$variant WITH (FORCE)" \
          -c "CREATE DATABASE events_cost_$variant" >/dev/null; url="$PG/events_cost_$variant"
      fi
      case $variant in
        baseline) run "round $round $backend baseline" "$baseline" "$url" ;;
        outbox) run "round $round $backend outbox" target/release/student-service "$url" ;;
        nats) run "round $round $backend outbox+nats" target/release/student-service "$url" nats ;;
      esac
    done
  done
done
