#!/usr/bin/env bash
# Builds, or finds in the cache, everything make test runs beside the
# daemon (kube-apiserver and etcd, PostgreSQL, cert-manager, Pebble, Helm,
# promtool), all at once. On a cold machine these builds are most of a CI
# run, and one at a time each leaves a core idle while it downloads
# modules or links. The make targets then find them in the cache.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts=(kube-assets postgres cert-manager pebble helm promtool)
declare -A pids
for s in "${scripts[@]}"; do
	hack/"$s".sh >/dev/null &
	pids[$s]=$!
done
failed=()
for s in "${scripts[@]}"; do
	wait "${pids[$s]}" || failed+=("hack/$s.sh")
done
if ((${#failed[@]})); then
	echo "build-peers: failed: ${failed[*]}" >&2
	exit 1
fi
