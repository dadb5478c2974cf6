package main

// Benchmarks of the sync against the real components (make bench). Each
// reports its throughput; ratios compare two ways of doing the same work
// measured in the same run, which is what stays meaningful on a noisy
// shared machine.

import (
	crand "crypto/rand"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// benchSecrets is the fleet size of the reconcile benchmarks.
const benchSecrets = 1000

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

// mustCreateMany creates n labelled Secrets of a TLS certificate's size in the leader's namespace.
func (e *syncEnv) mustCreateMany(prefix string, n int) {
	e.t.Helper()
	src := e.secrets(e.leader)
	for i := range n {
		s := labelled(fmt.Sprintf("%s-%d", prefix, i), nil)
		s.Data["tls.crt"] = make([]byte, 3000)
		s.Data["tls.key"] = make([]byte, 1700)
		mustCreate(e.t, src, s)
	}
}

func (e *syncEnv) mustStore(cfg *Config) *Store {
	e.t.Helper()
	store, err := OpenStore(e.t.Context(), cfg.DSN)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(store.Close)
	if err := store.Migrate(e.t.Context(), "bench"); err != nil {
		e.t.Fatal(err)
	}
	return store
}

// BenchmarkEndToEnd measures how fast Secrets created in the leader's
// cluster appear in the follower's: 100 per operation, through both
// daemons' real loops, PostgreSQL and two kube-apiservers. secrets/s
// includes the benchmark's own creates (one API call each); the tail is
// the time from the last create until every copy exists.
func BenchmarkEndToEnd(b *testing.B) {
	e := newSyncEnv(b)
	leader, follower := e.config(true), e.config(false)
	follower.PollSeconds = 0.1
	e.start(leader)
	e.start(follower)
	const batch = 100
	round := 0
	var tail time.Duration
	start := time.Now()
	for b.Loop() {
		round++
		e.mustCreateMany(fmt.Sprintf("r%d", round), batch)
		created := time.Now()
		eventually(b, 2*time.Minute, func() error {
			list, err := e.follower.Clientset.CoreV1().Secrets(e.ns).List(b.Context(), metav1.ListOptions{LabelSelector: managedLabel + "=true"})
			if err != nil {
				return err
			}
			if len(list.Items) < round*batch {
				return fmt.Errorf("%d of %d copies", len(list.Items), round*batch)
			}
			return nil
		})
		tail += time.Since(created)
	}
	b.ReportMetric(float64(round*batch)/time.Since(start).Seconds(), "secrets/s")
	b.ReportMetric(tail.Seconds()*1000/float64(round), "ms-last-create-to-all-synced")
}

// deps is what a loop for cfg is given, with a quiet logger and metrics of
// its own, for benchmarks that drive one pass at a time.
func (e *syncEnv) deps(cfg *Config, store *Store, client kubernetes.Interface) loopDeps {
	e.t.Helper()
	keys, err := cfg.keyring()
	if err != nil {
		e.t.Fatal(err)
	}
	return loopDeps{cfg: cfg, keys: keys, log: quietLog(), store: store, client: client, metrics: newMetrics()}
}

// daemonClient is a client of cfg's cluster with the daemon's own
// settings (restConfig, setClientLimits).
func (e *syncEnv) daemonClient(cfg *Config) kubernetes.Interface {
	e.t.Helper()
	rc, err := restConfig(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	setClientLimits(e.t.Context(), rc, cfg, quietLog())
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		e.t.Fatal(err)
	}
	return client
}

// BenchmarkLeaderIdlePass measures the leader's full reconcile of a fleet
// that has not changed (the database's bucket digests against the index's,
// a slice of the ciphertexts' hashes compared; with no Secret and no row
// changed, no Secret compared with its row; nothing written), against the
// pass that first read and stored the fleet.
func BenchmarkLeaderIdlePass(b *testing.B) {
	e := newSyncEnv(b)
	cfg := e.config(true)
	e.mustCreateMany("s", benchSecrets)
	store := e.mustStore(cfg)
	// The daemon's client, without a client-side rate limit against an
	// API server with API Priority and Fairness: the first pass GETs the
	// Secrets of its first, short transaction one by one, which the test
	// clusters' client, drained by the creates, held to 200 a second (a
	// second of the first pass).
	l := newLeaderLoop(e.deps(cfg, store, e.daemonClient(cfg)), claimFor(b, store, cfg.ClusterName))
	if err := l.startWatch(b.Context()); err != nil {
		b.Fatal(err)
	}
	first := time.Now()
	if _, err := l.reconcileFull(b.Context()); err != nil {
		b.Fatal(err)
	}
	storing := time.Since(first)
	before, _ := store.MaxVersion(b.Context())
	for b.Loop() {
		if _, err := l.reconcileFull(b.Context()); err != nil {
			b.Fatal(err)
		}
	}
	if after, _ := store.MaxVersion(b.Context()); after != before {
		b.Fatalf("idle passes wrote: version %d -> %d", before, after)
	}
	idle := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(benchSecrets)/idle.Seconds(), "secrets/s")
	b.ReportMetric(storing.Seconds()*1000, "ms-first-pass")
	b.ReportMetric(float64(storing)/float64(idle), "first/idle-ratio")
}

