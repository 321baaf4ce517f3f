#!/usr/bin/env bash
# What metrics and traces cost: ListCourses and AssignCourse req/s of the release build with
# observability off, with metrics on (--metrics-listen, scraped every second as a busy
# Prometheus would), and with metrics and traces on (100% sampling, exported to
# examples/otlp_sink.rs, a collector that is up and counts the spans it receives), in alternating rounds on one machine. Each round seeds a fresh
# database. Prints one line per run and the medians.
#
# usage: bench/observability_cost.sh [ROUNDS] [DURATION] [DATABASE_URL_BASE]
#   DATABASE_URL_BASE: empty for SQLite files, or postgres://USER@HOST:PORT (a database per run
#   is created and dropped there).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
duration=${2:-8s}
pg_base=${3:-}
binary=target/release/student-service
loadgen=target/release/loadgen
sink=target/release/examples/otlp_sink
[[ -x $binary && -x $loadgen ]] || cargo build --release --bins
[[ -x $sink ]] || cargo build --release --example otlp_sink
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

sink_port=$(free_port)
"$sink" "$sink_port" >"$work/sink.log" 2>&1 &
sink_pid=$!
# Without a sink that is up, "traces" would measure a collector that is down.
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$sink_port") 2>/dev/null && break; sleep 0.1; done
kill -0 "$sink_pid" 2>/dev/null || { cat "$work/sink.log"; echo "the OTLP sink did not start" >&2; exit 1; }
cleanup() { kill "$sink_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

run=0
measure() { # measure MODE
  local mode=$1 port metrics_port url env=() scraper=
  run=$((run + 1))
  port=$(free_port)
  metrics_port=$(free_port)
  if [[ -n $pg_base ]]; then
    psql "$pg_base/postgres" -qc "DROP DATABASE IF EXISTS bench_$run" -c "CREATE DATABASE bench_$run" >/dev/null
    url="$pg_base/bench_$run"
  else
    url="sqlite:$work/bench_$run.db"
  fi
  case $mode in
    metrics) env=(METRICS_LISTEN="127.0.0.1:$metrics_port") ;;
    traces) env=(METRICS_LISTEN="127.0.0.1:$metrics_port" OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port") ;;
  esac
  env "${env[@]}" DATABASE_URL="$url" LISTEN_ADDR="127.0.0.1:$port" RUST_LOG=warn "$binary" &
  local server=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  if [[ $mode != off ]]; then
    (while sleep 1; do curl -fsS "http://127.0.0.1:$metrics_port/metrics" >/dev/null || true; done) &
    scraper=$!
  fi
  "$loadgen" --target "http://127.0.0.1:$port" --duration "$duration" --rpc list-courses,assign-course \
    --server-pid "$server" >"$work/run.txt" 2>&1
  [[ -n $scraper ]] && kill "$scraper"
  kill -TERM "$server"; wait "$server" || true
  [[ -n $pg_base ]] && psql "$pg_base/postgres" -qc "DROP DATABASE IF EXISTS bench_$run WITH (FORCE)" >/dev/null
  for rpc in ListCourses AssignCourse; do
    local rate
    rate=$(awk -v rpc="$rpc" '$1 == rpc { print $3; exit }' "$work/run.txt")
    echo "$mode $rpc $rate" | tee -a "$work/results"
  done
}

for round in $(seq "$rounds"); do
  for mode in off metrics traces; do
    measure "$mode"
  done
done
echo "--- medians (req/s), cost against off, and the median of each round's cost against its own off run"
python3 - "$work/results" <<'PY'
import statistics, sys
rates = {}
for line in open(sys.argv[1]):
    mode, rpc, rate = line.split()
    rates.setdefault((mode, rpc), []).append(float(rate))
for rpc in ("ListCourses", "AssignCourse"):
    off = statistics.median(rates[("off", rpc)])
    for mode in ("off", "metrics", "traces"):
        median = statistics.median(rates[(mode, rpc)])
        # Each mode against off in the same round, then the median over rounds: steadier than
        # the medians' ratio when the machine drifts between rounds.
        paired = statistics.median(
            run / base - 1 for run, base in zip(rates[(mode, rpc)], rates[("off", rpc)])
        )
        print(f"{rpc:13} {mode:8} {median:9.0f}  {100 * (median / off - 1):+5.1f}%"
              f"  paired {100 * paired:+5.1f}%  runs {rates[(mode, rpc)]}")
PY
sink_cpu=$(awk '{ printf "%.1f", ($14 + $15) / 100 }' "/proc/$sink_pid/stat")
kill -TERM "$sink_pid"; wait "$sink_pid" 2>/dev/null || true
cat "$work/sink.log"
echo "otlp-sink: ${sink_cpu} s of CPU (it shares the machine with the server and the load generator)"
