#!/usr/bin/env bash
# Prints a directory holding the Prometheus Operator's CustomResourceDefinitions
# (PrometheusRule, PodMonitor, ServiceMonitor, …) as plain YAML, for the
# tests that validate deploy/monitoring and the chart's monitoring objects
# against a real API server:
#   kubectl apply --server-side -f "$(hack/prometheus-operator-crds.sh)"
#
# The module zip of github.com/prometheus-operator/prometheus-operator on the
# Go module proxy contains them (example/prometheus-operator-crd,
# hack/module-files.sh).
#
# Environment: PROMETHEUS_OPERATOR_VERSION (default v0.89.0).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/module-files.sh" github.com/prometheus-operator/prometheus-operator \
	"${PROMETHEUS_OPERATOR_VERSION:-v0.89.0}" example/prometheus-operator-crd
