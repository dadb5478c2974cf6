package main

// A stand-in for a cluster's ingress controller, which a cluster made of a
// bare kube-apiserver lacks, for the tests of the README's flagship: ACME
// HTTP-01 challenges that reach a follower are forwarded to the leader.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// ingressClass is the class the stand-in serves, the examples' class.
const ingressClass = "nginx"

// ingressStandIn routes requests as ingress-nginx does, by the cluster's
// own objects, read afresh for each request: the Ingresses of its class
// (host, then the longest matching path), the backend Service's port, and
// that Service's EndpointSlices, whose ready addresses it proxies to with
// the original Host header. Over TLS it serves the certificate of the
// Secret that an Ingress names for the requested host.
type ingressStandIn struct {
	name string
	cs   kubernetes.Interface

	mu  sync.Mutex
	log []routedRequest
}

// routedRequest is one request the stand-in served.
type routedRequest struct {
	Host, Path, UserAgent string
	Backend               string // namespace/service, or "" when none matched
	Status                int
}

// serveIngress starts an ingress stand-in for the cluster of cs on each
// of listeners, until the test ends: over TLS on those in tlsListeners.
func serveIngress(t *testing.T, name string, cs kubernetes.Interface, listeners, tlsListeners []net.Listener) *ingressStandIn {
	g := &ingressStandIn{name: name, cs: cs}
	serve := func(l net.Listener, tlsConfig *tls.Config) {
		srv := &http.Server{Handler: g, TLSConfig: tlsConfig, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			var err error
			if tlsConfig != nil {
				err = srv.ServeTLS(l, "", "")
			} else {
				err = srv.Serve(l)
			}
			if !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("ingress stand-in %s on %s: %v", name, l.Addr(), err)
			}
		}()
		t.Cleanup(func() { _ = srv.Close() })
	}
	for _, l := range listeners {
		serve(l, nil)
	}
	for _, l := range tlsListeners {
		serve(l, &tls.Config{GetCertificate: g.certificate, MinVersion: tls.VersionTLS12})
	}
	return g
}

func (g *ingressStandIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req := routedRequest{Host: hostOnly(r.Host), Path: r.URL.Path, UserAgent: r.UserAgent()}
	defer func() {
		g.mu.Lock()
		g.log = append(g.log, req)
		g.mu.Unlock()
	}()
	backend, target, err := g.route(r.Context(), req.Host, req.Path)
	req.Backend = backend
	if err != nil {
		req.Status = http.StatusNotFound
		if backend != "" {
			req.Status = http.StatusServiceUnavailable
		}
		http.Error(w, err.Error(), req.Status)
		return
	}
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.SetXForwarded()
			pr.Out.Host = pr.In.Host
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			http.Error(w, fmt.Sprintf("%s: %v", g.name, err), http.StatusBadGateway)
		},
	}
	proxy.ServeHTTP(rec, r)
	req.Status = rec.status
}

// requests returns what the stand-in has served so far.
func (g *ingressStandIn) requests() []routedRequest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.log)
}

// route finds the backend for host and path (namespace/service) and the
// address to proxy to.
func (g *ingressStandIn) route(ctx context.Context, host, path string) (string, *url.URL, error) {
	ings, err := g.cs.NetworkingV1().Ingresses("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", nil, err
	}
	var best *networkingv1.HTTPIngressPath
	var ns string
	for _, ing := range ings.Items {
		if ptr.Deref(ing.Spec.IngressClassName, "") != ingressClass {
			continue
		}
		for _, rule := range ing.Spec.Rules {
			if rule.Host != host || rule.HTTP == nil {
				continue
			}
			for _, p := range rule.HTTP.Paths {
				if pathMatches(p, path) && (best == nil || len(p.Path) > len(best.Path)) {
					best, ns = &p, ing.Namespace
				}
			}
		}
	}
	if best == nil || best.Backend.Service == nil {
		return "", nil, fmt.Errorf("%s: no Ingress of class %s routes %s%s", g.name, ingressClass, host, path)
	}
	svc := best.Backend.Service
	backend := ns + "/" + svc.Name
	addr, err := g.endpoint(ctx, ns, svc)
	if err != nil {
		return backend, nil, fmt.Errorf("%s: backend %s: %w", g.name, backend, err)
	}
	return backend, &url.URL{Scheme: "http", Host: addr}, nil
}

