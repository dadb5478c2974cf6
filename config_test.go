package main

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/labels"
)

const (
	configTestKey      = "0123456789abcdef0123456789abcdef"
	configTestPassword = "S3cretPW"
	configTestDSN      = "postgres://kss:" + configTestPassword + "@db.example.com:26257/kss?sslmode=verify-full"
)

// configVars lists every environment variable of Config, from its envconfig
// tags, so that a variable added to Config is covered here and in --help.
func configVars(tb testing.TB) []string {
	tb.Helper()
	var vars []string
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if tag := f.Tag.Get("envconfig"); tag != "" {
			vars = append(vars, tag)
		} else if f.IsExported() {
			tb.Errorf("Config.%s has no envconfig tag", f.Name)
		}
	}
	if len(vars) < 6 {
		tb.Fatalf("Config has %d envconfig variables; want at least the original six", len(vars))
	}
	return vars
}

// setConfigEnv makes the environment exactly env for Config's variables:
// every other variable of Config is unset (not empty: envconfig applies a
// default only to an unset variable), and restored when the test ends.
func setConfigEnv(t *testing.T, env map[string]string) {
	t.Helper()
	vars := configVars(t)
	for _, v := range vars {
		t.Setenv(v, "")
		if err := os.Unsetenv(v); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range env {
		if !slices.Contains(vars, k) {
			t.Fatalf("setConfigEnv: %s is not a variable of Config", k)
		}
		t.Setenv(k, v)
	}
}

// validEnv is the least a daemon needs, plus overrides.
func validEnv(overrides map[string]string) map[string]string {
	env := map[string]string{"DSN": configTestDSN, "ENCRYPTION_KEY": configTestKey}
	for k, v := range overrides {
		env[k] = v
	}
	return env
}

func mustLoadConfig(t *testing.T, env map[string]string) *Config {
	t.Helper()
	setConfigEnv(t, env)
	c, err := loadConfig()
	if err != nil {
		t.Fatalf("loadConfig(%v) = %v; want no error", env, err)
	}
	return c
}

// mustConfigKeyring is the keyring that c's key settings describe.
func mustConfigKeyring(tb testing.TB, c *Config) *Keyring {
	tb.Helper()
	keys, err := c.keyring()
	if err != nil {
		tb.Fatal(err)
	}
	return keys
}

func TestLoadConfigDefaults(t *testing.T) {
	c := mustLoadConfig(t, validEnv(nil))
	checks := []struct {
		name      string
		got, want any
	}{
		{"DSN", c.DSN, configTestDSN},
		{"TickSeconds", c.TickSeconds, 20},
		{"Tick()", c.Tick().String(), "20s"},
		{"PollSeconds", c.PollSeconds, 1.0},
		{"Poll()", c.Poll().String(), "1s"},
		{"LabelSelector", c.LabelSelector, "kube-secret-sync=true"},
		{"selector", c.selector.String(), "kube-secret-sync=true"},
		{"DeletePolicy", c.DeletePolicy, "delete"},
		{"CreateNamespaces", c.CreateNamespaces, true},
		{"LeaderElection", c.LeaderElection, true},
		{"IsLeader()", c.IsLeader(), false},
		{"ClusterName", c.ClusterName, "default"},
		{"LeaseName", c.LeaseName, "kube-secret-sync"},
		{"MetricsAddr", c.MetricsAddr, ":8080"},
		{"KubeQPS", c.KubeQPS, float32(0)},
		{"KubeBurst", c.KubeBurst, 0},
		{"ApplyWorkers", c.ApplyWorkers, 32},
		{"DeleteGuard", c.DeleteGuard, 50},
		{"PgNotify", c.PgNotify, true},
		{"Namespaces", len(c.Namespaces), 0},
		{"ExcludeNamespaces", len(c.ExcludeNamespaces), 0},
		{"Kubeconfig", c.Kubeconfig, ""},
		{"keys derived", mustConfigKeyring(t, c).ID() == mustKeys(t, configTestKey).ID(), true},
		{"PodNamespace set", c.PodNamespace != "", true},
		{"namespaceAllowed(any)", c.namespaceAllowed("anything"), true},
	}
	for _, tt := range checks {
		if tt.got != tt.want {
			t.Errorf("loadConfig() with defaults: %s = %v; want %v", tt.name, tt.got, tt.want)
		}
	}
	if host, err := os.Hostname(); err == nil && c.PodName != host {
		t.Errorf("loadConfig() with defaults: PodName = %q; want the hostname %q", c.PodName, host)
	}
}

func TestLoadConfigOverrides(t *testing.T) {
	c := mustLoadConfig(t, validEnv(map[string]string{
		"TICK_SECONDS":       "60",
		"POLL_SECONDS":       "0.5",
		"CLUSTER_NAME":       "eu-west",
		"LABEL_SELECTOR":     "sync in (yes,true),tier!=dev",
		"NAMESPACES":         "web,api",
		"EXCLUDE_NAMESPACES": "kube-system",
		"DELETE_POLICY":      "retain",
		"CREATE_NAMESPACES":  "false",
		"KUBE_QPS":           "5.5",
		"KUBE_BURST":         "7",
		"METRICS_ADDR":       "",
		"LEADER_ELECTION":    "false",
		"POD_NAMESPACE":      "kss",
		"POD_NAME":           "kss-0",
	}))
	checks := []struct {
		name      string
		got, want any
	}{
		{"Tick()", c.Tick().String(), "1m0s"},
		{"Poll()", c.Poll().String(), "500ms"},
		{"ClusterName", c.ClusterName, "eu-west"},
		{"Namespaces", strings.Join(c.Namespaces, "|"), "web|api"},
		{"namespaceAllowed(web)", c.namespaceAllowed("web"), true},
		{"namespaceAllowed(other)", c.namespaceAllowed("other"), false},
		{"namespaceAllowed(kube-system)", c.namespaceAllowed("kube-system"), false},
		{"DeletePolicy", c.DeletePolicy, "retain"},
		{"CreateNamespaces", c.CreateNamespaces, false},
		{"KubeQPS", c.KubeQPS, float32(5.5)},
		{"KubeBurst", c.KubeBurst, 7},
		{"MetricsAddr (empty disables)", c.MetricsAddr, ""},
		{"LeaderElection", c.LeaderElection, false},
		{"PodNamespace", c.PodNamespace, "kss"},
		{"PodName", c.PodName, "kss-0"},
	}
	for _, tt := range checks {
		if tt.got != tt.want {
			t.Errorf("loadConfig() with overrides: %s = %v; want %v", tt.name, tt.got, tt.want)
		}
	}
	for set, want := range map[string]bool{"sync=yes": true, "sync=yes,tier=dev": false, "sync=no": false} {
		m := map[string]string{}
		for kv := range strings.SplitSeq(set, ",") {
			k, v, _ := strings.Cut(kv, "=")
			m[k] = v
		}
		if got := c.selector.Matches(labels.Set(m)); got != want {
			t.Errorf("selector %q matches %v = %v; want %v", c.LabelSelector, m, got, want)
		}
	}
}

func TestLoadConfigLeader(t *testing.T) {
	// The original's convention: "1" is the leader, anything else a
	// follower; "true" is accepted because operators write it.
	tests := []struct {
		value string
		unset bool
		want  bool
	}{
		{value: "1", want: true},
		{value: "true", want: true},
		{value: "TRUE", want: true},
		{value: "0", want: false},
		{value: "", want: false},
		{unset: true, want: false},
		{value: "yes", want: false},
		{value: "false", want: false},
		{value: "2", want: false},
		{value: " 1", want: false},
	}
	for _, tt := range tests {
		name := strconv.Quote(tt.value)
		if tt.unset {
			name = "unset"
		}
		t.Run(name, func(t *testing.T) {
			env := validEnv(nil)
			if !tt.unset {
				env["LEADER"] = tt.value
			}
			c := mustLoadConfig(t, env)
			if got := c.IsLeader(); got != tt.want {
				t.Errorf("LEADER=%q: IsLeader() = %v; want %v", tt.value, got, tt.want)
			}
		})
	}
}

// TestLoadConfigInvalid checks SPEC §3: every invalid value stops the
// process with one line that names the variable and never shows the value of
// a secret setting.
func TestLoadConfigInvalid(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantVar string
	}{
		{"missing DSN", map[string]string{"ENCRYPTION_KEY": configTestKey}, "DSN"},
		{"empty DSN", map[string]string{"DSN": "", "ENCRYPTION_KEY": configTestKey}, "DSN"},
		{"unparsable DSN", validEnv(map[string]string{"DSN": "postgres://u:" + configTestPassword + "@h:badport/db"}), "DSN"},
		{"unparsable key=value DSN", validEnv(map[string]string{"DSN": "host=h password=" + configTestPassword + " port=notaport"}), "DSN"},
		{"missing ENCRYPTION_KEY", map[string]string{"DSN": configTestDSN}, "ENCRYPTION_KEY"},
		{"ENCRYPTION_KEY of 31", validEnv(map[string]string{"ENCRYPTION_KEY": configTestKey[:31]}), "ENCRYPTION_KEY"},
		{"ENCRYPTION_KEY of 33", validEnv(map[string]string{"ENCRYPTION_KEY": configTestKey + "Z"}), "ENCRYPTION_KEY"},
		{"ENCRYPTION_KEY of 32 characters in 33 bytes", validEnv(map[string]string{"ENCRYPTION_KEY": "é" + configTestKey[:31]}), "ENCRYPTION_KEY"},
		{"PREVIOUS_ENCRYPTION_KEYS of 31", validEnv(map[string]string{"PREVIOUS_ENCRYPTION_KEYS": configTestKey[:31]}), "PREVIOUS_ENCRYPTION_KEYS"},
		{"PREVIOUS_ENCRYPTION_KEYS second of 31", validEnv(map[string]string{"PREVIOUS_ENCRYPTION_KEYS": configTestKey + "," + configTestKey[:31]}), "PREVIOUS_ENCRYPTION_KEYS"},
		{"PREVIOUS_ENCRYPTION_KEYS trailing comma", validEnv(map[string]string{"PREVIOUS_ENCRYPTION_KEYS": configTestKey + ","}), "PREVIOUS_ENCRYPTION_KEYS"},
		{"PREVIOUS_ENCRYPTION_KEYS space after comma", validEnv(map[string]string{"PREVIOUS_ENCRYPTION_KEYS": configTestKey + ", " + configTestKey}), "PREVIOUS_ENCRYPTION_KEYS"},
		{"PREVIOUS_ENCRYPTION_KEYS non-ASCII", validEnv(map[string]string{"PREVIOUS_ENCRYPTION_KEYS": "é" + configTestKey[:30]}), "PREVIOUS_ENCRYPTION_KEYS"},
		{"TICK_SECONDS 0", validEnv(map[string]string{"TICK_SECONDS": "0"}), "TICK_SECONDS"},
		{"TICK_SECONDS negative", validEnv(map[string]string{"TICK_SECONDS": "-5"}), "TICK_SECONDS"},
		{"TICK_SECONDS abc", validEnv(map[string]string{"TICK_SECONDS": "abc"}), "TICK_SECONDS"},
		// Larger values overflow time.Duration: the ticker would panic.
		{"TICK_SECONDS overflowing", validEnv(map[string]string{"TICK_SECONDS": "9223372037"}), "TICK_SECONDS"},
		{"TICK_SECONDS over a day", validEnv(map[string]string{"TICK_SECONDS": "86401"}), "TICK_SECONDS"},
		{"POLL_SECONDS 0", validEnv(map[string]string{"POLL_SECONDS": "0"}), "POLL_SECONDS"},
		{"POLL_SECONDS larger than TICK", validEnv(map[string]string{"TICK_SECONDS": "10", "POLL_SECONDS": "10.5"}), "POLL_SECONDS"},
		{"POLL_SECONDS NaN", validEnv(map[string]string{"POLL_SECONDS": "NaN"}), "POLL_SECONDS"},
		{"POLL_SECONDS abc", validEnv(map[string]string{"POLL_SECONDS": "abc"}), "POLL_SECONDS"},
		{"CLUSTER_NAME empty", validEnv(map[string]string{"CLUSTER_NAME": ""}), "CLUSTER_NAME"},
		{"LABEL_SELECTOR !!", validEnv(map[string]string{"LABEL_SELECTOR": "!!"}), "LABEL_SELECTOR"},
		{"LABEL_SELECTOR empty", validEnv(map[string]string{"LABEL_SELECTOR": ""}), "LABEL_SELECTOR"},
		{"NAMESPACE_SELECTOR !!", validEnv(map[string]string{"NAMESPACE_SELECTOR": "!!"}), "NAMESPACE_SELECTOR"},
		{"NAMESPACE_SELECTOR bad value", validEnv(map[string]string{"NAMESPACE_SELECTOR": "team=a b"}), "NAMESPACE_SELECTOR"},
		{"NAMESPACES Bad_NS", validEnv(map[string]string{"NAMESPACES": "web,Bad_NS"}), "NAMESPACES"},
		{"EXCLUDE_NAMESPACES Bad_NS", validEnv(map[string]string{"EXCLUDE_NAMESPACES": "Bad_NS"}), "EXCLUDE_NAMESPACES"},
		{"DELETE_POLICY nuke", validEnv(map[string]string{"DELETE_POLICY": "nuke"}), "DELETE_POLICY"},
		{"CREATE_NAMESPACES maybe", validEnv(map[string]string{"CREATE_NAMESPACES": "maybe"}), "CREATE_NAMESPACES"},
		{"LEADER_ELECTION maybe", validEnv(map[string]string{"LEADER_ELECTION": "maybe"}), "LEADER_ELECTION"},
		{"KUBE_QPS -2", validEnv(map[string]string{"KUBE_QPS": "-2"}), "KUBE_QPS"},
		{"KUBE_QPS -0.5", validEnv(map[string]string{"KUBE_QPS": "-0.5"}), "KUBE_QPS"},
		{"KUBE_QPS NaN", validEnv(map[string]string{"KUBE_QPS": "NaN"}), "KUBE_QPS"},
		{"KUBE_QPS Inf", validEnv(map[string]string{"KUBE_QPS": "+Inf"}), "KUBE_QPS"},
		{"KUBE_BURST -1", validEnv(map[string]string{"KUBE_BURST": "-1"}), "KUBE_BURST"},
		{"APPLY_WORKERS 0", validEnv(map[string]string{"APPLY_WORKERS": "0"}), "APPLY_WORKERS"},
		{"DELETE_GUARD_PERCENT 0", validEnv(map[string]string{"DELETE_GUARD_PERCENT": "0"}), "DELETE_GUARD_PERCENT"},
		{"WRITER_CLAIM_SECONDS 0", validEnv(map[string]string{"WRITER_CLAIM_SECONDS": "0"}), "WRITER_CLAIM_SECONDS"},
		{"WRITER_CLAIM_SECONDS 601", validEnv(map[string]string{"WRITER_CLAIM_SECONDS": "601"}), "WRITER_CLAIM_SECONDS"},
		{"WRITER_CLAIM_SECONDS NaN", validEnv(map[string]string{"WRITER_CLAIM_SECONDS": "NaN"}), "WRITER_CLAIM_SECONDS"},
		{"DELETE_GUARD_PERCENT 101", validEnv(map[string]string{"DELETE_GUARD_PERCENT": "101"}), "DELETE_GUARD_PERCENT"},
		{"DELETE_GUARD_PERCENT 50%", validEnv(map[string]string{"DELETE_GUARD_PERCENT": "50%"}), "DELETE_GUARD_PERCENT"},
		{"APPLY_WORKERS 1000", validEnv(map[string]string{"APPLY_WORKERS": "1000"}), "APPLY_WORKERS"},
		{"PG_NOTIFY maybe", validEnv(map[string]string{"PG_NOTIFY": "maybe"}), "PG_NOTIFY"},
		{"METRICS_ADDR nope", validEnv(map[string]string{"METRICS_ADDR": "nope"}), "METRICS_ADDR"},
		{"METRICS_ADDR port out of range", validEnv(map[string]string{"METRICS_ADDR": ":99999"}), "METRICS_ADDR"},
		{"PPROF_ADDR nope", validEnv(map[string]string{"PPROF_ADDR": "nope"}), "PPROF_ADDR"},
		{"METRICS_ADDR port not a number", validEnv(map[string]string{"METRICS_ADDR": ":abc"}), "METRICS_ADDR"},
		{"LEASE_NAME too long for its ConfigMap", validEnv(map[string]string{"LEASE_NAME": strings.Repeat("a", 250)}), "LEASE_NAME"},
		{"DSN naming a missing CA file", validEnv(map[string]string{"DSN": "postgres://u:" + configTestPassword + "@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt"}), "DSN"},
		{"LEASE_NAME invalid", validEnv(map[string]string{"LEASE_NAME": "Not A Name"}), "LEASE_NAME"},
		{"POD_NAMESPACE invalid", validEnv(map[string]string{"POD_NAMESPACE": "Bad_NS"}), "POD_NAMESPACE"},
	}
	varName := regexp.MustCompile(`\b[A-Z][A-Z_]+[A-Z]\b`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setConfigEnv(t, tt.env)
			// The Config is not printed on failure: it holds the DSN
			// password and the key.
			_, err := loadConfig()
			if err == nil {
				t.Fatalf("loadConfig(%s) = _, nil; want an error naming %s", tt.name, tt.wantVar)
			}
			msg := err.Error()
			if strings.ContainsAny(msg, "\r\n") {
				t.Errorf("loadConfig(%s) error %q; want a single line", tt.name, msg)
			}
			// Names the variable: the first upper-case identifier of the
			// message is the variable at fault.
			if got := varName.FindString(msg); got != tt.wantVar {
				t.Errorf("loadConfig(%s) error %q names %q first; want %s", tt.name, msg, got, tt.wantVar)
			}
			for _, secret := range []string{configTestPassword, configTestKey[:16], configTestKey[16:]} {
				if strings.Contains(msg, secret) {
					t.Errorf("loadConfig(%s) error %q reveals a secret value", tt.name, msg)
				}
			}
		})
	}
}

