package main

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// buildBinary builds the daemon as `make build` does, into a temp dir.
func buildBinary(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command to build the binary: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "kube-secret-sync")
	build := exec.CommandContext(t.Context(), goTool, "build", "-trimpath", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runBinary runs bin to completion with env and PATH only: nothing of the
// tester's environment (a KUBECONFIG, a DSN) may influence the result.
func runBinary(t *testing.T, bin string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("run %s: %v", bin, err)
	}
	return o.String(), e.String(), code
}

// TestMemoryLimitRatio: the Go runtime gets all but 64 MiB of a container's
// memory limit, and at least half of it.
func TestMemoryLimitRatio(t *testing.T) {
	for _, tt := range []struct {
		limit, want uint64
	}{
		{256 << 20, 192 << 20}, // the Deployment's
		{1 << 30, 960 << 20},
		{128 << 20, 64 << 20},
		{64 << 20, 32 << 20}, // half, not 0
	} {
		if got := uint64(float64(tt.limit) * memoryLimitRatio(tt.limit)); got != tt.want {
			t.Errorf("limit %d MiB: GOMEMLIMIT %d MiB; want %d MiB", tt.limit>>20, got>>20, tt.want>>20)
		}
	}
}

// TestClientAsksForNoCompression: the API server gzips a large list only
// when the client accepts it, and Go's transport accepts gzip unless told
// not to; the daemon's client must not (restConfig).
func TestClientAsksForNoCompression(t *testing.T) {
	encodings := make(chan string, 1)
	// TLS, as every API server speaks: client-go gives a client without
	// TLS settings Go's default transport, whatever rest.Config says.
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case encodings <- r.Header.Get("Accept-Encoding"):
		default:
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"kind":"SecretList","apiVersion":"v1","metadata":{},"items":[]}`))
	}))
	defer srv.Close()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "`+srv.URL+`", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	rc, err := restConfig(&Config{Kubeconfig: kubeconfig})
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Secrets("default").List(t.Context(), metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := <-encodings; strings.Contains(got, "gzip") {
		t.Fatalf("the daemon's client sent Accept-Encoding %q: the API server would gzip its lists", got)
	}
}

// TestLogTimestampsHaveMilliseconds: a first sync applies thousands of
// Secrets a second, so a log line's time says the millisecond.
func TestLogTimestampsHaveMilliseconds(t *testing.T) {
	stamp := regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)`)
	for _, pretty := range []string{"", "1"} {
		log := newLogger(&Config{Pretty: pretty})
		var buf bytes.Buffer
		log.Logger.SetOutput(&buf)
		log.Info("applied")
		if !stamp.Match(buf.Bytes()) {
			t.Errorf("PRETTY=%q: no timestamp with milliseconds in %q", pretty, buf.String())
		}
	}
}
