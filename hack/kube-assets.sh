#!/usr/bin/env bash
# Builds kube-apiserver, etcd and kubectl from the module pinned in hack/kube-assets/
# into a cache directory outside the repository, and prints that directory.
#
# The directory name is derived from hack/kube-assets/go.mod and go.sum, so a
# change of Kubernetes version builds afresh while an unchanged pin is reused
# (CI on a reused machine skips the 3-4 minute build). The build goes to a
# temporary directory that is renamed into place, so an interrupted build
# never leaves a half-filled cache entry behind.
#
# Environment: KSS_CACHE_DIR overrides the cache root
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/kube-secret-sync).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod="$here/kube-assets"
cache_root=${KSS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-secret-sync}
key=$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-16)
dest="$cache_root/kube-assets-$key"

if [[ -x "$dest/kube-apiserver" && -x "$dest/etcd" && -x "$dest/kubectl" ]]; then
	echo "$dest"
	exit 0
fi

k8s_version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$mod/go.mod")
major=${k8s_version#v}; major=${major%%.*}
minor=${k8s_version#v*.}; minor=${minor%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"

mkdir -p "$cache_root"
tmp=$(mktemp -d "$cache_root/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "building kube-apiserver, etcd and kubectl $k8s_version into $dest (first time only, a few minutes)" >&2
(
	cd "$mod"
	# -mod=mod is not needed: go.sum is committed and complete.
	CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/bin/" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3
)
mv "$tmp/bin/kube-apiserver" "$tmp/kube-apiserver"
mv "$tmp/bin/kubectl" "$tmp/kubectl"
# etcd's main package is named "server", so go build names its binary after it.
mv "$tmp/bin/server" "$tmp/etcd"
rmdir "$tmp/bin"
echo "$k8s_version" > "$tmp/VERSION"
chmod 0755 "$tmp"

# Another build may have finished first; theirs is as good as ours.
if ! mv -T "$tmp" "$dest" 2>/dev/null; then
	[[ -x "$dest/kube-apiserver" ]] || { echo "kube-assets: cannot install $dest" >&2; exit 1; }
fi
trap - EXIT
echo "$dest"