// TestBinaryConfigErrors runs the real binary: a bad setting must stop it
// with exit status 2 and one line on stderr, and --help must document every
// variable.
func TestBinaryConfigErrors(t *testing.T) {
	bin := buildBinary(t)
	run := func(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
		return runBinary(t, bin, env, args...)
	}

	t.Run("bad ENCRYPTION_KEY", func(t *testing.T) {
		badKey := configTestKey[:31]
		stdout, stderr, code := run(t, []string{"DSN=" + configTestDSN, "ENCRYPTION_KEY=" + badKey, "LEADER=1"})
		if code != 2 {
			t.Errorf("kss with a 31-character key: exit status %d; want 2", code)
		}
		if stdout != "" {
			t.Errorf("kss with a 31-character key: stdout %q; want nothing", stdout)
		}
		if !strings.HasSuffix(stderr, "\n") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("kss with a 31-character key: stderr %q; want exactly one line", stderr)
		}
		if !strings.Contains(stderr, "ENCRYPTION_KEY") {
			t.Errorf("kss with a 31-character key: stderr %q; want it to name ENCRYPTION_KEY", stderr)
		}
		for _, secret := range []string{badKey[:16], badKey[16:], configTestPassword} {
			if strings.Contains(stderr, secret) {
				t.Errorf("kss with a 31-character key: stderr %q reveals a secret value", stderr)
			}
		}
	})

	t.Run("bad DSN", func(t *testing.T) {
		_, stderr, code := run(t, []string{"DSN=postgres://u:" + configTestPassword + "@h:badport/db", "ENCRYPTION_KEY=" + configTestKey})
		if code != 2 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "DSN") || strings.Contains(stderr, configTestPassword) {
			t.Errorf("kss with a bad DSN: exit status %d, stderr %q; want 2 and one line naming DSN without its password", code, stderr)
		}
	})

	t.Run("--help", func(t *testing.T) {
		stdout, stderr, code := run(t, nil, "--help")
		if code != 0 {
			t.Errorf("kss --help: exit status %d; want 0", code)
		}
		help := stdout + stderr
		for _, v := range configVars(t) {
			if !regexp.MustCompile(`(?m)^\s+` + v + `\s`).MatchString(help) {
				t.Errorf("kss --help does not list %s:\n%s", v, help)
			}
		}
	})
}

