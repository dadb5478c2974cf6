#!/usr/bin/env bash
# Usage: hack/go-install.sh NAME VERSION PACKAGE...
# Builds the commands PACKAGE@VERSION (each a Go main package, such as
# helm.sh/helm/v3/cmd/helm) from the Go module proxy into
# $cache_root/NAME-VERSION, outside the repository, and prints that
# directory. A build is reused; it goes to a temporary directory renamed
# into place, so an interrupted build never leaves a half-filled cache
# entry behind.
#
# Environment: KSS_CACHE_DIR overrides the cache root
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/kube-secret-sync).
set -euo pipefail

name=$1 version=$2
shift 2
cache_root=${KSS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-secret-sync}
dest="$cache_root/$name-$version"

complete=true
for pkg in "$@"; do
	[[ -x "$dest/$(basename "$pkg")" ]] || complete=false
done
if $complete; then
	echo "$dest"
	exit 0
fi
mkdir -p "$cache_root"
tmp=$(mktemp -d "$cache_root/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building $name $version into $dest (first time only)" >&2
# Outside any module or workspace, as `go install mod@version` wants; the
# caller's -mod=... (refused there) is dropped, other GOFLAGS kept.
goflags=()
for f in ${GOFLAGS:-}; do
	[[ $f == -mod=* ]] || goflags+=("$f")
done
pkgs=()
for pkg in "$@"; do
	pkgs+=("$pkg@$version")
done
(cd "$tmp" && GOWORK=off GOFLAGS="${goflags[*]}" GOBIN="$tmp/bin" CGO_ENABLED=0 \
	go install -trimpath -ldflags "-s -w" "${pkgs[@]}")
rm -rf "$dest"
mv "$tmp/bin" "$dest"
echo "$dest"
