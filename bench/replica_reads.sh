#!/usr/bin/env bash
# What a read replica costs and gives: ListCourses and AssignCourse through loadgen (defaults: 16
# in flight over 4 connections, 10 s each), the server over a PostgreSQL primary of its own,
# without --database-read-url and with it pointing at a streaming standby of that primary,
# alternating, ROUNDS rounds, a fresh database per run. Both clusters run on this machine, so the
# replica shares its cores with everything else: this measures the cost of the mechanism (the
# token's statement on each write, the routing), not the capacity a separate replica host adds.
# Needs: cargo build --release; PostgreSQL's server binaries (PG_BIN, default the newest
# /usr/lib/postgresql/*/bin); root or the postgres user.
#
# usage: bench/replica_reads.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
work=$(mktemp -d)
as_postgres() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[[ $(id -u) == 0 ]] && chown postgres: "$work"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
primary_port=$(free_port)
standby_port=$(free_port)
cleanup() {
  as_postgres "$PG_BIN/pg_ctl" -D "$work/standby" stop -m immediate >/dev/null 2>&1 || true
  as_postgres "$PG_BIN/pg_ctl" -D "$work/primary" stop -m immediate >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
settings() { # DIR PORT
  printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n" "$2" "$work" >>"$1/postgresql.conf"
}
as_postgres "$PG_BIN/initdb" -D "$work/primary" -U postgres -A trust --no-locale -E UTF8 >/dev/null
settings "$work/primary" "$primary_port"
as_postgres "$PG_BIN/pg_ctl" -D "$work/primary" -l "$work/primary.log" -w start >/dev/null
as_postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$work/standby" -R -X stream -c fast
settings "$work/standby" "$standby_port"
as_postgres "$PG_BIN/pg_ctl" -D "$work/standby" -l "$work/standby.log" -w start >/dev/null

primary="postgres://postgres@127.0.0.1:$primary_port"
standby="postgres://postgres@127.0.0.1:$standby_port"
run() { # LABEL [READ_URL]
  local label=$1 read_url=${2:-} port pid
  psql "$primary/postgres" -qc "DROP DATABASE IF EXISTS bench WITH (FORCE)" -c "CREATE DATABASE bench" >/dev/null
  # The standby must have the database before the server reads from it.
  for _ in $(seq 100); do psql "$standby/bench" -qc 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
  port=$(free_port)
  env DATABASE_URL="$primary/bench" ${read_url:+DATABASE_READ_URL=$read_url/bench} \
    LISTEN_ADDR="127.0.0.1:$port" RUST_LOG=warn target/release/student-service &
  pid=$!
  for _ in $(seq 50); do grpcurl -plaintext "127.0.0.1:$port" grpc.health.v1.Health/Check >/dev/null 2>&1 && break; sleep 0.2; done
  target/release/loadgen --target "http://127.0.0.1:$port" --rpc list-courses,assign-course \
    --duration 10s 2>/dev/null | grep -E '^(ListCourses|AssignCourse) ' | sed "s|^|$(printf '%-16s' "$label") |"
  kill -TERM "$pid"; wait "$pid"
}
echo "reads from       rpc                 requests     req/s  ratio  enroll/s     p50     p90     p99   p99.9      max"
for _ in $(seq "$rounds"); do
  run primary
  run replica "$standby"
done
