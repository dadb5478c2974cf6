package main

// Fuzzing of the configuration: the environment is the daemon's first
// untrusted input, and its error messages go to logs that many people read,
// so they must never carry a secret.

import (
	"math"
	"net"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// fuzzPasswordPlaceholder in a fuzzed DSN is replaced by the fuzzed
// password, so the test knows which part of the DSN is secret.
const fuzzPasswordPlaceholder = "{password}"

// secretConfigVars hold key material; none of their text may reach an
// error message. (The DSN's password is tracked through the placeholder.)
var secretConfigVars = []string{"ENCRYPTION_KEY", "PREVIOUS_ENCRYPTION_KEYS"}

// configErrorForm is the shape of every configuration error: it starts by
// naming the variable at fault.
var configErrorForm = regexp.MustCompile(`^(?:invalid ([A-Z][A-Z0-9_]*): \S.*|([A-Z][A-Z0-9_]*) is required)$`)

// fuzzConfigVars are FuzzLoadConfig's arguments after the password, in
// order: every variable of Config (FuzzLoadConfig fails when one is
// missing). One argument per variable, rather than one string holding the
// whole environment, lets the fuzzer change one setting of a valid
// configuration at a time.
var fuzzConfigVars = []string{
	"DSN", "ENCRYPTION_KEY", "PREVIOUS_ENCRYPTION_KEYS", "LEADER", "TICK_SECONDS", "POLL_SECONDS", "DEBUG", "PRETTY",
	"CLUSTER_NAME", "LABEL_SELECTOR", "NAMESPACES", "EXCLUDE_NAMESPACES", "NAMESPACE_SELECTOR", "DELETE_POLICY", "CREATE_NAMESPACES",
	"KUBE_QPS", "KUBE_BURST", "APPLY_WORKERS", "WRITER_CLAIM_SECONDS", "DELETE_GUARD_PERCENT", "PG_NOTIFY", "KUBECONFIG", "METRICS_ADDR", "PPROF_ADDR", "LEADER_ELECTION", "LEASE_NAME",
	"POD_NAMESPACE", "POD_NAME",
}

// fuzzUnset as a value leaves the variable unset (envconfig applies
// defaults only to those; an empty value is set to ""). Any value with a
// NUL byte, which no environment can hold, is unset.
const fuzzUnset = "\x00"

// fuzzEnv builds the environment from FuzzLoadConfig's arguments, with
// password in the DSN.
func fuzzEnv(password string, values []string) map[string]string {
	env := map[string]string{}
	for i, name := range fuzzConfigVars {
		if !strings.ContainsRune(values[i], 0) {
			env[name] = values[i]
		}
	}
	if dsn, ok := env["DSN"]; ok {
		env["DSN"] = strings.ReplaceAll(dsn, fuzzPasswordPlaceholder, password)
	}
	return env
}

const fuzzKey2 = "fedcba9876543210fedcba9876543210"

// fuzzLoadConfigSeeds are realistic configurations, each setting of the
// README's table at and around its limits, and the errors an operator
// makes.
func fuzzLoadConfigSeeds() []fuzzSeed {
	const (
		url      = "postgres://kss:{password}@db.example.com:26257/kss?sslmode=verify-full"
		pw       = "S3cret-Passw0rd"
		key      = configTestKey
		leaderCR = "postgresql://kss_leader:{password}@crdb.eu.example.com:26257/kss?sslmode=verify-full"
	)
	seed := func(name, password string, kv ...string) fuzzSeed {
		args := []any{password}
		for _, variable := range fuzzConfigVars {
			v := fuzzUnset
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == variable {
					v = kv[i+1]
				}
			}
			args = append(args, v)
		}
		return fuzzSeed{name, args}
	}
	return []fuzzSeed{
		seed("minimal", pw, "DSN", url, "ENCRYPTION_KEY", key),
		seed("leader-everything", pw, "DSN", leaderCR, "ENCRYPTION_KEY", key, "PREVIOUS_ENCRYPTION_KEYS", fuzzKey2,
			"LEADER", "1", "TICK_SECONDS", "30", "DEBUG", "1", "PRETTY", "1", "CLUSTER_NAME", "eu-west-1",
			"LABEL_SELECTOR", "kube-secret-sync=true,app in (web,api)", "NAMESPACES", "web,api", "EXCLUDE_NAMESPACES", "kube-system",
			"DELETE_POLICY", "retain", "CREATE_NAMESPACES", "false", "POLL_SECONDS", "0.5", "KUBE_QPS", "50", "KUBE_BURST", "100",
			"KUBECONFIG", "/etc/kube/config", "METRICS_ADDR", "127.0.0.1:9090", "LEADER_ELECTION", "true", "LEASE_NAME", "kss",
			"POD_NAMESPACE", "kube-secret-sync", "POD_NAME", "kss-0"),
		seed("keyword-dsn", pw, "DSN", "host=db.example.com port=5432 user=kss password={password} dbname=kss sslmode=verify-full", "ENCRYPTION_KEY", key),
		seed("quoted-keyword-dsn", "it's a secret", "DSN", "host=db user=kss password='{password}'", "ENCRYPTION_KEY", key),
		seed("dsn-bad-port", pw, "DSN", "postgres://kss:{password}@db:badport/kss", "ENCRYPTION_KEY", key),
		seed("dsn-bad-keyword-port", pw, "DSN", "host=h password={password} port=notaport", "ENCRYPTION_KEY", key),
		seed("dsn-password-with-at", "p@ss:w/rd%zz", "DSN", url, "ENCRYPTION_KEY", key),
		seed("dsn-bad-sslmode", pw, "DSN", "postgres://kss:{password}@db/kss?sslmode={password}", "ENCRYPTION_KEY", key),
		// pgx reads the CA file while parsing.
		seed("dsn-ca-file-missing", pw, "DSN", url+"&sslrootcert=/nonexistent/kss/ca.crt", "ENCRYPTION_KEY", key),
		seed("dsn-empty", pw, "DSN", "", "ENCRYPTION_KEY", key),
		seed("dsn-missing", pw, "ENCRYPTION_KEY", key),
		seed("key-missing", pw, "DSN", url),
		seed("key-31", pw, "DSN", url, "ENCRYPTION_KEY", key[:31]),
		seed("key-33", pw, "DSN", url, "ENCRYPTION_KEY", key+"Z"),
		seed("key-non-ascii", pw, "DSN", url, "ENCRYPTION_KEY", "é"+key[:30]),
		seed("key-with-comma", pw, "DSN", url, "ENCRYPTION_KEY", "0123456789abcdef,123456789abcdef", "PREVIOUS_ENCRYPTION_KEYS", "0123456789abcdef,123456789abcdeF,"+fuzzKey2),
		seed("previous-two", pw, "DSN", url, "ENCRYPTION_KEY", key, "PREVIOUS_ENCRYPTION_KEYS", fuzzKey2+","+key),
		seed("previous-space", pw, "DSN", url, "ENCRYPTION_KEY", key, "PREVIOUS_ENCRYPTION_KEYS", fuzzKey2+", "+key),
		seed("previous-short", pw, "DSN", url, "ENCRYPTION_KEY", key, "PREVIOUS_ENCRYPTION_KEYS", fuzzKey2[:20]),
		seed("tick-limits", pw, "DSN", url, "ENCRYPTION_KEY", key, "TICK_SECONDS", "86400", "POLL_SECONDS", "86400"),
		seed("tick-zero", pw, "DSN", url, "ENCRYPTION_KEY", key, "TICK_SECONDS", "0"),
		seed("tick-hex", pw, "DSN", url, "ENCRYPTION_KEY", key, "TICK_SECONDS", "0x10"),
		seed("tick-overflow", pw, "DSN", url, "ENCRYPTION_KEY", key, "TICK_SECONDS", "9223372036854775808"),
		seed("tick-one-poll-default", pw, "DSN", url, "ENCRYPTION_KEY", key, "TICK_SECONDS", "1"),
		seed("poll-minimum", pw, "DSN", url, "ENCRYPTION_KEY", key, "TICK_SECONDS", "1", "POLL_SECONDS", "0.05"),
		seed("poll-nan", pw, "DSN", url, "ENCRYPTION_KEY", key, "POLL_SECONDS", "NaN"),
		seed("poll-inf", pw, "DSN", url, "ENCRYPTION_KEY", key, "POLL_SECONDS", "+Inf"),
		seed("cluster-empty", pw, "DSN", url, "ENCRYPTION_KEY", key, "CLUSTER_NAME", ""),
		seed("selector-everything", pw, "DSN", url, "ENCRYPTION_KEY", key, "LABEL_SELECTOR", ""),
		seed("selector-bad", pw, "DSN", url, "ENCRYPTION_KEY", key, "LABEL_SELECTOR", "!!"),
		seed("namespace-selector", pw, "DSN", url, "ENCRYPTION_KEY", key, "NAMESPACE_SELECTOR", "team in (web,api),!legacy"),
		seed("namespace-selector-bad", pw, "DSN", url, "ENCRYPTION_KEY", key, "NAMESPACE_SELECTOR", "team=="),
		seed("namespaces-bad", pw, "DSN", url, "ENCRYPTION_KEY", key, "NAMESPACES", "web,Bad_NS\n", "EXCLUDE_NAMESPACES", ",,"),
		seed("delete-policy-bad", pw, "DSN", url, "ENCRYPTION_KEY", key, "DELETE_POLICY", "nuke\x1b[2J"),
		seed("bool-bad", pw, "DSN", url, "ENCRYPTION_KEY", key, "CREATE_NAMESPACES", "maybe", "LEADER_ELECTION", "yes"),
		seed("qps-bad", pw, "DSN", url, "ENCRYPTION_KEY", key, "KUBE_QPS", "NaN", "KUBE_BURST", "-1"),
		seed("qps-off", pw, "DSN", url, "ENCRYPTION_KEY", key, "KUBE_QPS", "-1", "KUBE_BURST", "0"),
		seed("workers", pw, "DSN", url, "ENCRYPTION_KEY", key, "APPLY_WORKERS", "64", "PG_NOTIFY", "false"),
		seed("workers-bad", pw, "DSN", url, "ENCRYPTION_KEY", key, "APPLY_WORKERS", "0", "PG_NOTIFY", "1"),
		seed("delete-guard", pw, "DSN", url, "ENCRYPTION_KEY", key, "DELETE_GUARD_PERCENT", "100"),
		seed("delete-guard-bad", pw, "DSN", url, "ENCRYPTION_KEY", key, "DELETE_GUARD_PERCENT", "0"),
		seed("writer-claim", pw, "DSN", url, "ENCRYPTION_KEY", key, "LEADER", "1", "WRITER_CLAIM_SECONDS", "2.5"),
		seed("writer-claim-bad", pw, "DSN", url, "ENCRYPTION_KEY", key, "LEADER", "1", "WRITER_CLAIM_SECONDS", "0"),
		seed("qps-inf", pw, "DSN", url, "ENCRYPTION_KEY", key, "KUBE_QPS", "Inf", "KUBE_BURST", "2147483648"),
		seed("metrics-disabled", pw, "DSN", url, "ENCRYPTION_KEY", key, "METRICS_ADDR", ""),
		seed("metrics-bad", pw, "DSN", url, "ENCRYPTION_KEY", key, "METRICS_ADDR", "localhost"),
		seed("pprof-bad", pw, "DSN", url, "ENCRYPTION_KEY", key, "PPROF_ADDR", "localhost"),
		seed("lease-bad", pw, "DSN", url, "ENCRYPTION_KEY", key, "LEASE_NAME", "Not A Name", "POD_NAMESPACE", "Bad_NS"),
		seed("lease-long", pw, "DSN", url, "ENCRYPTION_KEY", key, "LEASE_NAME", strings.Repeat("a", 253)),
		// A secret that is also an ordinary setting's value: its text
		// may then appear, but only as that setting's.
		seed("secret-as-namespace", "Bad_NS_password", "DSN", url, "ENCRYPTION_KEY", key, "NAMESPACES", "Bad_NS_password"),
	}
}

