package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/rest"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// TestClientLimits: by default (KUBE_QPS=0) the daemon's Kubernetes client
// has no client-side rate limit against a real kube-apiserver, which has
// API Priority and Fairness; against a server without it, or one that
// cannot be asked, it keeps 100 requests/s; a set KUBE_QPS always wins.
func TestClientLimits(t *testing.T) {
	real := testenv.Clusters(t, 1)[0]
	noAPF := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer noAPF.Close()
	withAPF := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(apfHeader, "6e1a0b8c-0000-4000-8000-000000000000")
	}))
	defer withAPF.Close()
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()

	for _, tt := range []struct {
		name       string
		rc         *rest.Config
		qps        float32
		burst      int
		wantQPS    float32
		wantBurst  int
		wantLogged string
	}{
		{"real kube-apiserver, defaults", rest.CopyConfig(real.Config), 0, 0, -1, -1, "has API Priority and Fairness"},
		{"a server with API Priority and Fairness", &rest.Config{Host: withAPF.URL}, 0, 0, -1, -1, "has API Priority and Fairness"},
		{"a server without", &rest.Config{Host: noAPF.URL}, 0, 0, 100, 200, "has no API Priority and Fairness"},
		{"a server that cannot be asked", &rest.Config{Host: down.URL}, 0, 0, 100, 200, "could not be asked"},
		{"KUBE_QPS set, with API Priority and Fairness", rest.CopyConfig(real.Config), 20, 0, 20, 40, "KUBE_QPS"},
		{"KUBE_QPS and KUBE_BURST set", &rest.Config{Host: noAPF.URL}, 5, 7, 5, 7, "KUBE_QPS"},
		{"KUBE_QPS=-1", &rest.Config{Host: noAPF.URL}, -1, 0, -1, -1, "KUBE_QPS"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			l := logrus.New()
			l.SetOutput(&logs)
			setClientLimits(t.Context(), tt.rc, &Config{KubeQPS: tt.qps, KubeBurst: tt.burst}, logrus.NewEntry(l))
			if tt.rc.QPS != tt.wantQPS || tt.rc.Burst != tt.wantBurst {
				t.Errorf("QPS %g, burst %d; want %g, %d", tt.rc.QPS, tt.rc.Burst, tt.wantQPS, tt.wantBurst)
			}
			if !strings.Contains(logs.String(), tt.wantLogged) {
				t.Errorf("logged %q; want the reason %q", logs.String(), tt.wantLogged)
			}
		})
	}
}
