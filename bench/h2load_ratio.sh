#!/usr/bin/env bash
# ListCourses against Health/Check measured by h2load (nghttp2), a client no one here wrote: both
# at 16 calls in flight over 4 HTTP/2 connections, alternating, on one database seeded by the load
# generator (1,000 students with 10 courses each); ListCourses asks for one student's 10
# courses. Prints each run and the median ratio ListCourses / Health. h2load counts a response
# as a success by its HTTP status, so the script also checks that every ListCourses answered
# grpc-status 0 (the server's grpc_server_handled_total), but for the few calls h2load cancels
# when its time is up (CANCELLED).
#
# usage: [BINARY=...] bench/h2load_ratio.sh [ROUNDS] [SECONDS] [DATABASE_URL]   (apt-get install nghttp2-client)
#   DATABASE_URL: default a SQLite file in a temporary directory. BINARY: the server to measure,
#   default target/release/student-service (another build's, to compare two builds by their
#   ratios, which the machine's load affects far less than their rates).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-8}
[[ -x target/release/student-service && -x target/release/loadgen ]] || cargo build --release --bins
command -v h2load >/dev/null || { echo "h2load not found: apt-get install nghttp2-client" >&2; exit 1; }
work=$(mktemp -d)
url=${3:-sqlite:$work/ratio.db}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
metrics_port=$(free_port)
DATABASE_URL="$url" LISTEN_ADDR="127.0.0.1:$port" METRICS_LISTEN="127.0.0.1:$metrics_port" RUST_LOG=warn \
  "${BINARY:-target/release/student-service}" &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
target/release/loadgen --target "http://127.0.0.1:$port" --rpc health --duration 1s --warmup 0s >/dev/null 2>&1

# gRPC messages: a 5-byte prefix (not compressed, length), then the protobuf.
printf '\x00\x00\x00\x00\x00' >"$work/health.bin"                 # HealthCheckRequest {}
printf '\x00\x00\x00\x00\x02\x08\x01' >"$work/list_courses.bin"   # ListCoursesRequest { student_id: 1 }

run() { # run PATH BODY -> req/s
  h2load -D "$seconds" --warm-up-time 1 -c 4 -m 4 -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$2" "http://127.0.0.1:$port$1" >"$work/h2load.txt"
  grep -q ' 0 failed, 0 errored' "$work/h2load.txt" || { cat "$work/h2load.txt" >&2; exit 1; }
  awk '/^finished in/ { print $4 }' "$work/h2load.txt"
}
for _ in $(seq "$rounds"); do
  health=$(run /grpc.health.v1.Health/Check "$work/health.bin")
  list=$(run /school.v1.StudentService/ListCourses "$work/list_courses.bin")
  echo "Health/Check $health req/s  ListCourses $list req/s  ratio $(python3 -c "print(f'{$list / $health:.2f}')")" | tee -a "$work/runs"
done
curl -fsS "http://127.0.0.1:$metrics_port/metrics" >"$work/metrics.txt"
# Every code's series is there from the start, at 0: only those above 0 say something.
not_ok=$(awk '/^grpc_server_handled_total/ && /grpc_method="ListCourses"/ && !/grpc_code="(OK|Canceled)"/ && !/ 0$/' "$work/metrics.txt")
[[ -z $not_ok ]] || { echo "ListCourses calls that did not answer OK: $not_ok" >&2; exit 1; }
python3 - "$work/runs" <<'PY'
import statistics, sys
ratios = [float(line.split()[-1]) for line in open(sys.argv[1])]
print(f"median ratio ListCourses / Health/Check: {statistics.median(ratios):.2f} (runs {ratios})")
PY
