package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// TestSubcommands runs the real binary's keygen, migrate and rotate-key.
func TestSubcommands(t *testing.T) {
	testenv.SkipShort(t)
	bin := buildBinary(t)
	run := func(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
		return runBinary(t, bin, env, args...)
	}

	t.Run("keygen", func(t *testing.T) {
		a, _, code := run(t, nil, "keygen")
		b, _, _ := run(t, nil, "keygen")
		if code != 0 || len(a) != 33 || !strings.HasSuffix(a, "\n") {
			t.Fatalf("keygen: exit %d, stdout %q; want 32 characters and a newline", code, a)
		}
		if a == b {
			t.Error("two keygen runs printed the same key")
		}
		if _, err := NewKeys(strings.TrimSpace(a)); err != nil {
			t.Errorf("keygen's key is not a valid ENCRYPTION_KEY: %v", err)
		}
	})

	dsn := withPassword(testenv.PostgresDSN(t), testPassword)
	t.Run("migrate", func(t *testing.T) {
		if _, stderr, code := run(t, nil, "migrate"); code != 2 || !strings.Contains(stderr, "DSN") {
			t.Errorf("migrate without DSN: exit %d, stderr %q; want 2 naming DSN", code, stderr)
		}
		// Only DSN: no key is needed to migrate.
		_, stderr, code := run(t, []string{"DSN=" + dsn}, "migrate")
		if code != 0 {
			t.Fatalf("migrate: exit %d\n%s", code, stderr)
		}
		if strings.Contains(stderr, testPassword) {
			t.Error("migrate logged the DSN password")
		}
		store, err := OpenStore(t.Context(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		if v, err := store.MaxVersion(t.Context()); err != nil || v != 0 {
			t.Errorf("after migrate, MaxVersion = %d, %v; want 0, nil", v, err)
		}
	})
	t.Run("rotate-key with nothing to rotate", func(t *testing.T) {
		_, stderr, code := run(t, []string{"DSN=" + dsn, "ENCRYPTION_KEY=" + testKey}, "rotate-key")
		if code != 0 || !strings.Contains(stderr, "rotation pass done") {
			t.Errorf("rotate-key: exit %d\n%s", code, stderr)
		}
		if strings.Contains(stderr, testPassword) || strings.Contains(stderr, testKey) {
			t.Error("rotate-key logged the DSN password or the key")
		}
	})
	t.Run("two subcommands", func(t *testing.T) {
		if _, _, code := run(t, nil, "keygen", "migrate"); code != 2 {
			t.Errorf("keygen migrate: exit %d; want 2", code)
		}
	})
}

// TestMetricsAddrInUseStopsAtStart: a METRICS_ADDR that cannot be bound
// stops the process at start (exit 1, naming the variable) rather than
// leaving it running without probes.
func TestMetricsAddrInUseStopsAtStart(t *testing.T) {
	bin := buildBinary(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	const minimal = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
	if err := os.WriteFile(kubeconfig, []byte(minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runBinary(t, bin, []string{"DSN=postgres://u:" + testPassword + "@127.0.0.1:1/db", "ENCRYPTION_KEY=" + testKey,
		"KUBECONFIG=" + kubeconfig, "METRICS_ADDR=" + ln.Addr().String(), "LEADER_ELECTION=false"})
	if code != 1 || !strings.Contains(stderr, "METRICS_ADDR") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("with METRICS_ADDR in use: exit %d, stderr %q; want 1 and one line naming METRICS_ADDR", code, stderr)
	}
}
