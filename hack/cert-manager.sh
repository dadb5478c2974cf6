#!/usr/bin/env bash
# Builds the real cert-manager controllers (hack/cert-manager, a module of
# its own that wires them from cert-manager's public packages) into a cache
# directory outside the repository, and prints the binary's path.
#
# The directory name is derived from hack/cert-manager/go.mod, go.sum and
# Go files, so an unchanged pin is reused (a cold build takes a few minutes
# on 2 cores). The build goes to a temporary file renamed into place, so an
# interrupted build never leaves a half-written binary behind.
#
# Environment: KSS_CACHE_DIR overrides the cache root
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/kube-secret-sync).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod="$here/cert-manager"
cache_root=${KSS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-secret-sync}
key=$(cat "$mod/go.mod" "$mod/go.sum" "$mod"/*.go | sha256sum | cut -c1-16)
dest="$cache_root/cert-manager-$key/cert-manager-controller"

if [[ -x "$dest" ]]; then
	echo "$dest"
	exit 0
fi
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp "$dest.build-XXXXXX")
trap 'rm -f "$tmp"' EXIT
echo "building the cert-manager controllers into $dest (first time only, a few minutes)" >&2
(cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp" .)
chmod 0755 "$tmp"
mv -f "$tmp" "$dest"
trap - EXIT
echo "$dest"