// pathMatches: Exact is exact, Prefix matches whole path elements, and
// ImplementationSpecific is a plain prefix, as in ingress-nginx.
func pathMatches(p networkingv1.HTTPIngressPath, path string) bool {
	switch ptr.Deref(p.PathType, networkingv1.PathTypeImplementationSpecific) {
	case networkingv1.PathTypeExact:
		return path == p.Path
	case networkingv1.PathTypePrefix:
		prefix := strings.TrimSuffix(p.Path, "/")
		return path == prefix || strings.HasPrefix(path, prefix+"/")
	default:
		return strings.HasPrefix(path, p.Path)
	}
}

// endpoint returns a ready address (host:port) of the Service's port that
// backend names, from the Service's EndpointSlices.
func (g *ingressStandIn) endpoint(ctx context.Context, ns string, backend *networkingv1.IngressServiceBackend) (string, error) {
	svc, err := g.cs.CoreV1().Services(ns).Get(ctx, backend.Name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	portName, found := "", false
	for _, sp := range svc.Spec.Ports {
		if (backend.Port.Name != "" && sp.Name == backend.Port.Name) || (backend.Port.Number != 0 && sp.Port == backend.Port.Number) {
			portName, found = sp.Name, true
		}
	}
	if !found {
		return "", fmt.Errorf("the Service has no port %v", backend.Port)
	}
	eps, err := g.cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + backend.Name})
	if err != nil {
		return "", err
	}
	for _, sl := range eps.Items {
		for _, port := range sl.Ports {
			if ptr.Deref(port.Name, "") != portName || port.Port == nil {
				continue
			}
			for _, ep := range sl.Endpoints {
				if ptr.Deref(ep.Conditions.Ready, true) && len(ep.Addresses) > 0 {
					return net.JoinHostPort(ep.Addresses[0], fmt.Sprint(*port.Port)), nil
				}
			}
		}
	}
	return "", fmt.Errorf("no ready endpoint for port %q", portName)
}

// certificate serves, for the requested host, the certificate of the
// Secret that an Ingress of the class names in its tls section.
func (g *ingressStandIn) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	ctx := hello.Context()
	ings, err := g.cs.NetworkingV1().Ingresses("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for _, ing := range ings.Items {
		if ptr.Deref(ing.Spec.IngressClassName, "") != ingressClass {
			continue
		}
		for _, t := range ing.Spec.TLS {
			if !slices.Contains(t.Hosts, hello.ServerName) {
				continue
			}
			s, err := g.cs.CoreV1().Secrets(ing.Namespace).Get(ctx, t.SecretName, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("%s: TLS Secret %s/%s: %w", g.name, ing.Namespace, t.SecretName, err)
			}
			c, err := tls.X509KeyPair(s.Data["tls.crt"], s.Data["tls.key"])
			return &c, err
		}
	}
	return nil, fmt.Errorf("%s: no Ingress has a certificate for %q", g.name, hello.ServerName)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// hostAddress returns an IPv4 address of this machine other than
// loopback: Kubernetes refuses loopback addresses in EndpointSlices (and
// Endpoints), so the entry points and backends that they name listen there.
func hostAddress(t *testing.T) string {
	t.Helper()
	ifaces, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, iface := range ifaces {
		if iface.Flags&net.FlagUp == 0 || iface.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := iface.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
				return n.IP.String()
			}
		}
	}
	testenv.Missing(t, errors.New("this machine has no IPv4 address other than loopback, which EndpointSlices refuse"))
	return ""
}

// listen listens on ip:port until the test ends. Ports below 1024, which
// ACME validation uses (80), need root or a lower
// net.ipv4.ip_unprivileged_port_start.
func listen(t *testing.T, ip string, port int) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		if errors.Is(err, syscall.EACCES) {
			testenv.Missing(t, fmt.Errorf("%w (binding ports below 1024 needs root or a lower net.ipv4.ip_unprivileged_port_start)", err))
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}
