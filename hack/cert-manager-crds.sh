#!/usr/bin/env bash
# Prints a directory holding cert-manager's CustomResourceDefinitions as plain
# YAML (deploy/crds/*.yaml of the cert-manager source), for tests that
# validate Certificate/ClusterIssuer manifests against a real API server:
#   kubectl apply --server-side -f "$(hack/cert-manager-crds.sh)"
#
# The files come from the Go module proxy, the one source of downloads this
# project relies on: the module zip of github.com/cert-manager/cert-manager
# contains them. They land in the Go module cache (outside the repository,
# read-only, verified against the checksum database), so later runs reuse
# them without a download.
#
# Environment: CERT_MANAGER_VERSION (default v1.21.1).
set -euo pipefail

version=${CERT_MANAGER_VERSION:-v1.21.1}
module=github.com/cert-manager/cert-manager

# Run outside any module or workspace: `go mod download mod@version` then
# neither reads nor touches a go.mod/go.sum, whatever the caller's cwd, and
# -mod=... in the caller's GOFLAGS (which go refuses outside a module) is
# dropped; other GOFLAGS are kept.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
goflags=()
for f in ${GOFLAGS:-}; do
	[[ $f == -mod=* ]] || goflags+=("$f")
done

json=$(cd "$tmp" && GOWORK=off GOFLAGS="${goflags[*]}" go mod download -json "$module@$version") || {
	echo "cert-manager-crds: go mod download $module@$version failed:" >&2
	echo "$json" | sed -n 's/^[[:space:]]*"Error": //p' >&2
	exit 1
}
# "Dir": "/root/go/pkg/mod/github.com/cert-manager/cert-manager@v1.21.1",
dir=$(echo "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
crds="$dir/deploy/crds"
if ! compgen -G "$crds/*.yaml" >/dev/null; then
	echo "cert-manager-crds: no CRD files in $crds" >&2
	exit 1
fi
echo "$crds"
