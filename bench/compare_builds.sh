#!/usr/bin/env bash
# Two builds of the server side by side: ListCourses and AssignCourse through loadgen (defaults:
# 16 calls in flight over 4 connections, 10 s after 1 s of warm-up), on a fresh database per run,
# old and new alternating, ROUNDS rounds, on SQLite and PostgreSQL. For a restructuring that must
# not cost speed: compare the spread of each build's rounds with the gap between the builds.
# Needs: cargo build --release (its loadgen drives both); PostgreSQL at $PG (default
# postgres://postgres@127.0.0.1:5432).
#
# usage: [BACKENDS="sqlite postgres"] bench/compare_builds.sh OLD_BINARY NEW_BINARY [ROUNDS]
#   git worktree add /tmp/old REV && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release)
#   bench/compare_builds.sh /tmp/old-target/release/student-service target/release/student-service 2
set -u
cd "$(dirname "$0")/.."
old=$1
new=$2
rounds=${3:-2}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
# A port the kernel just handed out, not a fixed one: outgoing connections (to PostgreSQL, of
# loadgen) take their local ports from the same range and once made a fixed port busy.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
run() { # LABEL BINARY URL
  local label=$1 binary=$2 url=$3 port
  port=$(free_port)
  DATABASE_URL="$url" LISTEN_ADDR="127.0.0.1:$port" RUST_LOG=warn "$binary" &
  local pid=$!
  for _ in $(seq 50); do grpcurl -plaintext "127.0.0.1:$port" grpc.health.v1.Health/Check >/dev/null 2>&1 && break; sleep 0.2; done
  target/release/loadgen --target "http://127.0.0.1:$port" --rpc list-courses,assign-course \
    --duration 10s 2>/dev/null | grep -E '^(ListCourses|AssignCourse) ' | sed "s|^|$(printf '%-16s' "$label") |"
  kill -TERM "$pid"; wait "$pid"
}
echo "build            rpc                 requests     req/s  ratio  enroll/s     p50     p90     p99   p99.9      max"
for round in $(seq "$rounds"); do
  for backend in ${BACKENDS:-sqlite postgres}; do
    for variant in old new; do
      binary=$old
      [[ $variant == new ]] && binary=$new
      if [[ $backend == sqlite ]]; then
        rm -f "/tmp/compare_$variant.db"*; url="sqlite:/tmp/compare_$variant.db"
      else
        psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS compare_$variant WITH (FORCE)" \
          -c "CREATE DATABASE compare_$variant" >/dev/null; url="$PG/compare_$variant"
      fi
      run "$backend/$variant" "$binary" "$url"
    done
  done
done
