package main

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/kelseyhightower/envconfig"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/tools/clientcmd"
)

// Config is the daemon's whole configuration, read from the environment.
// The first six variables are those of the original KubeSecretSync and keep
// their meaning; the rest are new and optional.
type Config struct {
	DSN           string `envconfig:"DSN" desc:"PostgreSQL/CockroachDB connection string (pgx syntax); required"`
	EncryptionKey string `envconfig:"ENCRYPTION_KEY" desc:"exactly 32 characters, the same on every cluster; required"`
	Leader        string `envconfig:"LEADER" desc:"1: this cluster is the leader (writer); anything else: follower"`
	TickSeconds   int    `envconfig:"TICK_SECONDS" default:"20" desc:"seconds between full reconciles"`
	Debug         string `envconfig:"DEBUG" desc:"1: debug logs"`
	Pretty        string `envconfig:"PRETTY" desc:"1: human-readable text logs instead of JSON"`

	PreviousKeys      string   `envconfig:"PREVIOUS_ENCRYPTION_KEYS" desc:"comma-separated earlier keys, 32 characters each, still accepted for decryption during a key rotation"`
	ClusterName       string   `envconfig:"CLUSTER_NAME" default:"default" desc:"name of this cluster, recorded in the rows it writes"`
	LabelSelector     string   `envconfig:"LABEL_SELECTOR" default:"kube-secret-sync=true" desc:"leader: which Secrets to sync"`
	Namespaces        []string `envconfig:"NAMESPACES" desc:"comma-separated namespaces to sync (default: all)"`
	ExcludeNamespaces []string `envconfig:"EXCLUDE_NAMESPACES" desc:"comma-separated namespaces never synced"`
	NamespaceSelector string   `envconfig:"NAMESPACE_SELECTOR" desc:"label selector on Namespaces: also sync every namespace whose labels match, picked up as it gains or loses them (watches Namespaces cluster-wide)"`
	DeletePolicy      string   `envconfig:"DELETE_POLICY" default:"delete" desc:"follower: delete or retain the copy when the source is deleted or unlabelled"`
	CreateNamespaces  bool     `envconfig:"CREATE_NAMESPACES" default:"true" desc:"follower: create a missing namespace"`
	PollSeconds       float64  `envconfig:"POLL_SECONDS" default:"1" desc:"follower: seconds between pulls of changed rows (at most TICK_SECONDS)"`
	KubeQPS           float32  `envconfig:"KUBE_QPS" default:"0" desc:"Kubernetes API client rate limit, queries per second: 0 for none when the API server has API Priority and Fairness (it protects itself, and 429s are retried after its Retry-After), else 100; -1 for none; a positive value for that limit"`
	KubeBurst         int      `envconfig:"KUBE_BURST" default:"0" desc:"Kubernetes API client burst, with a client rate limit: 0 for twice KUBE_QPS (200 when KUBE_QPS is 0)"`
	ApplyWorkers      int      `envconfig:"APPLY_WORKERS" default:"32" desc:"follower: Secrets applied concurrently"`
	WriterClaim       float64  `envconfig:"WRITER_CLAIM_SECONDS" default:"30" desc:"leader: seconds the database's writer claim lasts unless renewed (every third of it); a standby leader takes over once it has expired, at once when released"`
	DeleteGuard       int      `envconfig:"DELETE_GUARD_PERCENT" default:"50" desc:"leader: a pass that would delete more than this share (percent) of the synced Secrets, and more than 10, deletes none and waits; 100 allows any"`
	PgNotify          bool     `envconfig:"PG_NOTIFY" default:"true" desc:"PostgreSQL only: LISTEN/NOTIFY wake-up hint, so that followers pull at once; the poll remains the fallback"`
	Kubeconfig        string   `envconfig:"KUBECONFIG" desc:"kubeconfig file when running outside a cluster (default: in-cluster config)"`
	MetricsAddr       string   `envconfig:"METRICS_ADDR" default:":8080" desc:"address for /metrics, /healthz and /readyz; empty disables"`
	PprofAddr         string   `envconfig:"PPROF_ADDR" desc:"address for Go's /debug/pprof profiles, such as 127.0.0.1:6060; empty (the default) disables. Never expose it outside the pod"`
	LeaderElection    bool     `envconfig:"LEADER_ELECTION" default:"true" desc:"one active replica per cluster through a Lease"`
	LeaseName         string   `envconfig:"LEASE_NAME" default:"kube-secret-sync" desc:"name of the Lease and prefix of the state ConfigMap"`
	PodNamespace      string   `envconfig:"POD_NAMESPACE" desc:"namespace of the Lease and state ConfigMap (default: the pod's, else default)"`
	PodName           string   `envconfig:"POD_NAME" desc:"identity in the Lease (default: hostname)"`

	// Derived at load time.
	selector   labels.Selector
	nsSelector labels.Selector // nil without NAMESPACE_SELECTOR

	// namespaces watches the namespaces that NAMESPACE_SELECTOR selects,
	// once the sync loop has started it (nil before, or without one).
	namespaces *namespaceWatch

	// wrapTransport, if set, wraps the Kubernetes client's transport
	// (tests count the API writes a daemon makes).
	wrapTransport func(http.RoundTripper) http.RoundTripper
}