func TestDSNWarning(t *testing.T) {
	tests := []struct {
		dsn  string
		want string // a part of the warning; "" for none
	}{
		{"postgres://u:pw@db.example.com/kss?sslmode=verify-full", ""},
		{"postgres://u:pw@db.example.com/kss?sslmode=disable", "not encrypted"},
		{"postgres://u:pw@db.example.com/kss", "fall back"},
		{"postgres://u:pw@db.example.com/kss?sslmode=prefer", "fall back"},
		{"postgres://u:pw@db.example.com/kss?sslmode=require", "certificate is not verified"},
		{"host=db.example.com user=u password=pw sslmode=require", "certificate is not verified"},
		// The database on this machine: nothing to observe on the way.
		{"postgres://u:pw@127.0.0.1/kss?sslmode=disable", ""},
		{"postgres://u:pw@localhost/kss", ""},
		{"host=/var/run/postgresql user=u", ""},
	}
	for _, tt := range tests {
		got := dsnWarning(tt.dsn)
		if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
			t.Errorf("dsnWarning(%s) = %q; want %q", tt.dsn, got, tt.want)
		}
		if strings.Contains(got, "pw") || strings.Contains(got, "db.example.com") {
			t.Errorf("dsnWarning(%s) = %q shows the DSN", tt.dsn, got)
		}
	}
}
