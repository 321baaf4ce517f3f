#!/usr/bin/env bash
# ListCourses and AssignCourse at 1, 16, 256 and 1,024 calls in flight over 1, 4, 64 and 256
# HTTP/2 connections: req/s, p99 and the server's peak RSS at each point. Each point gets a
# fresh database and a fresh server, so that no point pays for the rows, events, autovacuum and
# checkpoints of the ones before it (on one long-lived database, the last point ran 20% slower
# for that alone). The server runs with --max-in-flight 2048 so that 1,024 calls in flight are
# all admitted (the default, 1,024, would refuse the odd call while others finish), and
# --max-concurrent-streams 128 (the default; 1,024 in flight over 256 connections is 4 each).
#
# usage: bench/many_connections.sh [POSTGRES_BASE_URL]
#   POSTGRES_BASE_URL: postgres://USER@HOST:PORT, where a database per point is created and
#   dropped; default: a SQLite file per point in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x target/release/student-service && -x target/release/loadgen ]] || cargo build --release --bins
work=$(mktemp -d)
pg_base=${1:-}
server=
cleanup() { [[ -n $server ]] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "in-flight connections rpc                 requests     req/s  ratio  enroll/s     p50     p90     p99   p99.9      max  peak RSS"
point=0
for load in "1 1" "16 4" "256 64" "1024 256"; do
  read -r inflight connections <<<"$load"
  point=$((point + 1))
  if [[ -n $pg_base ]]; then
    psql "$pg_base/postgres" -qc "DROP DATABASE IF EXISTS connections_$point WITH (FORCE)" \
      -c "CREATE DATABASE connections_$point" 2>&1 | grep -v NOTICE || true
    url="$pg_base/connections_$point"
  else
    url="sqlite:$work/connections_$point.db"
  fi
  port=$(free_port)
  DATABASE_URL="$url" LISTEN_ADDR="127.0.0.1:$port" RUST_LOG=warn MAX_IN_FLIGHT=2048 \
    target/release/student-service &
  server=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  target/release/loadgen --target "http://127.0.0.1:$port" --rpc list-courses,assign-course \
    --concurrency "$inflight" --connections "$connections" --duration 8s --students 2000 \
    --courses-per-student 10 --server-pid "$server" 2>/dev/null >"$work/out"
  kill "$server"
  wait "$server" || true
  server=
  [[ -n $pg_base ]] && psql "$pg_base/postgres" -qc "DROP DATABASE IF EXISTS connections_$point WITH (FORCE)"
  rss=$(grep "peak RSS" "$work/out" | grep -o '[0-9.]* MiB')
  grep -E '^(ListCourses|AssignCourse)' "$work/out" | while read -r line; do
    printf '%9s %11s %s  %s\n' "$inflight" "$connections" "$line" "$rss"
  done
done
