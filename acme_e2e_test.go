package main

// The README's flagship end to end, with Pebble as Let's Encrypt: the
// leader's cert-manager obtains a certificate over ACME HTTP-01 while the
// name resolves to the follower, which forwards the challenge to the
// leader (deploy/examples/acme-forwarding.yaml) and then serves the
// certificate that kube-secret-sync copied to it.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// example returns deploy/examples/<file> edited as its comments tell a
// user to: replace holds pairs of an old string and its new one. An old
// string that the file lacks fails the test, so that an edit cannot stop
// applying unnoticed when an example changes.
func example(t *testing.T, file string, replace ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("deploy", "examples", file))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i+1 < len(replace); i += 2 {
		if !strings.Contains(s, replace[i]) {
			t.Fatalf("%s no longer holds %q, which the test replaces", file, replace[i])
		}
		s = strings.ReplaceAll(s, replace[i], replace[i+1])
	}
	return s
}

// TestCertManagerACMEThroughFollower: cluster a (the leader) runs
// cert-manager with the examples' ClusterIssuer and Certificate, pointed
// at Pebble. Pebble's DNS resolves the name to cluster b's entry point
// only, so its HTTP-01 validation reaches b, whose Ingress and Service from
// acme-forwarding.yaml forward it to a's entry point, where cert-manager's
// solver answers. The certificate is issued, reaches b, and b serves it: a
// TLS client that trusts only Pebble's root verifies the chain and the
// host name at b's entry point.
func TestCertManagerACMEThroughFollower(t *testing.T) {
	testenv.SkipShort(t)
	const (
		host       = "www.example.com" // the examples' name
		secretName = "www-example-com-tls"
		appReply   = "the application, served by cluster b"
	)
	e := newSyncEnv(t)
	ctx := t.Context()
	// Both entry points and cluster b's application listen on this
	// machine's address. Cluster b's entry point takes ports 80 and 443,
	// where Pebble validates and clients connect; a's takes a port of its
	// own, where a real leader's ingress would listen on 80 of its own
	// address.
	ip := hostAddress(t)
	followerHTTP, followerHTTPS := listen(t, ip, 80), listen(t, ip, 443)
	leaderHTTP := listen(t, ip, 0)
	leaderPort := strconv.Itoa(leaderHTTP.Addr().(*net.TCPAddr).Port)

	pebble, err := testenv.StartPebble(ctx, ip)
	if errors.Is(err, testenv.ErrNoPebble) {
		testenv.Missing(t, err)
	} else if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pebble.Stop)
	cmNS := testenv.Namespace(t, e.leader)
	startCertManager(t, e.leader, cmNS, "--acme-http01-solver-nameservers", pebble.DNSAddr, "--http01-solver-pods", ip)
	// kube-controller-manager would create it; the solver Pod needs it.
	if _, err := e.leader.Clientset.CoreV1().ServiceAccounts(e.ns).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Cluster b: the namespace, the application that its Ingress serves
	// at /, and the example's forwarding of challenges to a's entry point.
	if _, err := e.follower.Clientset.CoreV1().Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	serveApp(t, e.follower.Clientset, e.ns, ip, appReply)
	mustApplyYAML(t, e.follower, example(t, "acme-forwarding.yaml",
		"namespace: web", "namespace: "+e.ns,
		"203.0.113.10", ip,
		"port: 80", "port: "+leaderPort))
	leaderIngress := serveIngress(t, "cluster a's ingress", e.leader.Clientset, []net.Listener{leaderHTTP}, nil)
	followerIngress := serveIngress(t, "cluster b's ingress", e.follower.Clientset, []net.Listener{followerHTTP}, []net.Listener{followerHTTPS})

	// Cluster a: the examples' ClusterIssuer and Certificate. Pebble plays
	// Let's Encrypt; its directory's certificate comes from a test CA,
	// which the ClusterIssuer must trust, as for any private ACME server.
	mustApplyYAML(t, e.leader, example(t, "cluster-issuer.yaml",
		"server: https://acme-v02.api.letsencrypt.org/directory",
		"server: "+pebble.DirectoryURL+"\n    caBundle: "+base64.StdEncoding.EncodeToString(pebble.CABundle)))
	start := time.Now()
	mustApplyYAML(t, e.leader, example(t, "certificate.yaml", "namespace: web", "namespace: "+e.ns))
	e.startPair()

	var issued *corev1.Secret
	eventually(t, 2*time.Minute, func() error {
		s, err := e.secrets(e.leader).Get(ctx, secretName, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("not issued yet: %w", err)
		}
		issued = s
		return nil
	})
	t.Logf("Pebble issued the certificate in %v", time.Since(start).Round(time.Millisecond))
	e.waitSynced(secretName)

	// Pebble's validation came in through b and was answered by a.
	challenge := func(r routedRequest) bool {
		return r.Host == host && strings.HasPrefix(r.Path, "/.well-known/acme-challenge/") &&
			strings.HasPrefix(r.UserAgent, "LetsEncrypt-Pebble-VA") && r.Status == http.StatusOK
	}
	if !slices.ContainsFunc(followerIngress.requests(), func(r routedRequest) bool { return challenge(r) && r.Backend == e.ns+"/acme-leader" }) {
		t.Errorf("cluster b did not forward Pebble's validation to the leader; it served %+v", followerIngress.requests())
	}
	if !slices.ContainsFunc(leaderIngress.requests(), func(r routedRequest) bool {
		return challenge(r) && strings.HasPrefix(r.Backend, e.ns+"/cm-acme-http-solver-")
	}) {
		t.Errorf("cluster a's solver did not answer Pebble's validation; a served %+v", leaderIngress.requests())
	}

	// b serves the certificate to a client that trusts only Pebble's root.
	root, err := pebble.Root(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(root) {
		t.Fatalf("Pebble's root is not PEM: %q", root)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort(ip, "443"))
		},
	}}
	resp, err := client.Get("https://" + host + "/")
	if err != nil {
		t.Fatalf("TLS to cluster b's entry point for %s: %v", host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || string(body) != appReply {
		t.Errorf("https://%s/ at cluster b: %s %q; want 200 %q", host, resp.Status, body, appReply)
	}
	leaf, _ := pem.Decode(issued.Data["tls.crt"])
	if leaf == nil || !bytes.Equal(resp.TLS.PeerCertificates[0].Raw, leaf.Bytes) {
		t.Errorf("cluster b served a certificate other than the one cert-manager issued in a")
	}
	t.Logf("cluster b serves %s with %q, issued by %q", host, resp.TLS.PeerCertificates[0].Subject, resp.TLS.PeerCertificates[0].Issuer)
}

// serveApp runs the application of the examples' Ingress (Service "web",
// port "http") on ip, replying reply to every request, and publishes its
// address in the Service's EndpointSlice.
func serveApp(t *testing.T, cs kubernetes.Interface, ns, ip, reply string) {
	t.Helper()
	l := listen(t, ip, 0)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, reply)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })

	port := int32(l.Addr().(*net.TCPAddr).Port)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
	if _, err := cs.CoreV1().Services(ns).Create(t.Context(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{
			discoveryv1.LabelServiceName: "web",
			discoveryv1.LabelManagedBy:   "kube-secret-sync-test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: &port, Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(t.Context(), slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
