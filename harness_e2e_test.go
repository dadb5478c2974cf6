package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// syncTimeout bounds every wait for the daemons: generous, because the
// machines running the tests are shared and -race is slow; a passing wait
// returns as soon as its condition holds.
const syncTimeout = 30 * time.Second

const (
	testKey      = "k8s-secret-sync-test-key-32bytes"
	testPassword = "Db-Passw0rd-never-logged"
)

// syncEnv is one test's slice of the shared servers: a fresh database, a
// synced namespace that exists in the leader's cluster only, and a
// namespace per cluster for the daemons' Lease and cursor.
type syncEnv struct {
	t                testing.TB
	leader, follower *testenv.Cluster
	ns               string
	dsn              string
	sysA, sysB       string
	logs             *syncBuffer
}

func newSyncEnv(t testing.TB) *syncEnv {
	t.Helper()
	cs := testenv.Clusters(t, 2)
	e := &syncEnv{t: t, leader: cs[0], follower: cs[1], logs: &syncBuffer{}}
	e.dsn = withPassword(testenv.PostgresDSN(t), testPassword)
	e.ns = testenv.Namespace(t, e.leader)
	e.sysA = testenv.Namespace(t, e.leader)
	e.sysB = testenv.Namespace(t, e.follower)
	follower := e.follower // a test may swap in its own follower cluster
	t.Cleanup(func() { testenv.DeleteNamespace(t, follower, e.ns) })
	t.Cleanup(func() { e.checkLogs() })
	return e
}

// ownPostgres gives the test a PostgreSQL server of its own, stopped when
// the test ends, for tests that stop or kill it, and points e.dsn at a
// fresh database there.
func (e *syncEnv) ownPostgres(db string) *testenv.Postgres {
	e.t.Helper()
	pg, err := testenv.StartPostgres(e.t.Context())
	if err != nil {
		testenv.Missing(e.t, err)
	}
	e.t.Cleanup(pg.Stop)
	dsn, err := pg.CreateDatabase(e.t.Context(), db)
	if err != nil {
		e.t.Fatal(err)
	}
	e.dsn = withPassword(dsn, testPassword)
	return pg
}

// withPassword adds a password to a DSN. The test server trusts every
// local connection, so any password works, and the logs can be checked
// for it.
func withPassword(dsn, password string) string {
	return strings.Replace(dsn, "postgres://postgres@", "postgres://postgres:"+password+"@", 1)
}

// config returns a daemon configuration for cluster c, as loadConfig
// would build it, with short intervals.
func (e *syncEnv) config(leader bool) *Config {
	e.t.Helper()
	c := &Config{
		DSN:              e.dsn,
		EncryptionKey:    testKey,
		TickSeconds:      1,
		PollSeconds:      0.1,
		ClusterName:      "cluster-a",
		LabelSelector:    "kube-secret-sync=true",
		Namespaces:       []string{e.ns},
		DeletePolicy:     deletePolicyDelete,
		CreateNamespaces: true,
		KubeQPS:          0, // the default: none, as the API server has API Priority and Fairness
		KubeBurst:        0,
		ApplyWorkers:     8,
		DeleteGuard:      50,
		WriterClaim:      3,
		LeaderElection:   true,
		LeaseName:        "kube-secret-sync",
		Kubeconfig:       e.leader.Kubeconfig,
		PodNamespace:     e.sysA,
		PodName:          "leader-0",
	}
	port, err := testenv.FreePort()
	if err != nil {
		e.t.Fatal(err)
	}
	c.MetricsAddr = fmt.Sprintf("127.0.0.1:%d", port)
	if leader {
		c.Leader = "1"
	} else {
		c.Kubeconfig, c.PodNamespace, c.PodName = e.follower.Kubeconfig, e.sysB, "follower-0"
	}
	if err := c.validate(); err != nil {
		e.t.Fatal(err)
	}
	return c
}

// daemon is one running instance of run().
type daemon struct {
	cancel  context.CancelFunc
	done    chan error
	writes  *writeCounter
	metrics string      // address of /metrics
	logs    *syncBuffer // this daemon's own log lines
}

// start runs the daemon until the test ends (or stop is called).
func (e *syncEnv) start(cfg *Config) *daemon { return e.startWrapped(cfg, nil) }

