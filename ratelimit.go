package main

// The Kubernetes client's rate limit. The ecosystem's convention today
// (controller-runtime since 0.21, Flux, cert-manager): no client-side limit
// when the API server has API Priority and Fairness, which protects it
// better than any client can (on by default since Kubernetes 1.20, GA in
// 1.29); its 429s carry Retry-After, which client-go honours (up to 10
// retries per request). A fixed KUBE_QPS keeps a client limit.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/rest"
)

// Client rate limits without API Priority and Fairness (KUBE_QPS=0 against
// an API server that has none, or whose probe failed).
const (
	fallbackQPS   = 100
	fallbackBurst = 200
)

// apfHeader is set by an API server with API Priority and Fairness on
// every response it classified (k8s.io/api/flowcontrol/v1
// ResponseHeaderMatchedPriorityLevelConfigurationUID).
const apfHeader = "X-Kubernetes-PF-PriorityLevel-UID"

// setClientLimits sets rc's rate limit from KUBE_QPS and KUBE_BURST,
// probing the API server for API Priority and Fairness when KUBE_QPS is 0.
// A failed probe (the API server not up yet) keeps a client limit, and
// says so.
func setClientLimits(ctx context.Context, rc *rest.Config, cfg *Config, log *logrus.Entry) {
	qps, burst := cfg.KubeQPS, cfg.KubeBurst
	why := "KUBE_QPS"
	if qps == 0 {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		apf, err := hasPriorityAndFairness(ctx, rc)
		switch {
		case err != nil:
			qps, why = fallbackQPS, "the API server could not be asked whether it has API Priority and Fairness"
			log.WithError(err).Warn("Kubernetes client limited to 100 requests/s: " + why)
		case apf:
			qps, why = -1, "the API server has API Priority and Fairness"
		default:
			qps, why = fallbackQPS, "the API server has no API Priority and Fairness"
		}
	}
	if qps < 0 {
		rc.QPS, rc.Burst = -1, -1
		log.WithField("reason", why).Info("Kubernetes client without a client-side rate limit")
		return
	}
	if burst == 0 {
		burst = max(int(2*qps), 1)
	}
	rc.QPS, rc.Burst = qps, burst
	log.WithFields(logrus.Fields{"qps": qps, "burst": burst, "reason": why}).Info("Kubernetes client rate limit")
}

// hasPriorityAndFairness asks the API server whether it classified a
// request: the probe of Flux and cert-manager
// (sigs.k8s.io/cli-utils/pkg/flowcontrol.IsEnabled), but with GET /version,
// which every client may (system:public-info-viewer), instead of their
// HEAD /livez/ping, which is refused as forbidden to a ServiceAccount (the
// header comes anyway, but the refusal shows in audit logs).
func hasPriorityAndFairness(ctx context.Context, rc *rest.Config) (bool, error) {
	rt, err := rest.TransportFor(rc)
	if err != nil {
		return false, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(rc.Host, "/")+"/version", nil)
	if err != nil {
		return false, err
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return false, fmt.Errorf("probe the API server: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
	_ = resp.Body.Close()
	return resp.Header.Get(apfHeader) != "", nil
}
