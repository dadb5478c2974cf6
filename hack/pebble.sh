#!/usr/bin/env bash
# Builds Pebble, Let's Encrypt's ACME test server, and pebble-challtestsrv,
# its companion DNS server, from the Go module proxy into a cache directory
# outside the repository, and prints that directory (holding `pebble` and
# `pebble-challtestsrv`). The tests that issue certificates over ACME
# HTTP-01 run them.
#
# The directory is named after the version, so a build is reused; it goes
# to a temporary directory renamed into place, so an interrupted build never
# leaves a half-filled cache entry behind. A cold build (modules downloaded
# too) takes about 30 seconds on 2 cores.
#
# Environment: PEBBLE_VERSION (default v2.10.3); KSS_CACHE_DIR overrides the
# cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/kube-secret-sync).
set -euo pipefail

version=${PEBBLE_VERSION:-v2.10.3}
module=github.com/letsencrypt/pebble/v2
cache_root=${KSS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-secret-sync}
dest="$cache_root/pebble-$version"

if [[ -x "$dest/pebble" && -x "$dest/pebble-challtestsrv" ]]; then
	echo "$dest"
	exit 0
fi
mkdir -p "$cache_root"
tmp=$(mktemp -d "$cache_root/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building pebble $version into $dest (first time only, about 30 seconds)" >&2
# Outside any module or workspace, as `go install mod@version` wants; the
# caller's -mod=... (refused there) is dropped, other GOFLAGS kept.
goflags=()
for f in ${GOFLAGS:-}; do
	[[ $f == -mod=* ]] || goflags+=("$f")
done
(cd "$tmp" && GOWORK=off GOFLAGS="${goflags[*]}" GOBIN="$tmp/bin" CGO_ENABLED=0 \
	go install -trimpath -ldflags "-s -w" "$module/cmd/pebble@$version" "$module/cmd/pebble-challtestsrv@$version")
rm -rf "$dest"
mv "$tmp/bin" "$dest"
echo "$dest"