// startWrapped is start with wrap (if not nil) under the daemon's write
// counter on its Kubernetes transport.
func (e *syncEnv) startWrapped(cfg *Config, wrap func(http.RoundTripper) http.RoundTripper) *daemon {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{cancel: cancel, done: make(chan error, 1), writes: &writeCounter{}, metrics: cfg.MetricsAddr, logs: &syncBuffer{}}
	cfg.wrapTransport = d.writes.wrap
	if wrap != nil {
		cfg.wrapTransport = func(rt http.RoundTripper) http.RoundTripper { return d.writes.wrap(wrap(rt)) }
	}
	log := e.logger(cfg.ClusterName, d.logs)
	go func() { d.done <- run(ctx, cfg, log) }()
	e.t.Cleanup(func() { d.stop(e.t) })
	return d
}

// logger is a debug-level JSON logger writing to the test's log, to
// e.logs, which checkLogs searches for secrets, and to more.
func (e *syncEnv) logger(cluster string, more ...io.Writer) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.MultiWriter(append([]io.Writer{e.logs, testWriter{e.t}}, more...)...))
	l.SetFormatter(&logrus.JSONFormatter{})
	l.SetLevel(logrus.DebugLevel)
	return l.WithField("cluster", cluster)
}

// stop cancels the daemon's context, as SIGTERM does, and checks that it
// returns promptly and quietly: a shutdown is not an error, so nothing
// may be logged at error level from the cancel on (a pass cut short by
// it included).
func (d *daemon) stop(t testing.TB) {
	t.Helper()
	before := len(d.logs.String())
	d.cancel()
	select {
	case err, ok := <-d.done:
		if ok {
			if err != nil {
				t.Errorf("run() = %v; want nil after cancel", err)
			}
			close(d.done)
			for line := range strings.Lines(d.logs.String()[before:]) {
				if strings.Contains(line, `"level":"error"`) {
					t.Errorf("error logged during the shutdown: %s", line)
				}
			}
		}
	case <-time.After(30 * time.Second):
		t.Errorf("run() did not return within 30s of cancel")
	}
}

// metric returns the value of one sample of the daemon's /metrics, e.g.
// metric(t, `kube_secret_sync_reconciles_total{kind="full",result="ok"}`),
// or 0 if the sample does not exist yet.
func (d *daemon) metric(t testing.TB, sample string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		return 0 // not serving yet
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", sample, err)
			}
			return f
		}
	}
	return 0
}

// waitMetric waits until sample reaches at least min.
func (d *daemon) waitMetric(t testing.TB, sample string, min float64) {
	t.Helper()
	eventually(t, syncTimeout, func() error {
		if v := d.metric(t, sample); v < min {
			return fmt.Errorf("%s = %v; want >= %v", sample, v, min)
		}
		return nil
	})
}

func (e *syncEnv) startPair() (leader, follower *daemon) {
	return e.start(e.config(true)), e.start(e.config(false))
}

// checkLogs fails the test if a Secret value, the key or the DSN password
// reached the logs.
func (e *syncEnv) checkLogs() {
	logs := e.logs.String()
	for _, secret := range []string{testKey, testPassword, secretValue, "c2VjcmV0LXZhbHVl"} {
		if strings.Contains(logs, secret) {
			e.t.Errorf("logs contain %q", secret)
		}
	}
}

// secretValue appears in test Secrets and must never appear in logs.
const secretValue = "secret-value"

func (e *syncEnv) secrets(c *testenv.Cluster) secretsClient {
	return c.Clientset.CoreV1().Secrets(e.ns)
}

type secretsClient = interface {
	Create(context.Context, *corev1.Secret, metav1.CreateOptions) (*corev1.Secret, error)
	Update(context.Context, *corev1.Secret, metav1.UpdateOptions) (*corev1.Secret, error)
	Delete(context.Context, string, metav1.DeleteOptions) error
	Get(context.Context, string, metav1.GetOptions) (*corev1.Secret, error)
}

func labelled(name string, data map[string]string) *corev1.Secret {
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kube-secret-sync": "true"}},
		Data:       map[string][]byte{},
	}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	return s
}

func mustCreate(t testing.TB, c secretsClient, s *corev1.Secret) *corev1.Secret {
	t.Helper()
	got, err := c.Create(t.Context(), s, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create %s: %v", s.Name, err)
	}
	return got
}

// mustModify reads, changes and writes back a Secret, retrying conflicts.
func mustModify(t testing.TB, c secretsClient, name string, change func(*corev1.Secret)) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		s, err := c.Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(s)
		_, err = c.Update(t.Context(), s, metav1.UpdateOptions{})
		return err
	})
}

