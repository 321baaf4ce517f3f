#!/usr/bin/env bash
# A Go team's client, from Debian's packages alone (no Go module proxy): protoc with
# protoc-gen-go and protoc-gen-go-grpc generates from proto/ with no M import-path flags (the
# protos' go_package option says where the code goes) and must print nothing; Go builds
# .ci/go_client/main.go against it in GOPATH mode from /usr/share/gocode; the client then runs its
# scenario (.ci/go_client/main.go) against the binary on each database URL given.
#
# usage: .ci/go_client.sh BINARY DATABASE_URL...
set -euo pipefail

binary=$(realpath "$1")
shift
cd "$(dirname "$0")/.."

# golang-github-golang-protobuf-1-5-dev is named because grpc-dev and genproto-dev accept either
# it or 1-3, and grpc's codec over the 1.3 library cannot decode the APIv2 messages that
# protoc-gen-go 1.28 writes (it panics: "protobuf tag not enough fields").
packages=(protobuf-compiler libprotobuf-dev protoc-gen-go protoc-gen-go-grpc golang-go
  golang-github-golang-protobuf-1-5-dev golang-google-protobuf-dev golang-google-grpc-dev
  golang-google-genproto-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
    missing+=("$package")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
protoc --version
go version

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"

# The plain command a Go team would run: no M flags, and not a line of warning.
if ! protoc -I proto -I /usr/include --go_out="$work/src" --go-grpc_out="$work/src" \
  proto/school/v1/*.proto 2>"$work/protoc.log" || [[ -s $work/protoc.log ]]; then
  echo "protoc with protoc-gen-go / protoc-gen-go-grpc failed or warned:" >&2
  cat "$work/protoc.log" >&2
  exit 1
fi
echo "generated: $(cd "$work/src" && find . -name '*.go' | sort | tr '\n' ' ')"

export GO111MODULE=off GOPATH="$work:/usr/share/gocode" GOPROXY=off GOFLAGS=
[[ -n ${GOCACHE:-}${XDG_CACHE_HOME:-}${HOME:-} ]] || export GOCACHE="$work/gocache"
go build -o "$work/go-client" ./.ci/go_client

for database_url in "$@"; do
  "$work/go-client" "$binary" "$database_url"
done