// BenchmarkFollowerIdlePass measures the follower's full reconcile of a
// fleet that is in sync: the copies from the watched cache, the database's
// bucket digests against the index's, a cached hash compared per copy, and
// nothing decrypted or written. The ratio compares it with only decrypting
// every row, the work the hash check saves.
func BenchmarkFollowerIdlePass(b *testing.B) {
	e := newSyncEnv(b)
	e.mustCreateMany("s", benchSecrets)
	l, store := e.watchingLeader()
	if _, err := l.reconcileFull(b.Context()); err != nil {
		b.Fatal(err)
	}
	cfg := e.config(false)
	f := newFollowerLoop(e.deps(cfg, store, e.daemonClient(cfg)))
	if err := f.startWatch(b.Context()); err != nil {
		b.Fatal(err)
	}
	if _, err := f.reconcileFull(b.Context()); err != nil { // creates the copies
		b.Fatal(err)
	}
	eventually(b, syncTimeout, func() error { // until the watch has seen them all
		if n := len(f.copies.list()); n < benchSecrets {
			return fmt.Errorf("%d copies cached", n)
		}
		return nil
	})
	rows, err := store.Pull(b.Context(), Cursor{}, benchSecrets+1)
	if err != nil {
		b.Fatal(err)
	}
	openStart := time.Now()
	for i := range rows {
		if _, err := f.keys.Open(rows[i].Binding(), rows[i].KeyID, rows[i].Ciphertext); err != nil {
			b.Fatal(err)
		}
	}
	openAll := time.Since(openStart)
	b.ResetTimer()
	for b.Loop() {
		if _, err := f.reconcileFull(b.Context()); err != nil {
			b.Fatal(err)
		}
	}
	idle := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(benchSecrets)/idle.Seconds(), "secrets/s")
	b.ReportMetric(openAll.Seconds()*1000, "ms-decrypt-all")
	b.ReportMetric(float64(openAll)/float64(idle), "decrypt-all/idle-pass")
}

func benchmarkKeys() []ObjectKey {
	keys := make([]ObjectKey, benchmarkRows)
	for i := range keys {
		keys[i] = ObjectKey{fmt.Sprintf("ns-%02d", i%50), fmt.Sprintf("secret-%05d", i)}
	}
	return keys
}

// benchmarkCiphertext is a sealed 4 KiB TLS Secret's size; its content does
// not matter to the database.
func benchmarkCiphertext(tb testing.TB) []byte {
	ct := make([]byte, 4096)
	if _, err := crand.Read(ct); err != nil {
		tb.Fatal(err)
	}
	return ct
}

// BenchmarkWrite upserts chunks of writeChunk rows with 4 KiB ciphertexts,
// every one a change, over a table of benchmarkRows rows.
func BenchmarkWrite(b *testing.B) {
	s := mustMigratedStore(b)
	keys := benchmarkKeys()
	ct := benchmarkCiphertext(b)
	seal := func(int64, *Change) ([]byte, error) { return ct, nil }
	changes := make([]Change, writeChunk)
	payload := &Payload{}
	var rows, n int
	b.SetBytes(int64(writeChunk * len(ct)))
	claim := claimFor(b, s, dbTestCluster)
	for b.Loop() {
		for i := range changes {
			// Size as the leader estimates it.
			changes[i] = Change{ObjectKey: keys[(n*writeChunk+i)%len(keys)], Hash: hashOf(uint64(n)), Payload: payload, Size: len(ct)}
		}
		if _, err := s.Write(b.Context(), claim, "kid", changes, seal); err != nil {
			b.Fatal(err)
		}
		rows += len(changes)
		n++
	}
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkPull reads a table of benchmarkRows rows with 4 KiB ciphertexts
// from the start, a page of pullPage rows at a time, as a new follower does.
func BenchmarkPull(b *testing.B) {
	s := mustMigratedStore(b)
	keys := benchmarkKeys()
	ct := benchmarkCiphertext(b)
	seal := func(int64, *Change) ([]byte, error) { return ct, nil }
	changes := make([]Change, len(keys))
	for i, k := range keys {
		changes[i] = Change{ObjectKey: k, Hash: hashOf(uint64(i)), Payload: &Payload{}}
	}
	mustWrite(b, s, changes, seal)
	var rows int
	b.SetBytes(int64(len(keys) * len(ct)))
	for b.Loop() {
		got := mustPullAll(b, s, Cursor{}, pullPage)
		if len(got) != len(keys) {
			b.Fatalf("pulled %d rows; want %d", len(got), len(keys))
		}
		rows += len(got)
	}
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
}