// FuzzLoadConfig runs loadConfig, exactly as main does, on arbitrary
// environments. It must never panic. A configuration it accepts must be
// usable (positive intervals, a key, a selector). A refused one gets one
// line without control characters that starts by naming the variable at
// fault, a variable that was set (defaults are valid), and that shows no
// text of the DSN's password or of any key.
func FuzzLoadConfig(f *testing.F) {
	vars := configVars(f)
	if !slices.Equal(slices.Sorted(slices.Values(vars)), slices.Sorted(slices.Values(fuzzConfigVars))) {
		f.Fatalf("fuzzConfigVars = %v; want every variable of Config: %v", fuzzConfigVars, vars)
	}
	// The seeds committed under testdata/fuzz/FuzzLoadConfig are the corpus.
	f.Fuzz(func(t *testing.T, password, dsn, key, previousKeys, leader, tick, poll, debug, pretty,
		cluster, selector, namespaces, exclude, nsSelector, deletePolicy, createNamespaces,
		qps, burst, applyWorkers, writerClaim, deleteGuard, pgNotify, kubeconfig, metricsAddr, pprofAddr, leaderElection, leaseName, podNamespace, podName string) {
		if strings.ContainsRune(password, 0) {
			return // no environment can hold it
		}
		values := []string{dsn, key, previousKeys, leader, tick, poll, debug, pretty,
			cluster, selector, namespaces, exclude, nsSelector, deletePolicy, createNamespaces,
			qps, burst, applyWorkers, writerClaim, deleteGuard, pgNotify, kubeconfig, metricsAddr, pprofAddr, leaderElection, leaseName, podNamespace, podName}
		env := fuzzEnv(password, values)
		setConfigEnv(t, env)
		c, err := loadConfig()
		if err == nil {
			checkLoadedConfig(t, env, c)
			return
		}
		msg := err.Error()
		if hasControl(msg) {
			t.Fatalf("loadConfig error %q: want one line without control characters", msg)
		}
		m := configErrorForm.FindStringSubmatch(msg)
		if m == nil {
			t.Fatalf("loadConfig error %q: want %q or %q", msg, "invalid VARIABLE: …", "VARIABLE is required")
		}
		name := m[1] + m[2]
		if !slices.Contains(vars, name) {
			t.Fatalf("loadConfig error %q names %s, which is not a variable", msg, name)
		}
		if _, set := env[name]; !set {
			// A default is valid on its own; only POLL_SECONDS is bound
			// by another variable (at most TICK_SECONDS).
			_, tickSet := env["TICK_SECONDS"]
			if m[2] == "" && !(name == "POLL_SECONDS" && tickSet) {
				t.Fatalf("loadConfig error %q blames %s, which was not set", msg, name)
			}
		}
		checkNoSecretInError(t, env, password, values, msg)
	})
}

