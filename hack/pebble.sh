#!/usr/bin/env bash
# Builds Pebble, Let's Encrypt's ACME test server, and pebble-challtestsrv,
# its companion DNS server, from the Go module proxy into a cache directory
# outside the repository, and prints that directory (holding `pebble` and
# `pebble-challtestsrv`). The tests that issue certificates over ACME
# HTTP-01 run them. A cold build (modules downloaded too) takes about 30
# seconds on 2 cores; later runs reuse it (hack/go-install.sh).
#
# Environment: PEBBLE_VERSION (default v2.10.3); KSS_CACHE_DIR overrides the
# cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/kube-secret-sync).
set -euo pipefail
module=github.com/letsencrypt/pebble/v2
exec "$(dirname "${BASH_SOURCE[0]}")/go-install.sh" pebble "${PEBBLE_VERSION:-v2.10.3}" "$module/cmd/pebble" "$module/cmd/pebble-challtestsrv"