// eventually polls cond every 20ms until it returns nil, the timeout
// passes or the test's context ends.
func eventually(tb testing.TB, timeout time.Duration, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("condition not met within %v: %v", timeout, err)
		}
		select {
		case <-tb.Context().Done():
			tb.Fatal(tb.Context().Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// copyMatches compares the follower's copy with the source field by field:
// type, data, immutable, carried labels and annotations; plus the marks.
func copyMatches(src, dst *corev1.Secret) error {
	if dst.Type != src.Type {
		return fmt.Errorf("type = %q; want %q", dst.Type, src.Type)
	}
	if !maps.EqualFunc(dst.Data, src.Data, bytes.Equal) {
		return fmt.Errorf("data keys = %v; want %v", keysOf(dst.Data), keysOf(src.Data))
	}
	if a, b := dst.Immutable != nil && *dst.Immutable, src.Immutable != nil && *src.Immutable; a != b {
		return fmt.Errorf("immutable = %v; want %v", a, b)
	}
	wantLabels := filterKeys(src.Labels)
	if wantLabels == nil {
		wantLabels = map[string]string{}
	}
	wantLabels[managedLabel] = "true"
	if !maps.Equal(dst.Labels, wantLabels) {
		return fmt.Errorf("labels = %v; want %v", dst.Labels, wantLabels)
	}
	gotAnn := maps.Clone(dst.Annotations)
	for _, k := range []string{lastUpdatedAnnotation, sourceAnnotation, versionAnnotation} {
		if _, ok := gotAnn[k]; !ok {
			return fmt.Errorf("annotation %s missing", k)
		}
		delete(gotAnn, k)
	}
	if want := filterKeys(src.Annotations); !maps.Equal(gotAnn, want) {
		return fmt.Errorf("annotations = %v; want %v", gotAnn, want)
	}
	if len(dst.OwnerReferences) > 0 || len(dst.Finalizers) > 0 {
		return fmt.Errorf("copy has ownerReferences %v / finalizers %v", dst.OwnerReferences, dst.Finalizers)
	}
	return nil
}

func keysOf[V any](m map[string]V) []string { return appendSortedKeys(nil, m) }

// waitSynced waits until the follower's copy of name equals the leader's.
func (e *syncEnv) waitSynced(name string) *corev1.Secret {
	e.t.Helper()
	var dst *corev1.Secret
	eventually(e.t, syncTimeout, func() error {
		src, err := e.secrets(e.leader).Get(e.t.Context(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		dst, err = e.secrets(e.follower).Get(e.t.Context(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		return copyMatches(src, dst)
	})
	return dst
}

// waitEvent waits for an Event with reason on the Secret name in the
// follower's cluster, and returns its message.
func (e *syncEnv) waitEvent(name, reason string) string {
	e.t.Helper()
	return e.waitEventIn(e.follower, name, reason)
}

// waitEventIn waits for an Event with reason on the Secret name in c, and
// returns its message.
func (e *syncEnv) waitEventIn(c *testenv.Cluster, name, reason string) string {
	e.t.Helper()
	var msg string
	eventually(e.t, syncTimeout, func() error {
		evs, err := c.Clientset.CoreV1().Events(e.ns).List(e.t.Context(), metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Secret,involvedObject.name=" + name + ",reason=" + reason,
		})
		if err != nil {
			return err
		}
		if len(evs.Items) == 0 {
			return fmt.Errorf("no %s Event for %s in %s yet", reason, name, c.Name)
		}
		msg = evs.Items[0].Message
		return nil
	})
	return msg
}

func (e *syncEnv) waitGone(name string) {
	e.t.Helper()
	eventually(e.t, syncTimeout, func() error {
		_, err := e.secrets(e.follower).Get(e.t.Context(), name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("copy %s still exists (err %v)", name, err)
	})
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testWriter sends daemon logs to the test log (shown on failure or -v).
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // a log line after the test ended
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// writeCounter counts the requests a daemon makes that change Secrets,
// Namespaces or ConfigMaps (Lease renewals and Events are not counted),
// and its single reads of Secrets (GETs that are not a list or a watch).
type writeCounter struct {
	secrets, other, secretReads atomic.Int64
}

func (w *writeCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodGet && !strings.HasSuffix(r.URL.Path, "/secrets") && strings.Contains(r.URL.Path, "/secrets/") {
			w.secretReads.Add(1)
		}
		if r.Method != http.MethodGet {
			switch {
			case strings.Contains(r.URL.Path, "/secrets"):
				w.secrets.Add(1)
			case strings.Contains(r.URL.Path, "/configmaps"), strings.HasSuffix(r.URL.Path, "/namespaces"):
				w.other.Add(1)
			}
		}
		return rt.RoundTrip(r)
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// dbConn opens a direct connection to the test's database.
func (e *syncEnv) dbConn() *pgx.Conn {
	e.t.Helper()
	return testenv.MustConnect(e.t, e.dsn)
}