// checkNoSecretInError fails if msg shows any 8 consecutive characters of
// the DSN's password or of a key. Text that also appears in the message
// for another reason (a word of the message, the value of another
// setting) is told apart by changing the secrets (shiftAlnum) and loading
// again: text taken from a secret changes with it, anything else does not.
func checkNoSecretInError(t *testing.T, env map[string]string, password string, values []string, msg string) {
	t.Helper()
	const window = 8
	secrets := []string{password}
	for _, v := range secretConfigVars {
		secrets = append(secrets, env[v])
	}
	var suspects []string
	for _, s := range secrets {
		for i := 0; i+window <= len(s); i++ {
			if w := s[i : i+window]; shiftAlnum(w) != w && strings.Contains(msg, w) {
				suspects = append(suspects, w)
			}
		}
	}
	if len(suspects) == 0 {
		return
	}
	shifted := fuzzEnv(shiftAlnum(password), values)
	for _, v := range secretConfigVars {
		if val, ok := shifted[v]; ok {
			shifted[v] = shiftAlnum(val)
		}
	}
	setConfigEnv(t, shifted)
	msg2 := ""
	if _, err := loadConfig(); err != nil {
		msg2 = err.Error()
	}
	var public []string // values whose text may appear in a message
	for name, v := range env {
		if name != "DSN" && !slices.Contains(secretConfigVars, name) {
			public = append(public, v)
		}
	}
	for _, w := range suspects {
		moved := shiftAlnum(w)
		if strings.Contains(msg2, moved) && !slices.ContainsFunc(public, func(v string) bool { return strings.Contains(v, moved) }) {
			t.Fatalf("loadConfig error %q shows %q, part of the DSN's password or of a key", msg, w)
		}
	}
}

