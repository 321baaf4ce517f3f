#!/usr/bin/env bash
# The event feed as its consumers see it, on each backend given: the server relays to the NATS
# JetStream on 127.0.0.1:4222 (a stream and subjects of this run's own, deleted afterwards), a few
# enrollments are made with grpcurl (four events), and examples/python/events_consumer.py
# (nats-py) with --count 3 must print exactly the first three, in order, with no gap.
#
# usage: events_check.sh BINARY DATABASE_URL...
set -euo pipefail
binary=$(realpath "$1"); shift
root=$(cd "$(dirname "$0")/.." && pwd)
nats_url=${NATS_URL:-nats://127.0.0.1:4222}
work=$(mktemp -d)
stream="CI_EVENTS_$$_$RANDOM"
prefix="ci.events.$$.$RANDOM"
delete_stream() {
  python3 - "$nats_url" "$stream" <<'PY' || true
import asyncio, sys, nats
async def main(url, stream):
    connection = await nats.connect(url)
    try:
        await connection.jetstream().delete_stream(stream)
    except Exception:
        pass
    await connection.close()
asyncio.run(main(*sys.argv[1:]))
PY
}
trap 'kill "$server" 2>/dev/null || true; delete_stream; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

for url in "$@"; do
  delete_stream
  port=$(free_port)
  DATABASE_URL="$url" LISTEN_ADDR="127.0.0.1:$port" RUST_LOG=warn EVENTS_NATS_URL="$nats_url" \
    EVENTS_NATS_STREAM="$stream" EVENTS_NATS_SUBJECT_PREFIX="$prefix" "$binary" >"$work/server.log" 2>&1 &
  server=$!
  for _ in $(seq 50); do grpcurl -plaintext "127.0.0.1:$port" grpc.health.v1.Health/Check >/dev/null 2>&1 && break; sleep 0.2; done
  call() { grpcurl -plaintext -d "$2" "127.0.0.1:$port" "school.v1.$1" >/dev/null; }
  tag=$RANDOM$RANDOM
  call StudentService/CreateStudent "{\"name\": \"Ev A\", \"email\": \"a$tag@example.com\"}"
  call StudentService/CreateStudent "{\"name\": \"Ev B\", \"email\": \"b$tag@example.com\"}"
  call CourseService/CreateCourse "{\"code\": \"EV$tag\", \"title\": \"Events\"}"
  ids() { grpcurl -plaintext -d '{"page_size": 1000}' "127.0.0.1:$port" school.v1.StudentService/ListStudents \
    | python3 -c "import json,sys; print(' '.join(s['id'] for s in json.load(sys.stdin)['students'] if s['email'].endswith('$tag@example.com')))"; }
  read -r a b <<<"$(ids)"
  course=$(grpcurl -plaintext -d "{\"query\": \"EV$tag\"}" "127.0.0.1:$port" school.v1.CourseService/SearchCourses \
    | python3 -c "import json,sys; print(json.load(sys.stdin)['courses'][0]['id'])")
  call StudentService/AssignCourse "{\"student_id\": $a, \"course_id\": $course}"
  call StudentService/AssignCourse "{\"student_id\": $b, \"course_id\": $course}"
  call StudentService/UnassignCourse "{\"student_id\": $a, \"course_id\": $course}"
  # A fourth event, which --count 3 must leave alone: wait until the relay has put all four on the
  # stream, so that a consumer that reads past --count would print it.
  call StudentService/AssignCourse "{\"student_id\": $a, \"course_id\": $course}"
  python3 - "$nats_url" "$stream" <<'PY'
import asyncio, sys, time, nats
async def messages(jetstream, stream):
    try:
        return (await jetstream.stream_info(stream)).state.messages
    except nats.js.errors.NotFoundError:  # the relay has not created it yet
        return 0
async def main(url, stream):
    connection = await nats.connect(url)
    deadline = time.time() + 10
    while await messages(connection.jetstream(), stream) < 4:
        if time.time() > deadline:
            sys.exit(f"the stream {stream} did not get 4 events within 10 s")
        await asyncio.sleep(0.1)
    await connection.close()
asyncio.run(main(*sys.argv[1:]))
PY
  echo "events on $url:"
  python3 "$root/examples/python/events_consumer.py" --nats "$nats_url" --stream "$stream" \
    --subject-prefix "$prefix" --count 3 --timeout 10 | tee "$work/consumer.out"
  grep -q "events-consumer: 3 events, sequences 1..3, no gap" "$work/consumer.out" \
    || { echo "the consumer did not read the 3 events (a fresh database numbers from 1)"; cat "$work/server.log"; exit 1; }
  [ "$(grep -c 'TYPE_' "$work/consumer.out")" -eq 3 ] \
    || { echo "the consumer printed other than 3 events for --count 3"; exit 1; }
  kill -TERM "$server"; wait "$server"
done