// IsLeader reports whether LEADER selects the writer role.
func (c *Config) IsLeader() bool { return on(c.Leader) }

// Tick is the interval of the full reconcile.
func (c *Config) Tick() time.Duration { return time.Duration(c.TickSeconds) * time.Second }

// ClaimTTL is how long the writer claim lasts unless renewed.
func (c *Config) ClaimTTL() time.Duration { return time.Duration(c.WriterClaim * float64(time.Second)) }

// Poll is the follower's interval between incremental pulls.
func (c *Config) Poll() time.Duration { return time.Duration(c.PollSeconds * float64(time.Second)) }

// on keeps the original's convention that "1" switches a flag on; "true"
// is accepted too because operators write it.
func on(v string) bool { return v == "1" || strings.EqualFold(v, "true") }

const serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// loadConfig reads and validates the environment. Its error is one line
// naming the variable; it never contains the value of DSN or ENCRYPTION_KEY.
func loadConfig() (*Config, error) {
	var c Config
	if err := envconfig.Process("", &c); err != nil {
		var perr *envconfig.ParseError
		if errors.As(err, &perr) {
			return nil, fmt.Errorf("invalid %s: want a value of type %s", perr.KeyName, perr.TypeName)
		}
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	if c.PodNamespace == "" {
		c.PodNamespace = "default"
		if b, err := os.ReadFile(serviceAccountNamespaceFile); err == nil {
			c.PodNamespace = strings.TrimSpace(string(b))
		}
	}
	if c.PodName == "" {
		c.PodName, _ = os.Hostname()
	}
	return &c, nil
}

// validate checks every setting and derives the selector.
func (c *Config) validate() error {
	if c.DSN == "" {
		return errors.New("DSN is required")
	}
	// pgx's parse errors can quote the connection string, password
	// included, so only the fact is reported.
	if _, err := pgxpool.ParseConfig(c.DSN); err != nil {
		return errors.New(dsnError)
	}
	if _, err := c.keyring(); err != nil {
		return err
	}
	// The upper bound keeps Tick() far from overflowing time.Duration
	// (a negative interval panics in time.NewTicker).
	if c.TickSeconds < 1 || c.TickSeconds > maxTickSeconds {
		return fmt.Errorf("invalid TICK_SECONDS: must be between 1 and %d, got %d", maxTickSeconds, c.TickSeconds)
	}
	// Written so that NaN, which fails every comparison, is refused too.
	if !(c.WriterClaim >= 1 && c.WriterClaim <= 600) {
		return fmt.Errorf("invalid WRITER_CLAIM_SECONDS: must be between 1 and 600, got %g", c.WriterClaim)
	}
	if !(c.PollSeconds >= 0.05 && c.PollSeconds <= float64(c.TickSeconds)) {
		return fmt.Errorf("invalid POLL_SECONDS: must be between 0.05 and TICK_SECONDS (%d), got %g", c.TickSeconds, c.PollSeconds)
	}
	if c.ClusterName == "" || len(c.ClusterName) > 253 {
		return errors.New("invalid CLUSTER_NAME: must be 1 to 253 characters")
	}
	sel, err := labels.Parse(c.LabelSelector)
	if err != nil || sel.Empty() {
		return fmt.Errorf("invalid LABEL_SELECTOR: must be a non-empty Kubernetes label selector")
	}
	c.selector = sel
	for _, v := range []struct {
		name string
		list []string
	}{{"NAMESPACES", c.Namespaces}, {"EXCLUDE_NAMESPACES", c.ExcludeNamespaces}} {
		for _, ns := range v.list {
			if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
				return fmt.Errorf("invalid %s: %q is not a namespace name: %s", v.name, ns, errs[0])
			}
		}
	}
	if c.Kubeconfig != "" {
		// Loaded now, so that a wrong path or a file that is not a
		// kubeconfig stops the process at start like any other value.
		if _, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
			return fmt.Errorf("invalid KUBECONFIG: %s", printableError(err))
		}
	}
	if c.NamespaceSelector != "" {
		sel, err := labels.Parse(c.NamespaceSelector)
		if err != nil || sel.Empty() {
			return fmt.Errorf("invalid NAMESPACE_SELECTOR: must be a non-empty Kubernetes label selector, such as team=web")
		}
		c.nsSelector = sel
	}
	switch c.DeletePolicy {
	case deletePolicyDelete, deletePolicyRetain:
	default:
		return fmt.Errorf("invalid DELETE_POLICY: must be %q or %q, got %q", deletePolicyDelete, deletePolicyRetain, c.DeletePolicy)
	}
	if !(c.KubeQPS > 0 && !math.IsInf(float64(c.KubeQPS), 1) || c.KubeQPS == 0 || c.KubeQPS == -1) { // NaN included
		return fmt.Errorf("invalid KUBE_QPS: must be 0 (automatic), -1 (no limit) or a positive number, got %g", c.KubeQPS)
	}
	if c.KubeBurst < 0 {
		return fmt.Errorf("invalid KUBE_BURST: must be 0 (automatic) or positive, got %d", c.KubeBurst)
	}
	if c.ApplyWorkers < 1 || c.ApplyWorkers > maxApplyWorkers {
		return fmt.Errorf("invalid APPLY_WORKERS: must be between 1 and %d, got %d", maxApplyWorkers, c.ApplyWorkers)
	}
	if c.DeleteGuard < 1 || c.DeleteGuard > 100 {
		return fmt.Errorf("invalid DELETE_GUARD_PERCENT: must be between 1 and 100, got %d", c.DeleteGuard)
	}
	for _, a := range []struct{ name, addr string }{{"METRICS_ADDR", c.MetricsAddr}, {"PPROF_ADDR", c.PprofAddr}} {
		if a.addr == "" {
			continue
		}
		_, port, err := net.SplitHostPort(a.addr)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
			return fmt.Errorf("invalid %s: want host:port or :port with a port from 0 to 65535, got %q", a.name, a.addr)
		}
	}
	if errs := validation.IsDNS1123Subdomain(c.LeaseName); len(errs) > 0 {
		return fmt.Errorf("invalid LEASE_NAME: %s", errs[0])
	}
	// The cursor ConfigMap is named <LEASE_NAME>-state.
	if len(c.LeaseName)+len(stateSuffix) > validation.DNS1123SubdomainMaxLength {
		return fmt.Errorf("invalid LEASE_NAME: at most %d characters, so that %q fits in a name", validation.DNS1123SubdomainMaxLength-len(stateSuffix), "<LEASE_NAME>"+stateSuffix)
	}
	if c.PodNamespace != "" {
		if errs := validation.IsDNS1123Label(c.PodNamespace); len(errs) > 0 {
			return fmt.Errorf("invalid POD_NAMESPACE: %s", errs[0])
		}
	}
	return nil
}

