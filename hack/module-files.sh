#!/usr/bin/env bash
# Usage: hack/module-files.sh MODULE VERSION SUBDIR
# Prints the directory SUBDIR of the Go module MODULE@VERSION, checking that
# it holds YAML files. The files come from the Go module proxy, the one
# source of downloads this project relies on; they land in the Go module
# cache (outside the repository, read-only, verified against the checksum
# database), so later runs reuse them without a download.
set -euo pipefail

module=$1 version=$2 subdir=$3

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
	echo "module-files: go mod download $module@$version failed:" >&2
	echo "$json" | sed -n 's/^[[:space:]]*"Error": //p' >&2
	exit 1
}
# "Dir": "/root/go/pkg/mod/github.com/cert-manager/cert-manager@v1.21.1",
dir=$(echo "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
files="$dir/$subdir"
if ! compgen -G "$files/*.yaml" >/dev/null; then
	echo "module-files: no YAML files in $files" >&2
	exit 1
fi
echo "$files"