// checkLoadedConfig checks that an accepted configuration can run.
func checkLoadedConfig(t *testing.T, env map[string]string, c *Config) {
	t.Helper()
	if c.Tick() <= 0 || c.Tick() > 24*time.Hour {
		t.Fatalf("Tick() = %v; want (0, 24h]", c.Tick())
	}
	if c.Poll() <= 0 || c.Poll() > c.Tick() {
		t.Fatalf("Poll() = %v; want (0, Tick() = %v]", c.Poll(), c.Tick())
	}
	if c.passTimeout() < c.Tick() {
		t.Fatalf("passTimeout() = %v; want at least Tick() = %v", c.passTimeout(), c.Tick())
	}
	key := env["ENCRYPTION_KEY"]
	if len(key) != 32 || utf8.RuneCountInString(key) != 32 {
		t.Fatalf("accepted an ENCRYPTION_KEY of %d bytes in %d characters; want 32 ASCII characters", len(key), utf8.RuneCountInString(key))
	}
	ring, ringErr := c.keyring()
	if k, err := NewKeys(key); err != nil || ringErr != nil || ring.ID() != k.ID() {
		t.Fatalf("keys not derived from ENCRYPTION_KEY (NewKeys: %v)", err)
	}
	if c.selector == nil || c.selector.Empty() {
		t.Fatalf("accepted LABEL_SELECTOR %q, which selects every Secret", c.LabelSelector)
	}
	if c.ClusterName == "" || c.PodNamespace == "" || c.LeaseName == "" {
		t.Fatalf("CLUSTER_NAME %q, POD_NAMESPACE %q, LEASE_NAME %q: want all set", c.ClusterName, c.PodNamespace, c.LeaseName)
	}
	if c.DeletePolicy != deletePolicyDelete && c.DeletePolicy != deletePolicyRetain {
		t.Fatalf("accepted DELETE_POLICY %q", c.DeletePolicy)
	}
	if !(c.KubeQPS > 0 && !math.IsInf(float64(c.KubeQPS), 1) || c.KubeQPS == 0 || c.KubeQPS == -1) || c.KubeBurst < 0 {
		t.Fatalf("accepted KUBE_QPS %v, KUBE_BURST %d", c.KubeQPS, c.KubeBurst)
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			t.Fatalf("accepted METRICS_ADDR %q: %v", c.MetricsAddr, err)
		}
	}
	for _, ns := range append(slices.Clone(c.Namespaces), c.ExcludeNamespaces...) {
		if ns == "" || strings.ContainsAny(ns, " ,") {
			t.Fatalf("accepted namespace %q", ns)
		}
	}
	// What was accepted once is accepted again: the derived fields do not
	// depend on the order of checks.
	if err := c.validate(); err != nil {
		t.Fatalf("validate() of an accepted configuration = %v", err)
	}
}