// keyring builds the keyring of ENCRYPTION_KEY and
// PREVIOUS_ENCRYPTION_KEYS. The rules for keys are crypto.go's; this only
// names the variable in the error, never a value.
func (c *Config) keyring() (*Keyring, error) {
	if c.EncryptionKey == "" {
		return nil, errors.New("ENCRYPTION_KEY is required")
	}
	if _, err := NewKeys(c.EncryptionKey); err != nil {
		return nil, fmt.Errorf("invalid ENCRYPTION_KEY: %w", err)
	}
	previous, err := splitKeys(c.PreviousKeys)
	if err != nil {
		return nil, fmt.Errorf("invalid PREVIOUS_ENCRYPTION_KEYS: %w", err)
	}
	keys, err := NewKeyring(c.EncryptionKey, previous...)
	if err != nil {
		return nil, fmt.Errorf("invalid PREVIOUS_ENCRYPTION_KEYS: %w", err)
	}
	return keys, nil
}

// dsnError is the whole message for a DSN that pgx refuses: its parse
// errors can quote the connection string, password included. pgx also
// reads the files the DSN names while parsing it.
const dsnError = "invalid DSN: not a valid PostgreSQL connection string, or a file it names (sslrootcert, sslcert, sslkey, passfile) cannot be read (value not shown)"

