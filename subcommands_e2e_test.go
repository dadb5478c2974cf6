package main

import (
	"net"
	"os"
	"path/filepath"
	"slices"
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

// TestExitCodes: the exit codes of the README's table that need no
// server. A setting that is found invalid only when it is used at start (an
// address that cannot be bound, a KUBECONFIG that cannot be loaded) stops
// the process like any invalid value: exit 2 and one line that names the
// variable, rather than a process left running without probes.
func TestExitCodes(t *testing.T) {
	bin := buildBinary(t)
	inUse, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inUse.Close()
	dir := t.TempDir()
	kubeconfig, garbage := filepath.Join(dir, "kubeconfig"), filepath.Join(dir, "garbage")
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
	if err := os.WriteFile(garbage, []byte("this: [is not a kubeconfig\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"DSN=postgres://u:" + testPassword + "@127.0.0.1:1/db", "ENCRYPTION_KEY=" + testKey, "LEADER_ELECTION=false"}
	for _, tt := range []struct {
		name  string
		env   []string
		args  []string
		code  int
		names string // what the one line of stderr names
	}{
		{"METRICS_ADDR in use", []string{"KUBECONFIG=" + kubeconfig, "METRICS_ADDR=" + inUse.Addr().String()}, nil, 2, "METRICS_ADDR"},
		{"PPROF_ADDR in use", []string{"KUBECONFIG=" + kubeconfig, "METRICS_ADDR=", "PPROF_ADDR=" + inUse.Addr().String()}, nil, 2, "PPROF_ADDR"},
		{"KUBECONFIG missing", []string{"KUBECONFIG=" + filepath.Join(dir, "nope")}, nil, 2, "KUBECONFIG"},
		{"KUBECONFIG not a kubeconfig", []string{"KUBECONFIG=" + garbage}, nil, 2, "KUBECONFIG"},
		{"status, KUBECONFIG missing", []string{"KUBECONFIG=" + filepath.Join(dir, "nope")}, []string{"status"}, 2, "KUBECONFIG"},
		{"unknown argument", nil, []string{"--frobnicate"}, 2, "--frobnicate"},
		{"status, unknown argument", nil, []string{"status", "-o", "yaml"}, 2, "status"},
		{"help", nil, []string{"--help"}, 0, ""},
		{"version", nil, []string{"--version"}, 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, code := runBinary(t, bin, append(slices.Clone(base), tt.env...), tt.args...)
			if code != tt.code {
				t.Errorf("exit %d; want %d\n%s", code, tt.code, stderr)
			}
			if tt.names != "" && (!strings.Contains(stderr, tt.names) || strings.Count(strings.TrimSpace(stderr), "\n") != 0) {
				t.Errorf("stderr %q; want one line naming %s", stderr, tt.names)
			}
			if strings.Contains(stderr, testPassword) || strings.Contains(stderr, testKey) {
				t.Error("stderr shows the DSN password or the key")
			}
		})
	}
}
