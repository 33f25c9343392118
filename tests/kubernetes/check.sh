#!/usr/bin/env bash
# Kubernetes manifests, checked offline (no cluster): every kustomization under deploy/kubernetes renders with
# `kubectl kustomize`, every rendered object passes kubernetes-validate (the API's own schemas, strict: an
# unknown or misspelt field fails) for the oldest and the newest Kubernetes the manifests target, and the
# invariants of invariants.py hold. Then the invariants are shown to catch what they guard against: known-bad
# edits of the rendered objects, and an overlay that sets the api's grace period below graceful_timeout.
# The Prometheus scrape job passes `promtool check config` when promtool is installed.
#
#   bash tests/kubernetes/check.sh          (.ci/run runs it; KUBERNETES_CHECK=skip leaves it out)
#
# Needs kubectl (with kustomize) and python3. kubernetes-validate is installed with pip into a virtualenv under
# ${XDG_CACHE_HOME:-~/.cache}/prefork-server/, once per version, never system-wide.
# Ends with "N passed, N failed"; exit status 0 only if nothing failed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/kubernetes
cd "$ROOT"
VALIDATE_VERSION=1.37.0
# 1.30: the preStop `sleep` action is on by default from there; 1.37: the newest schemas the validator bundles.
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.30.0 1.37.0"}
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/prefork-server/kubernetes-validate-$VALIDATE_VERSION
TMP=$(mktemp -d /tmp/kubernetes-check.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*"; }
finish() {
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
    exit
}

command -v kubectl >/dev/null || { fail "kubectl (with kustomize) is installed"; finish; }
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
    echo "installing kubernetes-validate $VALIDATE_VERSION into $VENV"
    rm -rf "$VENV"
    if ! { timeout 60 python3 -m venv "$VENV" &&
        timeout 300 "$VENV/bin/pip" install -q "kubernetes-validate==$VALIDATE_VERSION"; } >"$TMP/pip.log" 2>&1; then
        tail -20 "$TMP/pip.log"
        rm -rf "$VENV"
        fail "pip install kubernetes-validate"
        finish
    fi
fi
PYTHON=$VENV/bin/python

# Every kustomization: the base and each overlay.
for dir in $(find deploy/kubernetes -name kustomization.yaml -printf '%h\n' | sort); do
    name=${dir#deploy/kubernetes/}
    out=$TMP/$(echo "$name" | tr / -).yaml
    if ! timeout 60 kubectl kustomize "$dir" >"$out" 2>"$TMP/kustomize.log"; then
        cat "$TMP/kustomize.log"
        fail "$name: kubectl kustomize renders"
        continue
    fi
    pass "$name: kubectl kustomize renders ($(grep -c '^kind:' "$out") objects)"
    for version in $KUBE_VERSIONS; do
        if timeout 120 "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$out" \
            >"$TMP/validate.log" 2>&1; then
            pass "$name: every object is valid for Kubernetes $version (kubernetes-validate --strict)"
        else
            grep -v '^INFO' "$TMP/validate.log" | head -20
            fail "$name: every object is valid for Kubernetes $version (kubernetes-validate --strict)"
        fi
    done
    if timeout 60 "$PYTHON" "$HERE/invariants.py" "$ROOT" "$out" >"$TMP/invariants.log" 2>&1; then
        pass "$name: the invariants hold ($(grep -c '^PASS' "$TMP/invariants.log") checks)"
    else
        grep -v '^PASS\|passed, ' "$TMP/invariants.log"
        fail "$name: the invariants hold"
    fi
done

# The invariants catch what they guard against. First in the rendered objects: each known-bad edit must fail the
# invariant written for it.
production=$TMP/overlays-production.yaml
if timeout 60 "$PYTHON" "$HERE/invariants.py" "$ROOT" "$production" --mutations >"$TMP/mutations.log" 2>&1; then
    pass "the invariants catch each known-bad edit ($(grep -c '^PASS' "$TMP/mutations.log") edits)"
else
    grep -v '^PASS' "$TMP/mutations.log"
    fail "the invariants catch each known-bad edit"
fi
# Then as a later change would come: an overlay on top of production that shortens the api's grace period.
mkdir -p "$TMP/short-grace"
# kustomize takes resource directories by relative path only.
production_dir=$(python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' \
    "$ROOT/deploy/kubernetes/overlays/production" "$TMP/short-grace")
cat >"$TMP/short-grace/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $production_dir
patches:
  - target:
      kind: Deployment
      name: api
    patch: |-
      - op: replace
        path: /spec/template/spec/terminationGracePeriodSeconds
        value: 25
EOF
if timeout 60 kubectl kustomize "$TMP/short-grace" >"$TMP/short-grace.yaml" 2>"$TMP/kustomize.log" &&
    ! "$PYTHON" "$HERE/invariants.py" "$ROOT" "$TMP/short-grace.yaml" >"$TMP/short-grace.log" 2>&1 &&
    grep -q 'terminationGracePeriodSeconds 25 <= preStop 10 + graceful_timeout 30' "$TMP/short-grace.log"; then
    pass "an overlay setting the api's grace period (25 s) below preStop + graceful_timeout fails the invariants"
else
    cat "$TMP/kustomize.log" "$TMP/short-grace.log" 2>/dev/null | head -20
    fail "an overlay setting the api's grace period below preStop + graceful_timeout fails the invariants"
fi

# The Prometheus scrape job, as Prometheus would load it (invariants.py checks that it selects the api pods).
# Debian's promtool is built without Kubernetes service discovery, and so cannot load it.
if ! command -v promtool >/dev/null; then
    echo "promtool not installed: the scrape job is not loaded"
elif promtool check config deploy/kubernetes/prometheus/scrape-config.yml >"$TMP/promtool.log" 2>&1; then
    pass "deploy/kubernetes/prometheus/scrape-config.yml passes promtool check config"
elif grep -q 'field kubernetes_sd_configs not found' "$TMP/promtool.log"; then
    echo "promtool $(promtool --version 2>&1 | awk 'NR == 1 { print $3 }') has no Kubernetes service discovery:" \
        "the scrape job is not loaded"
else
    cat "$TMP/promtool.log"
    fail "deploy/kubernetes/prometheus/scrape-config.yml passes promtool check config"
fi
finish