// stateSuffix makes the follower's cursor ConfigMap name from LEASE_NAME.
const stateSuffix = "-state"

// dsnWarning returns why the connection to the database described by dsn
// (already validated) is not protected against an attacker on the network,
// or "" when it is, or when the database is on this machine. It names the
// mode, never the DSN.
func dsnWarning(dsn string) string {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return ""
	}
	cc := cfg.ConnConfig
	if local(cc.Host) {
		return ""
	}
	const advice = "; use sslmode=verify-full (with sslrootcert for a private CA) over any network you do not own"
	switch {
	case cc.TLSConfig == nil:
		return "the database connection is not encrypted (sslmode=disable or allow)" + advice
	case slices.ContainsFunc(cc.Fallbacks, func(f *pgconn.FallbackConfig) bool { return f.TLSConfig == nil }):
		return "the database connection may fall back to no encryption (sslmode=prefer, the default when the DSN has none)" + advice
	case cc.TLSConfig.InsecureSkipVerify && cc.TLSConfig.VerifyPeerCertificate == nil:
		return "the database server's certificate is not verified (sslmode=require)" + advice
	case cc.TLSConfig.InsecureSkipVerify:
		return "the database server's host name is not verified (sslmode=verify-ca)" + advice
	}
	return ""
}

// local reports whether host is this machine: a Unix socket or loopback.
func local(host string) bool {
	if strings.HasPrefix(host, "/") || host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// maxApplyWorkers bounds APPLY_WORKERS: beyond a few dozen, concurrent
// calls only queue in the client's rate limiter.
const maxApplyWorkers = 64

// maxTickSeconds bounds TICK_SECONDS to one day.
const maxTickSeconds = 24 * 60 * 60

// Delete policies for a follower's copy whose source is gone.
const (
	deletePolicyDelete = "delete"
	deletePolicyRetain = "retain"
)

// namespaceAllowed applies NAMESPACES, NAMESPACE_SELECTOR and
// EXCLUDE_NAMESPACES: a namespace is synced if it is listed or its labels
// match (with neither set, every namespace is), and it is not excluded.
func (c *Config) namespaceAllowed(ns string) bool {
	if slices.Contains(c.ExcludeNamespaces, ns) {
		return false
	}
	if len(c.Namespaces) == 0 && c.nsSelector == nil {
		return true
	}
	return slices.Contains(c.Namespaces, ns) || c.namespaces.selects(ns)
}

// watchesAll reports whether the Secret watches are cluster-wide: without
// NAMESPACES, or with NAMESPACE_SELECTOR (whose namespaces come and go).
func (c *Config) watchesAll() bool { return len(c.Namespaces) == 0 || c.nsSelector != nil }

// usage prints the --help text: every variable with its default.
func usage() {
	fmt.Fprintf(os.Stderr, "kube-secret-sync %s keeps labelled Secrets identical across Kubernetes clusters\nthrough a shared SQL database, encrypted with AES-256-GCM.\n\nUsage:\n  kube-secret-sync              run the daemon (leader or follower)\n  kube-secret-sync migrate      apply pending database migrations (needs only DSN) and exit\n  kube-secret-sync keygen       print a fresh random key for ENCRYPTION_KEY\n  kube-secret-sync rotate-key   re-encrypt every database row under ENCRYPTION_KEY\n  kube-secret-sync status [-o json]\n                                show the role, the Lease, the writer claim and the lag, with\n                                the daemon's environment; exit 0 when nothing needs attention,\n                                1 when something does, 3 when a server cannot be read\n\nIt is configured by environment variables only:\n\n", version)
	tw := tabwriter.NewWriter(os.Stderr, 0, 4, 2, ' ', 0)
	_ = envconfig.Usagef("", &Config{}, tw, "{{range .}}  {{usage_key .}}\t{{usage_description .}}{{if usage_default .}} (default {{usage_default .}}){{end}}\n{{end}}")
	_ = tw.Flush()
}

// passTimeout bounds one reconcile pass, so that a hung call cannot stall
// the loop forever. It is far longer than a tick: a first pass over a large
// fleet may be limited by KUBE_QPS (1000 creates at 20/s take 50 s), and cutting
// it short would only make the next pass redo the work.
func (c *Config) passTimeout() time.Duration { return max(5*c.Tick(), 5*time.Minute) }

// printableError is err's message on one line, with control characters
// (which a path may hold) quoted.
func printableError(err error) string {
	q := strconv.Quote(err.Error())
	return q[1 : len(q)-1]
}
