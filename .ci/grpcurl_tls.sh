#!/usr/bin/env bash
# grpcurl against the real binary with TLS, mutual TLS and tokens all on, the way docs/security.md's
# "Security" section tells operators to run it. The certificates come from the openssl CLI and the
# client is grpcurl (Go's TLS), so this also checks that what the Rust tests prove with rcgen and
# rustls on both ends holds with other tools.
#
# usage: .ci/grpcurl_tls.sh BINARY
set -euo pipefail

binary=$(realpath "$1")
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

# --- certificates: a CA, a server certificate for localhost and 127.0.0.1, a client certificate
# from the CA, and one from a CA the server does not trust.
quiet() { "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; "$@"; exit 1; }; }
ca() { # ca NAME
  quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$1.key" -out "$1.pem" -subj "/CN=$1" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}
leaf() { # leaf NAME CA KEY_ALGORITHM EXTENSIONS
  quiet openssl req -new -newkey "$3" -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$1"
  printf '%b' "$4" >"$1.ext"
  quiet openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 2 \
    -extfile "$1.ext" -out "$1.pem"
}
ca ca
ca other-ca
leaf server ca rsa:2048 \
  'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n'
leaf client ca ec:<(openssl ecparam -name prime256v1) \
  'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n'
leaf stranger other-ca ec:<(openssl ecparam -name prime256v1) \
  'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n'
# The admin console of docs/security.md's policy, known by its SPIFFE ID (a URI SAN).
leaf console ca ec:<(openssl ecparam -name prime256v1) \
  'subjectAltName=URI:spiffe://school.example/ns/admin/sa/console\nextendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n'

ci_token=$(openssl rand -hex 32)
cat >tokens.txt <<EOF
# NAME TOKEN
ci $ci_token
ops $(openssl rand -hex 32)
EOF

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
address="localhost:$port"

# grpcurl learns the API by reflection, so with --auth-reflection even a health check through
# grpcurl needs a token: for reflection only (-reflect-header), the call itself goes without.
start_server() { # start_server EXTRA_FLAGS...
  : >"server.log"
  NO_COLOR=1 RUST_LOG=info "$binary" --listen "127.0.0.1:$port" \
    --database-url "sqlite:$work/school.db" \
    --tls-cert server.pem --tls-key server.key --tls-client-ca ca.pem \
    --auth-tokens-file tokens.txt "$@" 2>>server.log &
  server_pid=$!
  for _ in $(seq 150); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      cat server.log
      echo "the server exited before serving" >&2
      exit 1
    fi
    if grpcurl -max-time 2 -cacert ca.pem -cert client.pem -key client.key \
      -reflect-header "authorization: Bearer $ci_token" "$address" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then
      return
    fi
    sleep 0.2
  done
  cat server.log
  echo "the server did not become SERVING within 30 s" >&2
  exit 1
}

passed=0
failed=0
# check WHAT ok|fails TEXT GRPCURL_ARGS...: grpcurl must succeed (or fail) and print TEXT.
check() {
  local what=$1 want=$2 text=$3 output status=0
  shift 3
  output=$(grpcurl -max-time 10 "$@" 2>&1) || status=$?
  local exit_ok=false
  if [[ $want == ok ]]; then ((status == 0)) && exit_ok=true; else ((status != 0)) && exit_ok=true; fi
  if $exit_ok && grep -qF -- "$text" <<<"$output"; then
    passed=$((passed + 1))
    if [[ $want == ok ]]; then echo "ok: $what"; else echo "ok: $what: $(grep -m1 . <<<"$output")"; fi
  else
    failed=$((failed + 1))
    printf 'FAILED: %s (exit %s, wanted %s and %q)\n%s\n' "$what" "$status" "$want" "$text" "$output"
  fi
}
# check_log WHAT yes|no TEXT: the server log does (or does not) contain TEXT.
check_log() {
  if { [[ $2 == yes ]] && grep -qF -- "$3" server.log; } ||
    { [[ $2 == no ]] && ! grep -qF -- "$3" server.log; }; then
    passed=$((passed + 1))
    echo "ok: $1"
  else
    failed=$((failed + 1))
    printf 'FAILED: %s\n' "$1"
    cat server.log
  fi
}

mtls=(-cacert ca.pem -cert client.pem -key client.key)
bearer=(-H "authorization: Bearer $ci_token")

start_server
check "health is open" ok '"SERVING"' "${mtls[@]}" "$address" grpc.health.v1.Health/Check
check "reflection is open by default" ok school.v1.StudentService "${mtls[@]}" "$address" list
check "a call with certificate and token" ok '"email": "ada@example.com"' "${mtls[@]}" "${bearer[@]}" \
  -d '{"name": "Ada Lovelace", "email": "ada@example.com"}' "$address" school.v1.StudentService/CreateStudent
check "no token is UNAUTHENTICATED" fails 'Message: missing credentials' "${mtls[@]}" \
  -d '{}' "$address" school.v1.StudentService/ListStudents
check "a wrong token is UNAUTHENTICATED" fails 'Code: Unauthenticated' "${mtls[@]}" \
  -H "authorization: Bearer wrong-$ci_token" -d '{}' "$address" school.v1.CourseService/SearchCourses
check "with ErrorInfo UNAUTHENTICATED" fails '"reason":"UNAUTHENTICATED"' "${mtls[@]}" \
  -H "authorization: Bearer wrong-$ci_token" -d '{}' "$address" school.v1.CourseService/SearchCourses
check "without a client certificate the call fails" fails '' -cacert ca.pem "${bearer[@]}" \
  -d '{}' "$address" school.v1.StudentService/ListStudents
check "a certificate from another CA fails" fails '' -cacert ca.pem -cert stranger.pem -key stranger.key \
  "${bearer[@]}" -d '{}' "$address" school.v1.StudentService/ListStudents
check "a client that does not trust the CA fails" fails 'certificate' -cert client.pem -key client.key \
  "${bearer[@]}" -d '{}' "$address" school.v1.StudentService/ListStudents
# grpcurl keeps redialling a connection the server closes, until its deadline: keep that short.
check "plaintext fails" fails '' -plaintext -connect-timeout 3 "${bearer[@]}" \
  -d '{}' "$address" school.v1.StudentService/ListStudents
check_log "the log names the caller" yes 'caller="ci"'
check_log "the log never shows a token" no "$ci_token"
stop_server

start_server --auth-reflection
check "--auth-reflection: reflection needs a token" fails 'code = Unauthenticated' "${mtls[@]}" "$address" list
check "--auth-reflection: reflection with a token" ok school.v1.CourseService "${mtls[@]}" "${bearer[@]}" "$address" list
check "--auth-reflection: health needs no token (only reflection does)" ok '"SERVING"' "${mtls[@]}" \
  -reflect-header "authorization: Bearer $ci_token" "$address" grpc.health.v1.Health/Check
check "--auth-reflection: a call needs its own token" fails 'missing credentials' "${mtls[@]}" \
  -reflect-header "authorization: Bearer $ci_token" -d '{}' "$address" school.v1.StudentService/ListStudents
check "--auth-reflection: a described call" ok '"name": "Ada Lovelace"' "${mtls[@]}" "${bearer[@]}" \
  -d '{"student_id": 1}' "$address" school.v1.StudentService/GetStudent
stop_server

# docs/security.md's policy: `ci` reads, the console (its certificate, no token) may do anything.
cat >policy.toml <<'POLICY'
[[allow]]
principals = ["ci"]
methods = ["school.v1.StudentService/List*", "school.v1.*/Get*"]

[[allow]]
principals = ["spiffe://school.example/ns/admin/sa/console"]
methods = ["school.v1.*/*"]
POLICY
console=(-cacert ca.pem -cert console.pem -key console.key)
start_server --authz-policy policy.toml
check "--authz-policy: a read the policy allows" ok '"name": "Ada Lovelace"' "${mtls[@]}" "${bearer[@]}" \
  -d '{"student_id": 1}' "$address" school.v1.StudentService/GetStudent
check "--authz-policy: a write it does not is PERMISSION_DENIED" fails 'Code: PermissionDenied' \
  "${mtls[@]}" "${bearer[@]}" -d '{"student_id": 1}' "$address" school.v1.StudentService/DeleteStudent
check "--authz-policy: ErrorInfo names principal and method" fails \
  '"metadata":{"method":"school.v1.StudentService/DeleteStudent","principal":"ci"}' \
  "${mtls[@]}" "${bearer[@]}" -d '{"student_id": 1}' "$address" school.v1.StudentService/DeleteStudent
check "--authz-policy: the console's SPIFFE ID may write, without a token" ok '"email": "grace@example.com"' \
  "${console[@]}" -d '{"name": "Grace Hopper", "email": "grace@example.com"}' "$address" \
  school.v1.StudentService/CreateStudent
check "--authz-policy: a certificate no rule names is denied" fails '"principal":"client"' "${mtls[@]}" \
  -d '{}' "$address" school.v1.StudentService/ListStudents
check_log "--authz-policy: the log names the console" yes 'caller="spiffe://school.example/ns/admin/sa/console"'
stop_server

echo "grpcurl-tls: $passed passed, $failed failed"
((failed == 0))
