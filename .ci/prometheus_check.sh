#!/usr/bin/env bash
# Checks deploy/prometheus/ with promtool:
#   1. promtool check rules   deploy/prometheus/alerts.yml      (syntax, PromQL, templates, duplicate rules)
#   2. promtool test rules    deploy/prometheus/alerts_test.yml (every alert fires when it must, and only then)
#   3. promtool check config  deploy/prometheus/scrape.yml      (the example Prometheus configuration)
#   4. with an argument:      promtool check metrics < SCRAPE_FILE
#      SCRAPE_FILE is the body of a real GET /metrics of the service; the check fails on any problem
#      promtool reports (missing HELP, a counter without _total, non-base units, ...) and on an empty file.
#
# Usage: bash .ci/prometheus_check.sh [SCRAPE_FILE]
#
# promtool comes from Debian's "prometheus" package (2.42 on bookworm), installed when missing. Only
# the promtool binary is taken out of the package: installing the package itself would start a
# Prometheus server on :9090 wherever services may start, and 9090 is the service's metrics port.
# PROMTOOL=/path/to/promtool uses another build. The rule tests are written for promtool 2.x:
# Prometheus 3 made range selectors left-open, which moves some expectations by a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=deploy/prometheus
scrape_file="${1:-}"
if [[ -n "$scrape_file" && ! -r "$scrape_file" ]]; then
  echo "prometheus_check: cannot read scrape file $scrape_file" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

promtool="${PROMTOOL:-}"
if [[ -z "$promtool" ]]; then
  if command -v promtool >/dev/null 2>&1; then
    promtool=$(command -v promtool)
  else
    echo "promtool missing: taking it from Debian's prometheus package"
    apt-get update -qq
    mkdir "$work/deb"
    # apt downloads as user _apt when it can write there (otherwise as root, with a warning).
    chmod 0755 "$work"
    chown _apt "$work/deb" 2>/dev/null || true
    (cd "$work/deb" && apt-get download -qq prometheus)
    dpkg-deb -x "$work"/deb/prometheus_*.deb "$work/deb/root"
    install -m 0755 "$work/deb/root/usr/bin/promtool" /usr/local/bin/promtool
    promtool=/usr/local/bin/promtool
  fi
fi
"$promtool" --version | head -n 1

echo "--- promtool check rules $dir/alerts.yml"
"$promtool" check rules --lint=all --lint-fatal "$dir/alerts.yml"

echo "--- promtool test rules $dir/alerts_test.yml"
"$promtool" test rules "$dir/alerts_test.yml"

echo "--- promtool check config $dir/scrape.yml"
# Debian builds Prometheus without Kubernetes service discovery ("field kubernetes_sd_configs not
# found"). With such a promtool, check a copy whose discovery block is a static target instead:
# everything else (intervals, relabeling, the rule file) is still checked; the discovery block is not.
if ! out=$("$promtool" check config --lint=all --lint-fatal "$dir/scrape.yml" 2>&1); then
  if grep -q 'field kubernetes_sd_configs not found' <<<"$out"; then
    echo "this promtool has no Kubernetes discovery: checking scrape.yml with a static target in its place"
    cp "$dir/alerts.yml" "$work/alerts.yml"
    python3 - "$dir/scrape.yml" "$work/scrape.yml" <<'EOF'
import sys
text = open(sys.argv[1]).read()
k8s = "    kubernetes_sd_configs:\n      - role: pod\n"
if text.count(k8s) != 1:
    sys.exit("prometheus_check: scrape.yml no longer has exactly one '- role: pod' discovery block")
open(sys.argv[2], "w").write(text.replace(k8s, '    static_configs:\n      - targets: ["127.0.0.1:9090"]\n'))
EOF
    "$promtool" check config --lint=all --lint-fatal "$work/scrape.yml"
  else
    printf '%s\n' "$out" >&2
    exit 1
  fi
else
  printf '%s\n' "$out"
fi

if [[ -n "$scrape_file" ]]; then
  echo "--- promtool check metrics < $scrape_file"
  if ! grep -q '^[a-zA-Z_:]' "$scrape_file"; then
    echo "prometheus_check: $scrape_file has no sample at all" >&2
    exit 1
  fi
  # Exit 3 on lint problems, 1 on a parse error, 0 when clean; the problems go to stderr. Anything
  # printed at all is a failure, whatever the exit code.
  rc=0
  problems=$("$promtool" check metrics <"$scrape_file" 2>&1) || rc=$?
  if [[ $rc -ne 0 || -n "$problems" ]]; then
    printf '%s\n' "$problems" >&2
    echo "prometheus_check: promtool check metrics found problems in $scrape_file (exit $rc)" >&2
    exit 1
  fi
  echo "  SUCCESS: $(grep -c '^# TYPE ' "$scrape_file") metric families, no lint problem"
fi

echo "prometheus_check: all passed"
