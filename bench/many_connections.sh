#!/usr/bin/env bash
# ListCourses and AssignCourse at 1, 16, 256 and 1,024 calls in flight over 1, 4, 64 and 256
# HTTP/2 connections: req/s, p99 and the server's peak RSS at each point, on one fresh database
# per backend. The server runs with --max-in-flight 2048 so that 1,024 calls in flight are all
# admitted (the default, 1,024, would refuse the odd call while others finish), and
# --max-concurrent-streams 128 (the default; 1,024 in flight over 256 connections is 4 each).
#
# usage: bench/many_connections.sh [DATABASE_URL]   (default: a SQLite file in a temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x target/release/student-service && -x target/release/loadgen ]] || cargo build --release --bins
work=$(mktemp -d)
url=${1:-sqlite:$work/connections.db}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATABASE_URL="$url" LISTEN_ADDR="127.0.0.1:$port" RUST_LOG=warn MAX_IN_FLIGHT=2048 \
  target/release/student-service &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do grpcurl -plaintext "127.0.0.1:$port" grpc.health.v1.Health/Check >/dev/null 2>&1 && break; sleep 0.2; done
echo "in-flight connections rpc                 requests     req/s  ratio  enroll/s     p50     p90     p99   p99.9      max  peak RSS"
for point in "1 1" "16 4" "256 64" "1024 256"; do
  read -r inflight connections <<<"$point"
  target/release/loadgen --target "http://127.0.0.1:$port" --rpc list-courses,assign-course \
    --concurrency "$inflight" --connections "$connections" --duration 8s --students 2000 \
    --courses-per-student 10 --server-pid "$server" 2>/dev/null >"$work/out"
  rss=$(grep "peak RSS" "$work/out" | grep -o '[0-9.]* MiB')
  grep -E '^(ListCourses|AssignCourse)' "$work/out" | while read -r line; do
    printf '%9s %11s %s  %s\n' "$inflight" "$connections" "$line" "$rss"
  done
done
