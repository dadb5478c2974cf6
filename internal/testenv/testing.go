package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Servers are shared by the tests of one package and started on first use;
// tests stay isolated through a fresh database or namespace each. Run
// stops them when the package's tests end.
var shared struct {
	mu       sync.Mutex
	pg       *Postgres
	pgErr    error
	clusters []*Cluster
}

// Run is the body of a package's TestMain: it runs the tests, then stops
// every server they started.
func Run(m *testing.M) int {
	code := m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range shared.clusters {
		wg.Go(c.Stop)
	}
	wg.Go(shared.pg.Stop)
	wg.Wait()
	return code
}

// SkipShort skips tb under `go test -short`: a test that needs a real
// server is an end-to-end test, and -short runs the unit tests only. Every
// helper here that starts or hands out a server calls it first, so such a
// test never starts one under -short. Unlike Missing, it skips in CI too:
// -short is asked for, not a component that is absent.
func SkipShort(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("end-to-end: needs real servers; skipped with -short")
	}
}

// Missing reports a component a test needs but cannot have. In CI
// (CI=true) that is a failure: an integration test must never skip there.
// Elsewhere the test is skipped with a hint at the command that provides it.
func Missing(tb testing.TB, err error) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("CI=true and a required component is missing: %v", err)
	}
	tb.Skipf("skipping: %v (make test provides it)", err)
}

// PostgresDSN returns the DSN of a fresh, empty database on the package's
// shared PostgreSQL server.
func PostgresDSN(tb testing.TB) string {
	tb.Helper()
	return PostgresDSNWith(tb, "")
}

// PostgresDSNWith is PostgresDSN for a database created with options (see
// Postgres.CreateDatabaseWith).
func PostgresDSNWith(tb testing.TB, options string) string {
	tb.Helper()
	SkipShort(tb)
	shared.mu.Lock()
	if shared.pg == nil && shared.pgErr == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		shared.pg, shared.pgErr = StartPostgres(ctx)
		cancel()
	}
	pg, err := shared.pg, shared.pgErr
	shared.mu.Unlock()
	if err != nil {
		Missing(tb, err)
	}
	dsn, err := pg.CreateDatabaseWith(tb.Context(), tb.Name(), options)
	if err != nil {
		tb.Fatal(err)
	}
	return dsn
}

// Clusters returns n independent clusters shared by the package's tests,
// starting the ones not yet running. Use Namespace for isolation.
func Clusters(tb testing.TB, n int) []*Cluster {
	tb.Helper()
	SkipShort(tb)
	assets, err := KubeAssetsDir()
	if err != nil {
		Missing(tb, err)
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	start := len(shared.clusters)
	if start < n {
		started := make([]*Cluster, n-start)
		errs := make([]error, n-start)
		var wg sync.WaitGroup
		for i := range started {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				defer cancel()
				started[i], errs[i] = StartCluster(ctx, assets, fmt.Sprintf("cluster-%c", 'a'+start+i))
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				for _, c := range started {
					c.Stop()
				}
				tb.Fatalf("start cluster %d: %v", start+i, err)
			}
		}
		shared.clusters = append(shared.clusters, started...)
	}
	return append([]*Cluster(nil), shared.clusters[:n]...)
}

// Namespace creates a namespace with a unique name derived from the test's
// name in c, and deletes it when the test ends.
func Namespace(tb testing.TB, c *Cluster) string {
	tb.Helper()
	name := UniqueName(tb)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.Clientset.CoreV1().Namespaces().Create(tb.Context(), ns, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("create namespace %s in %s: %v", name, c.Name, err)
	}
	tb.Cleanup(func() { DeleteNamespace(tb, c, name) })
	return name
}

// DeleteNamespace deletes namespace name in c if it exists. Without a
// kube-controller-manager it stays Terminating, which is harmless: names
// are never reused.
func DeleteNamespace(tb testing.TB, c *Cluster, name string) {
	tb.Helper()
	err := c.Clientset.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		tb.Errorf("delete namespace %s in %s: %v", name, c.Name, err)
	}
}

// UniqueName returns a DNS-label name derived from the test's name with a
// random suffix, so that tests sharing a cluster never collide.
func UniqueName(tb testing.TB) string {
	var b strings.Builder
	for _, r := range strings.ToLower(tb.Name()) {
		if b.Len() >= 40 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
	}
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	return strings.Trim(b.String(), "-") + "-" + hex.EncodeToString(suffix)
}

// MustConnect opens a connection to dsn, closed when the test ends.
func MustConnect(tb testing.TB, dsn string) *pgx.Conn {
	tb.Helper()
	conn, err := pgx.Connect(tb.Context(), dsn)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// MustKubectl runs kubectl (Kubectl) against the cluster of kubeconfig
// (none: the command needs no cluster) and returns its output; a failure
// fails tb.
func MustKubectl(tb testing.TB, kubeconfig string, args ...string) (stdout, stderr string) {
	tb.Helper()
	kubectl, err := Kubectl()
	if err != nil {
		Missing(tb, err)
	}
	if kubeconfig != "" {
		// A private discovery cache: each cluster is new, and the user's
		// ~/.kube stays untouched.
		args = append([]string{"--kubeconfig", kubeconfig, "--cache-dir", tb.TempDir()}, args...)
	}
	// Not tb.Context(): a cleanup (which deletes what a test applied) runs
	// once it is canceled.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var outBuf, errBuf bytes.Buffer
	cmd := exec.CommandContext(ctx, kubectl, args...)
	cmd.Stdout, cmd.Stderr = &outBuf, &errBuf
	if err := cmd.Run(); err != nil {
		tb.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, outBuf.String(), errBuf.String())
	}
	return outBuf.String(), errBuf.String()
}
