#!/usr/bin/env bash
# Builds Helm from the Go module proxy into a cache directory outside the
# repository and prints the binary's path. The chart tests
# (deploy/chart_test.go) render, lint and install charts/kube-secret-sync
# with it. A cold build (modules downloaded too) takes about 7 minutes on 2
# cores; later runs reuse it (hack/go-install.sh).
#
# A `go install` build carries no Kubernetes version of its own (it assumes
# 1.20), so callers pass --kube-version to helm template and helm lint.
#
# Environment: HELM_VERSION (default v3.22.0); KSS_CACHE_DIR overrides the
# cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/kube-secret-sync).
set -euo pipefail
dir=$("$(dirname "${BASH_SOURCE[0]}")/go-install.sh" helm "${HELM_VERSION:-v3.22.0}" helm.sh/helm/v3/cmd/helm)
echo "$dir/helm"
