package main

// The flagship with the real cert-manager controllers: cert-manager issues
// and renews a certificate in the leader's cluster, and every version of
// its Secret reaches the follower's.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// startCertManager installs cert-manager's CRDs into c and runs its
// controllers there until the test ends, with their ClusterIssuers'
// Secrets in namespace clusterNS and the further arguments args (see
// hack/cert-manager/main.go).
func startCertManager(t *testing.T, c *testenv.Cluster, clusterNS string, args ...string) {
	t.Helper()
	bin, err := testenv.CertManagerBinary()
	if err != nil {
		testenv.Missing(t, err)
	}
	var stderr bytes.Buffer
	crds := exec.CommandContext(t.Context(), "hack/cert-manager-crds.sh")
	crds.Stderr = &stderr
	dir, err := crds.Output()
	if err != nil {
		testenv.Missing(t, fmt.Errorf("cert-manager CRDs: hack/cert-manager-crds.sh: %v: %s", err, stderr.String()))
	}
	testenv.MustKubectl(t, c.Kubeconfig, "apply", "--server-side", "--field-manager=kss-test", "-f", strings.TrimSpace(string(dir)))
	testenv.MustKubectl(t, c.Kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/certificates.cert-manager.io", "crd/certificaterequests.cert-manager.io",
		"crd/issuers.cert-manager.io", "crd/clusterissuers.cert-manager.io")

	var out syncBuffer
	startBinary(t, bin, nil, &out, append([]string{"--kubeconfig", c.Kubeconfig, "--cluster-resource-namespace", clusterNS}, args...)...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cert-manager controllers:\n%s", tail(out.String(), 8000))
		}
	})
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// mustApplyYAML applies manifest to c.
func mustApplyYAML(t *testing.T, c *testenv.Cluster, manifest string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(file, []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.MustKubectl(t, c.Kubeconfig, "apply", "--server-side", "--field-manager=kss-test", "-f", file)
}

// TestCertManagerCAChain: cert-manager, with a SelfSigned ClusterIssuer, a
// CA Certificate and a CA ClusterIssuer from it, issues a leaf Certificate
// whose secretTemplate labels its Secret for syncing. The Secret reaches
// the follower byte for byte, and so does every renewal: a new key and
// certificate in the same Secret (same UID, label kept).
func TestCertManagerCAChain(t *testing.T) {
	testenv.SkipShort(t)
	e := newSyncEnv(t)
	cmNS := testenv.Namespace(t, e.leader)
	startCertManager(t, e.leader, cmNS)
	e.startPair()

	suffix := e.ns // ClusterIssuers are cluster-wide; the clusters are shared
	mustApplyYAML(t, e.leader, fmt.Sprintf(`
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: selfsigned-%[1]s}
spec: {selfSigned: {}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: test-ca, namespace: %[2]s}
spec:
  isCA: true
  commonName: kube-secret-sync test CA
  secretName: test-ca
  duration: 24h
  privateKey: {algorithm: ECDSA, size: 256}
  issuerRef: {name: selfsigned-%[1]s, kind: ClusterIssuer, group: cert-manager.io}
---
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: ca-%[1]s}
spec: {ca: {secretName: test-ca}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: web, namespace: %[3]s}
spec:
  secretName: web-tls
  dnsNames: [web.example.test]
  # Valid for cert-manager's webhook (duration >= 1h, renewBefore >= 5m),
  # and renewed every 10 seconds.
  duration: 1h
  renewBefore: 59m50s
  privateKey: {algorithm: ECDSA, size: 256, rotationPolicy: Always}
  secretTemplate:
    labels: {kube-secret-sync: "true"}
  issuerRef: {name: ca-%[1]s, kind: ClusterIssuer, group: cert-manager.io}
`, suffix, cmNS, e.ns))

	src, dst := e.secrets(e.leader), e.secrets(e.follower)
	first := e.waitSynced("web-tls")
	issued := mustGet(t, src, "web-tls")
	if len(issued.Data["tls.crt"]) == 0 || len(issued.Data["tls.key"]) == 0 || len(issued.Data["ca.crt"]) == 0 {
		t.Fatalf("cert-manager's Secret holds %v; want tls.crt, tls.key and ca.crt", keysOf(issued.Data))
	}
	if !bytes.Equal(first.Data["tls.crt"], issued.Data["tls.crt"]) {
		t.Fatal("the copy's certificate is not the leader's")
	}

	// Renewals: each new certificate is seen in a, then in b.
	const renewals = 4
	var latencies []time.Duration
	prev := issued
	for range renewals {
		var renewed []byte
		var seenInA time.Time
		eventually(t, time.Minute, func() error {
			s, err := src.Get(t.Context(), "web-tls", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if bytes.Equal(s.Data["tls.crt"], prev.Data["tls.crt"]) {
				return fmt.Errorf("not renewed yet")
			}
			if s.UID != issued.UID || s.Labels["kube-secret-sync"] != "true" {
				t.Fatalf("renewal replaced the Secret (UID %s -> %s) or dropped its label (%v)", issued.UID, s.UID, s.Labels)
			}
			if bytes.Equal(s.Data["tls.key"], prev.Data["tls.key"]) {
				t.Fatal("renewal kept the private key; rotationPolicy is Always")
			}
			renewed, seenInA, prev = s.Data["tls.crt"], time.Now(), s
			return nil
		})
		eventually(t, syncTimeout, func() error {
			c, err := dst.Get(t.Context(), "web-tls", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !bytes.Equal(c.Data["tls.crt"], renewed) {
				return fmt.Errorf("copy not renewed yet")
			}
			latencies = append(latencies, time.Since(seenInA))
			return nil
		})
	}
	// Byte for byte, including what only the last renewal wrote.
	e.waitSynced("web-tls")
	slices.Sort(latencies)
	t.Logf("cert-manager renewal reached the follower: p50 %v, p99 %v over %d renewals (%v)",
		latencies[len(latencies)/2].Round(time.Millisecond), latencies[len(latencies)-1].Round(time.Millisecond), len(latencies), latencies)
}
