#!/usr/bin/env bash
# The protos' checks, with the buf binary given (.ci/run installs it from npm): `buf lint` (rules
# in proto/buf.yaml), then `buf breaking` (rules in proto/buf.yaml: WIRE_JSON, no RPC or service
# deleted) against two references, failing on any wire or JSON break of either:
#   * .ci/contract, the contract as last released (see .ci/contract/README.md);
#   * proto/ of the previous commit, when the clone has one (skipped with a message otherwise,
#     e.g. in a shallow clone of depth 1), so that a change cannot break what the commit before
#     it added, even before it is released into .ci/contract.
#
#   bash .ci/proto_check.sh BUF [PROTO_DIR]   (default: proto; another directory to test a copy)
set -euo pipefail
buf=$(realpath "$1")
cd "$(dirname "$0")/.."
dir=$(realpath "${2:-proto}")

echo "buf $("$buf" --version): lint $dir"
(cd "$dir" && "$buf" lint)

echo "buf breaking $dir --against .ci/contract (the released contract)"
"$buf" breaking "$dir" --against .ci/contract

if git rev-parse --verify --quiet 'HEAD~1^{commit}' >/dev/null; then
  echo "buf breaking $dir --against proto/ of HEAD~1 ($(git rev-parse --short 'HEAD~1'))"
  "$buf" breaking "$dir" --against '.git#ref=HEAD~1,subdir=proto'
else
  echo "buf breaking against HEAD~1 skipped: this clone has no previous commit (shallow clone?)"
fi
echo "protos: lint and breaking checks passed"
