#!/usr/bin/env bash
# Runs the example clients against the real binary: examples/enroll.rs (Rust, built first) and
# examples/python/client.py, the copyable Python client:
#  - for each DATABASE_URL, on a plaintext server: twice (the first leaves its rows, and a second
#    run on the same database must pass too), first with stubs made by the command
#    docs/clients.md gives, then with the script generating its own (--generate); the Rust
#    example twice too;
#  - once on a server with TLS and tokens (and a run without the token must be refused), once with
#    mutual TLS and tokens, once with a token over plaintext (the metadata path); the Rust example
#    with TLS and the token, and with the token over plaintext;
#  - that examples/service_config.json names every unary RPC of proto/ once, and no stream;
#  - that examples/service_config.json is really used: with the server at --max-in-flight 1 and
#    the only slot held, a call on a channel without retries is refused (RESOURCE_EXHAUSTED) while
#    the same call through the service config is retried by the channel and succeeds (the server
#    log shows the refused attempts and the OK); and the same file with one value broken makes
#    gRPC refuse the channel.
#
# usage: .ci/examples.sh BINARY DATABASE_URL...
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
binary=$(realpath "$1")
shift
(($# > 0)) || { echo "usage: $0 BINARY DATABASE_URL..." >&2; exit 2; }
example="$root/examples/python/client.py"
config="$root/examples/service_config.json"

python3 -m pip install --quiet --disable-pip-version-check -r "$root/examples/python/requirements.txt"
(cd "$root" && cargo build --quiet --locked --example enroll)
rust_example="$root/target/debug/examples/enroll"

work=$(mktemp -d)
server_pid=
stop_server() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap 'stop_server; rm -rf "$work"' EXIT
cd "$work"

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAILED: $*"; }

port=
# start_server DATABASE_URL EXTRA_FLAGS...: on a free port, waits until it accepts connections.
start_server() {
  local url=$1
  shift
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  : >server.log
  NO_COLOR=1 RUST_LOG=info "$binary" --listen "127.0.0.1:$port" --database-url "$url" "$@" 2>>server.log &
  server_pid=$!
  for _ in $(seq 150); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      cat server.log
      echo "the server exited before serving" >&2
      exit 1
    fi
    # The server listens only once its migrations are done.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return
    fi
    sleep 0.2
  done
  cat server.log
  echo "the server did not listen within 30 s" >&2
  exit 1
}

# run_example WHAT ARGS...: the example must exit 0 and end with "0 failed".
run_example() {
  local what=$1 output status=0
  shift
  output=$(python3 "$example" "$@" 2>&1) || status=$?
  if ((status == 0)) && tail -n 1 <<<"$output" | grep -qE '^python-example: [0-9]+ passed, 0 failed$'; then
    ok "$what: $(tail -n 1 <<<"$output")"
  else
    fail "$what (exit $status)"
    echo "$output"
    cat server.log
  fi
}

# run_rust WHAT ARGS...: the Rust example must exit 0 and say so.
run_rust() {
  local what=$1 output status=0
  shift
  output=$("$rust_example" "$@" 2>&1) || status=$?
  if ((status == 0)) && tail -n 1 <<<"$output" | grep -qx 'done: every answer was the expected one'; then
    ok "Rust example, $what"
  else
    fail "Rust example, $what (exit $status)"
    echo "$output"
    cat server.log
  fi
}

# The stubs, made with the command docs/clients.md gives (there into examples/python/gen).
mkdir gen
python3 -m grpc_tools.protoc -I "$root/proto" --python_out=gen --grpc_python_out=gen \
  "$root"/proto/school/v1/*.proto

for url in "$@"; do
  start_server "$url"
  # The first run leaves its rows (--keep), so the second meets them: unique e-mails and codes.
  run_example "plaintext, $url, stubs from the documented command, --keep" \
    --target "127.0.0.1:$port" --stubs gen --keep
  run_example "plaintext, $url, again on the same database, stubs made by --generate" \
    --target "127.0.0.1:$port" --generate
  run_rust "plaintext, $url" --target "http://127.0.0.1:$port"
  run_rust "plaintext, $url, again" --target "http://127.0.0.1:$port"
  stop_server
done

# --- TLS and tokens: certificates as .ci/grpcurl_tls.sh makes them (openssl CLI) --------------
quiet() { "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; "$@"; exit 1; }; }
quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout ca.key -out ca.pem -subj "/CN=ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
leaf() { # leaf NAME EXTENSIONS
  quiet openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
    -out "$1.csr" -subj "/CN=$1"
  printf '%b' "$2" >"$1.ext"
  quiet openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile "$1.ext" -out "$1.pem"
}
leaf server 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n'
leaf client 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n'
token=$(openssl rand -hex 32)
printf '# NAME TOKEN\npython-example %s\n' "$token" >tokens.txt

start_server "sqlite:$work/tls.db" --tls-cert server.pem --tls-key server.key --auth-tokens-file tokens.txt
SCHOOL_TOKEN=$token run_example "TLS + token (call credentials)" \
  --target "localhost:$port" --ca-cert ca.pem --stubs gen
STUDENT_SERVICE_TOKEN=$token run_rust "TLS + token" --target "https://localhost:$port" --ca-cert ca.pem
output=$(python3 "$example" --target "localhost:$port" --ca-cert ca.pem --stubs gen 2>&1) && status=0 || status=$?
if ((status == 2)) && grep -q 'UNAUTHENTICATED: missing credentials' <<<"$output"; then
  ok "TLS without the token: refused ($(grep -m1 -o 'UNAUTHENTICATED: [^[]*[^[ ]' <<<"$output"))"
else
  fail "TLS without the token should stop at UNAUTHENTICATED (exit $status)"
  echo "$output"
fi
if grep -q 'caller="python-example"' server.log && ! grep -qF "$token" server.log; then
  ok "the server log names the caller and never shows the token"
else
  fail "server log: caller missing or token shown"
fi
stop_server

start_server "sqlite:$work/tls.db" --tls-cert server.pem --tls-key server.key \
  --tls-client-ca ca.pem --auth-tokens-file tokens.txt
SCHOOL_TOKEN=$token run_example "mutual TLS + token" --target "localhost:$port" --ca-cert ca.pem \
  --client-cert client.pem --client-key client.key --stubs gen
stop_server

start_server "sqlite:$work/plain-token.db" --auth-tokens-file tokens.txt
SCHOOL_TOKEN=$token run_example "plaintext + token (metadata)" --target "127.0.0.1:$port" --stubs gen
STUDENT_SERVICE_TOKEN=$token run_rust "plaintext + token" --target "http://127.0.0.1:$port"
stop_server

# --- the service config is used: retries seen by the server, and an invalid one refused ----------
start_server "sqlite:$work/retry.db" --max-in-flight 1
status=0
python3 - "127.0.0.1:$port" "$config" "$work/server.log" <<'PY' || status=$?
import json, os, re, sys, threading, time

os.environ["GRPC_VERBOSITY"] = "NONE"  # the broken config below makes grpc log an error too
sys.path.insert(0, "gen")
import grpc
from school.v1 import course_service_pb2 as course_pb, student_service_pb2 as pb
from school.v1 import enrollment_event_service_pb2 as events_pb
from school.v1 import student_service_pb2_grpc as pb_grpc

target, config_path, log_path = sys.argv[1:]
with open(config_path) as f:
    config = f.read()
options = [("grpc.service_config", config), ("grpc.enable_retries", 1)]
with_config = grpc.insecure_channel(target, options)
students = pb_grpc.StudentServiceStub(with_config)
without_retries = pb_grpc.StudentServiceStub(grpc.insecure_channel(target, [("grpc.enable_retries", 0)]))
holder = grpc.insecure_channel(target)
failures = 0


def check(ok, what):
    global failures
    print(("ok: " if ok else "FAILED: ") + what)
    failures += 0 if ok else 1


def attempts(method):
    """(refused, ok) attempts of METHOD in the server log: one line per attempt."""
    lines = [l for l in open(log_path) if f'method="/school.v1.StudentService/{method}"' in l]
    return (sum("code=ResourceExhausted" in l for l in lines), sum("code=Ok" in l for l in lines))


def hold_the_slot():
    """Takes the server's only slot with a SearchCourses whose request body is not sent until the
    returned event is set (the server counts a call from its headers on)."""
    release = threading.Event()

    def body():
        release.wait(20)
        yield course_pb.SearchCoursesRequest()

    call = holder.stream_unary("/school.v1.CourseService/SearchCourses",
                               request_serializer=course_pb.SearchCoursesRequest.SerializeToString,
                               response_deserializer=lambda b: b)
    return release, call.future(body(), timeout=20)


# Every unary RPC of proto/ has an entry, once; a stream (WatchEnrollmentEvents) has none, as a
# timeout would end it.
unary = sorted((service.full_name, method.name)
               for module in (pb, course_pb, events_pb)
               for service in module.DESCRIPTOR.services_by_name.values()
               for method in service.methods
               if not (method.client_streaming or method.server_streaming))
named = sorted((name["service"], name["method"])
               for entry in json.loads(config)["methodConfig"] for name in entry["name"])
missing = sorted(set(unary) - set(named))
extra = sorted(set(named) - set(unary)) + sorted({n for n in named if named.count(n) > 1})
check(not missing and not extra, f"service_config.json names each of the {len(unary)} unary RPCs once "
      f"and nothing else (missing: {missing or 'none'}; extra or repeated: {extra or 'none'})")

email = f"retry-{time.time_ns()}@example.com"
ada = students.CreateStudent(pb.CreateStudentRequest(name="Ada", email=email), timeout=10)
result = {}
for attempt_round in range(1, 4):  # the backoff is random: in the rare round where every retry falls
    release, held = hold_the_slot()  # before the slot is freed, the call fails: try again
    time.sleep(0.3)
    try:
        without_retries.ListStudents(pb.ListStudentsRequest(), timeout=5)
        refused = "OK"
    except grpc.RpcError as err:
        refused = f"{err.code().name}: {err.details()}"
    before = attempts("GetStudent")

    def call():
        start = time.monotonic()
        try:
            result["reply"] = students.GetStudent(pb.GetStudentRequest(student_id=ada.id), timeout=5)
        except grpc.RpcError as err:
            result["error"] = f"{err.code().name}: {err.details()}"
        result["seconds"] = time.monotonic() - start

    result.clear()
    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while attempts("GetStudent")[0] == before[0] and time.monotonic() < deadline:
        time.sleep(0.002)  # free the slot as soon as the server has refused one attempt
    release.set()
    caller.join(10)
    held.result(10)
    after = attempts("GetStudent")
    refusals, oks = after[0] - before[0], after[1] - before[1]
    print(f"round {attempt_round}: without retries: {refused}; with the service config: "
          f"{'OK' if 'reply' in result else result.get('error')} after {result['seconds']:.3f} s, "
          f"server saw {refusals} refused attempt(s) then {oks} OK")
    if "reply" in result:
        break
check(refused.startswith("RESOURCE_EXHAUSTED"), "with the slot taken, a call without retries is refused")
check("reply" in result and result["reply"].id == ada.id and refusals >= 1 and oks == 1,
      "the same call through examples/service_config.json was retried by the channel and succeeded")

broken = json.loads(config)
broken["methodConfig"][0]["retryPolicy"]["initialBackoff"] = "0.1"  # no "s": not a duration
try:
    pb_grpc.StudentServiceStub(grpc.insecure_channel(target, [("grpc.service_config", json.dumps(broken))])) \
        .GetStudent(pb.GetStudentRequest(student_id=ada.id), timeout=5)
    check(False, "a broken service config is refused")
except grpc.RpcError as err:
    message = re.sub(r"\s+", " ", err.details())
    check(err.code() == grpc.StatusCode.INVALID_ARGUMENT and "initialBackoff" in message,
          f"a broken service config is refused: {err.code().name}: {message}")
sys.exit(1 if failures else 0)
PY
if ((status == 0)); then ok "the service config is used (retries) and checked"; else fail "retry checks"; cat server.log; fi
stop_server

echo "examples-ci: $passed passed, $failed failed"
((failed == 0))
