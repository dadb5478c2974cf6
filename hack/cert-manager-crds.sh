#!/usr/bin/env bash
# Prints a directory holding cert-manager's CustomResourceDefinitions as plain
# YAML (deploy/crds/*.yaml of the cert-manager source), for tests that
# validate Certificate/ClusterIssuer manifests against a real API server:
#   kubectl apply --server-side -f "$(hack/cert-manager-crds.sh)"
#
# The module zip of github.com/cert-manager/cert-manager on the Go module
# proxy contains them (hack/module-files.sh).
#
# Environment: CERT_MANAGER_VERSION (default v1.21.1).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/module-files.sh" github.com/cert-manager/cert-manager "${CERT_MANAGER_VERSION:-v1.21.1}" deploy/crds
