#!/usr/bin/env bash
# Builds promtool, Prometheus's own rule checker and rule unit-test runner,
# from the Go module proxy into a cache directory outside the repository and
# prints the binary's path. TestAlertRules checks and evaluates the shipped
# PrometheusRule with it. A cold build takes about 9 minutes on 2 busy
# cores; later runs reuse it (hack/go-install.sh).
#
# Environment: PROMETHEUS_VERSION (the Go module's version, default
# v0.316.0, which is Prometheus 3.16); KSS_CACHE_DIR overrides the cache
# root (default ${XDG_CACHE_HOME:-$HOME/.cache}/kube-secret-sync).
set -euo pipefail
dir=$("$(dirname "${BASH_SOURCE[0]}")/go-install.sh" promtool "${PROMETHEUS_VERSION:-v0.316.0}" github.com/prometheus/prometheus/cmd/promtool)
echo "$dir/promtool"
