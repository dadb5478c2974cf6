package main

// Failover between leaders, with three real clusters: a writer, a standby
// leader and a plain follower, and the database's writer claim between
// them (claim.go, failover.go).

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// failoverEnv is a syncEnv with a third cluster, sb, for a standby leader.
type failoverEnv struct {
	*syncEnv
	sb *testenv.Cluster
	db *Store // the test's own connections, for reading the claim and rows
}

func newFailoverEnv(t *testing.T) *failoverEnv {
	e := newSyncEnv(t)
	sb := testenv.Clusters(t, 3)[2]
	t.Cleanup(func() { testenv.DeleteNamespace(t, sb, e.ns) })
	return &failoverEnv{syncEnv: e, sb: sb, db: mustOpenStore(t, e.dsn)}
}

// leaderOn is a leader's configuration for cluster c under name.
func (e *failoverEnv) leaderOn(c *testenv.Cluster, name string) *Config {
	cfg := e.config(true)
	cfg.ClusterName, cfg.Kubeconfig, cfg.PodName = name, c.Kubeconfig, name+"-0"
	cfg.PodNamespace = testenv.Namespace(e.t, c)
	return cfg
}

// env is cfg as the binary's environment.
func (cfg *Config) env() []string {
	return []string{"DSN=" + cfg.DSN, "ENCRYPTION_KEY=" + cfg.EncryptionKey, "LEADER=" + cfg.Leader,
		fmt.Sprintf("TICK_SECONDS=%d", cfg.TickSeconds), fmt.Sprintf("POLL_SECONDS=%g", cfg.PollSeconds),
		fmt.Sprintf("WRITER_CLAIM_SECONDS=%g", cfg.WriterClaim), "CLUSTER_NAME=" + cfg.ClusterName,
		"NAMESPACES=" + cfg.Namespaces[0], "KUBECONFIG=" + cfg.Kubeconfig, "POD_NAMESPACE=" + cfg.PodNamespace,
		"POD_NAME=" + cfg.PodName, "METRICS_ADDR=" + cfg.MetricsAddr}
}

// proc is the real binary, which a test may SIGKILL, SIGSTOP or SIGCONT.
type proc struct {
	cmd  *exec.Cmd
	out  syncBuffer
	done chan error
	err  error
}

func startProc(t *testing.T, bin string, cfg *Config) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin), done: make(chan error)}
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, cfg.env()...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
			return // killed by the test
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			if p.err != nil {
				t.Errorf("%s exited with %v after SIGTERM", cfg.ClusterName, p.err)
			}
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			t.Errorf("%s did not stop within 30s of SIGTERM", cfg.ClusterName)
		}
		if t.Failed() {
			t.Logf("%s:\n%s", cfg.ClusterName, tail(p.out.String(), 6000))
		}
	})
	return p
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// claimHolder reads the writer claim: the zero ClaimState until the
// first daemon has migrated the database (no table yet, or the table
// without its row: migration 0002 creates one, then inserts the other).
func (e *failoverEnv) claimHolder() ClaimState {
	e.t.Helper()
	c, err := e.db.ReadClaim(e.t.Context())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" || errors.Is(err, pgx.ErrNoRows) {
		return ClaimState{}
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// waitWriter waits until name holds the claim, and returns when it was seen.
func (e *failoverEnv) waitWriter(name string, timeout time.Duration) ClaimState {
	e.t.Helper()
	var c ClaimState
	eventually(e.t, timeout, func() error {
		if c = e.claimHolder(); c.Holder != name {
			return fmt.Errorf("writer claim held by %q (epoch %d); want %s", c.Holder, c.Epoch, name)
		}
		return nil
	})
	return c
}

// rowSnapshot is every row's version, source and ciphertext.
func (e *failoverEnv) rowSnapshot() map[string]string {
	e.t.Helper()
	rows, err := e.db.pool.Query(e.t.Context(), `SELECT namespace || '/' || name, version, source_cluster, writer_epoch, ciphertext FROM kss_secrets`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var key, source string
		var version, epoch int64
		var ct []byte
		if err := rows.Scan(&key, &version, &source, &epoch, &ct); err != nil {
			e.t.Fatal(err)
		}
		out[key] = fmt.Sprintf("v%d %s epoch %d %x", version, source, epoch, ct)
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// checkEpochs fails the test unless, in version (commit) order, the
// writers' epochs never go down and each epoch has one writer: no two
// writers committed in one epoch, and none after a later epoch began.
func (e *failoverEnv) checkEpochs() {
	e.t.Helper()
	rows, err := e.db.pool.Query(e.t.Context(), `SELECT version, writer_epoch, source_cluster FROM kss_secrets ORDER BY version`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	writers := map[int64]string{}
	var last int64
	for rows.Next() {
		var version, epoch int64
		var source string
		if err := rows.Scan(&version, &epoch, &source); err != nil {
			e.t.Fatal(err)
		}
		if epoch < last {
			e.t.Errorf("row version %d written in epoch %d, after a row of epoch %d", version, epoch, last)
		}
		if w, ok := writers[epoch]; ok && w != source {
			e.t.Errorf("epoch %d has two writers: %s and %s", epoch, w, source)
		}
		writers[epoch], last = source, epoch
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
}

// waitCopy waits until the Secret name in c holds data k = value.
func (e *failoverEnv) waitCopy(c *testenv.Cluster, name, k, value string) {
	e.t.Helper()
	eventually(e.t, syncTimeout, func() error {
		s, err := e.secrets(c).Get(e.t.Context(), name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("%s in %s: %w", name, c.Name, err)
		}
		if got := string(s.Data[k]); got != value {
			return fmt.Errorf("%s in %s: %s = %q; want %q", name, c.Name, k, got, value)
		}
		return nil
	})
}

// waitGoneIn waits until the Secret name is gone from c.
func (e *failoverEnv) waitGoneIn(c *testenv.Cluster, name string) {
	e.t.Helper()
	eventually(e.t, syncTimeout, func() error {
		if _, err := e.secrets(c).Get(e.t.Context(), name, metav1.GetOptions{}); err == nil {
			return fmt.Errorf("%s still in %s", name, c.Name)
		}
		return nil
	})
}

// TestStandbyTakesOverAfterSIGKILL: the writer (cluster a) is SIGKILLed.
// The standby leader (cluster sb), whose cluster already holds current
// copies, takes the claim over within its expiry plus a tick, and changes
// made in its cluster (an update, a delete) reach the plain follower. The
// old leader, restarted unchanged, writes nothing and converges as a
// standby: its former source is replaced by the new writer's row, and the
// Secret the new writer deleted goes.
func TestStandbyTakesOverAfterSIGKILL(t *testing.T) {
	testenv.SkipShort(t)
	bin := buildBinary(t)
	e := newFailoverEnv(t)
	a, sb := e.leaderOn(e.leader, "cluster-a"), e.leaderOn(e.sb, "cluster-sb")
	for _, n := range []string{"kept", "changed", "deleted"} {
		mustCreate(t, e.secrets(e.leader), labelled(n, map[string]string{"k": "from-a"}))
	}
	writer := startProc(t, bin, a)
	e.waitWriter("cluster-a", syncTimeout)
	standby := e.start(sb)
	e.start(e.config(false))
	for _, n := range []string{"kept", "changed", "deleted"} {
		e.waitSynced(n)
		e.waitCopy(e.sb, n, "k", "from-a")
	}
	standby.waitMetric(t, "kube_secret_sync_writer_epoch", 1)
	if v := standby.metric(t, "kube_secret_sync_writer"); v != 0 {
		t.Errorf("standby: kube_secret_sync_writer = %v; want 0", v)
	}
	// status says so too.
	stdout, stderr, code := runBinary(t, bin, sb.env(), "status")
	if code != statusOK || !strings.Contains(stdout, "leader (standby)") || !strings.Contains(stdout, "cluster-a, epoch 1") || !strings.Contains(stdout, "cursor:") {
		t.Errorf("standby's status: exit %d; want 0, role leader (standby), the writer cluster-a and its cursor:\n%s%s", code, stdout, stderr)
	}

	writer.kill()
	killed := time.Now()
	taken := e.waitWriter("cluster-sb", 2*time.Minute)
	took := time.Since(killed)
	t.Logf("the standby took the claim over %v after the SIGKILL (claim %gs, tick %ds), epoch %d", took.Round(time.Millisecond), sb.WriterClaim, sb.TickSeconds, taken.Epoch)
	if limit := sb.ClaimTTL() + sb.Tick() + time.Second; took > limit {
		t.Errorf("takeover took %v; want at most the claim's expiry plus one tick (%v, with 1s to spare)", took, limit)
	}

	// Its first full pass as the writer takes over every row it holds a
	// current copy of; from then on its deletes propagate.
	eventually(t, syncTimeout, func() error {
		for _, n := range []string{"kept", "changed", "deleted"} {
			if r := e.readRow(n); r.SourceCluster != "cluster-sb" {
				return fmt.Errorf("row %s still from %q", n, r.SourceCluster)
			}
		}
		return nil
	})
	mustModify(t, e.secrets(e.sb), "changed", func(s *corev1.Secret) { s.Data["k"] = []byte("from-sb") })
	if err := e.secrets(e.sb).Delete(t.Context(), "deleted", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitCopy(e.follower, "changed", "k", "from-sb")
	e.waitGoneIn(e.follower, "deleted")
	e.waitCopy(e.follower, "kept", "k", "from-a")
	standby.waitMetric(t, "kube_secret_sync_writer", 1)

	// The old leader comes back unchanged: it writes nothing.
	before := e.rowSnapshot()
	back := startProc(t, bin, a)
	backMetrics := &daemon{metrics: a.MetricsAddr}
	backMetrics.waitMetric(t, `kube_secret_sync_reconciles_total{kind="full",result="ok"}`, 3)
	if after := e.rowSnapshot(); !maps.Equal(before, after) {
		t.Errorf("the old leader, back as a standby, changed rows:\nbefore %v\nafter  %v", before, after)
	}
	if v := backMetrics.metric(t, "kube_secret_sync_writer"); v != 0 {
		t.Errorf("old leader: kube_secret_sync_writer = %v; want 0 (standby)", v)
	}
	if !bytes.Contains([]byte(back.out.String()), []byte("standby")) {
		t.Errorf("the old leader does not say it is on standby")
	}
	// ...and its cluster follows the new writer.
	e.waitCopy(e.leader, "changed", "k", "from-sb")
	e.waitGoneIn(e.leader, "deleted")
	e.checkEpochs()
}

// TestLeadersStartedTogetherOneWrites: two leaders started at the same
// instant, each with a labelled Secret of its own: exactly one of them
// writes, and the other's cluster follows it.
func TestLeadersStartedTogetherOneWrites(t *testing.T) {
	testenv.SkipShort(t)
	e := newFailoverEnv(t)
	mustCreateNamespace(t, e.sb, e.ns)
	a, sb := e.leaderOn(e.leader, "cluster-a"), e.leaderOn(e.sb, "cluster-sb")
	mustCreate(t, e.secrets(e.leader), labelled("only-in-a", map[string]string{"k": "a"}))
	mustCreate(t, e.secrets(e.sb), labelled("only-in-sb", map[string]string{"k": "sb"}))
	start := make(chan struct{})
	done := make(chan *daemon, 2)
	for _, cfg := range []*Config{a, sb} {
		go func() { <-start; done <- e.start(cfg) }()
	}
	close(start)
	<-done
	<-done
	var winner string
	eventually(t, syncTimeout, func() error {
		if winner = e.claimHolder().Holder; winner == "" {
			return errors.New("no writer yet")
		}
		return nil
	})
	loser, loserCluster, mine := "cluster-sb", e.sb, "only-in-a"
	if winner == "cluster-sb" {
		loser, loserCluster, mine = "cluster-a", e.leader, "only-in-sb"
	}
	// The winner's Secret reaches the loser's cluster...
	e.waitCopy(loserCluster, mine, "k", map[string]string{"only-in-a": "a", "only-in-sb": "sb"}[mine])
	// ...and the loser wrote nothing, not even its own Secret.
	for key, row := range e.rowSnapshot() {
		if !bytes.Contains([]byte(row), []byte(" "+winner+" ")) {
			t.Errorf("row %s: %s; want it written by the writer %s, not %s", key, row, winner, loser)
		}
	}
	e.checkEpochs()
}

// TestPausedWriterIsFenced: the writer's process is paused (SIGSTOP) past
// its claim's expiry, so the standby takes over and writes; the old
// writer, resumed with a change of its own to write, commits nothing (no
// two writers in one epoch, no row of its epoch after the new one's) and
// becomes a standby.
func TestPausedWriterIsFenced(t *testing.T) {
	testenv.SkipShort(t)
	bin := buildBinary(t)
	e := newFailoverEnv(t)
	a, sb := e.leaderOn(e.leader, "cluster-a"), e.leaderOn(e.sb, "cluster-sb")
	mustCreate(t, e.secrets(e.leader), labelled("s", map[string]string{"k": "v1"}))
	writer := startProc(t, bin, a)
	e.waitWriter("cluster-a", syncTimeout)
	standby := e.start(sb)
	e.start(e.config(false))
	e.waitCopy(e.sb, "s", "k", "v1")

	if err := writer.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Changed in a while its writer is paused: the paused writer's watch
	// delivers the change when it resumes, and its write must fail.
	mustModify(t, e.secrets(e.leader), "s", func(s *corev1.Secret) { s.Data["k"] = []byte("from-paused-a") })
	e.waitWriter("cluster-sb", 2*time.Minute)
	mustCreate(t, e.secrets(e.sb), labelled("new-in-sb", map[string]string{"k": "sb"}))
	e.waitCopy(e.follower, "new-in-sb", "k", "sb")
	standby.waitMetric(t, "kube_secret_sync_writer", 1)

	before := e.rowSnapshot()
	if err := writer.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := &daemon{metrics: a.MetricsAddr}
	eventually(t, syncTimeout, func() error {
		if v := resumed.metric(t, "kube_secret_sync_writer"); v != 0 {
			return fmt.Errorf("resumed writer: kube_secret_sync_writer = %v; want 0", v)
		}
		return nil
	})
	resumed.waitMetric(t, `kube_secret_sync_reconciles_total{kind="full",result="ok"}`, resumed.metric(t, `kube_secret_sync_reconciles_total{kind="full",result="ok"}`)+2)
	if after := e.rowSnapshot(); !maps.Equal(before, after) {
		t.Errorf("the resumed writer changed rows:\nbefore %v\nafter  %v", before, after)
	}
	e.waitCopy(e.follower, "s", "k", "v1")
	e.checkEpochs()
}

// TestTakeoverOwnsTheCopiesItHeld: a copy that the standby's cluster held
// at the row's version when it took the claim is the new writer's from
// then on, even if it is deleted before the new writer's first full pass
// (between the catch-up and the start of its watch): the delete
// propagates, as a tombstone of the new writer.
func TestTakeoverOwnsTheCopiesItHeld(t *testing.T) {
	testenv.SkipShort(t)
	e := newFailoverEnv(t)
	a, sb := e.leaderOn(e.leader, "cluster-a"), e.leaderOn(e.sb, "cluster-sb")
	for _, n := range []string{"kept", "deleted-at-takeover"} {
		mustCreate(t, e.secrets(e.leader), labelled(n, map[string]string{"k": "from-a"}))
	}
	writer := e.start(a)
	e.waitWriter("cluster-a", syncTimeout)

	// The standby, in process, so that the test acts between its catch-up
	// and its first pass as the writer.
	d := e.deps(sb, e.db, e.sb.Clientset)
	type result struct {
		held *heldClaim
		err  error
	}
	promoted := make(chan result, 1)
	go func() { h, err := standBy(t.Context(), d, false); promoted <- result{h, err} }()
	for _, n := range []string{"kept", "deleted-at-takeover"} {
		e.waitCopy(e.sb, n, "k", "from-a")
	}
	writer.stop(t) // releases the claim
	r := receive(t, promoted, 2*time.Minute, "the standby's takeover")
	if r.held == nil {
		t.Fatalf("standBy returned no claim: %v", r.err)
	}
	defer r.held.stop()
	if err := e.secrets(e.sb).Delete(t.Context(), "deleted-at-takeover", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	l := newLeaderLoop(d, r.held.claim)
	l.inherited = r.held.inherited
	if err := l.startWatch(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := l.reconcileFull(t.Context()); err != nil {
		t.Fatal(err)
	}
	if row := e.readRow("deleted-at-takeover"); !row.Tombstone || row.SourceCluster != "cluster-sb" {
		t.Errorf("row of the Secret deleted at takeover: tombstone %v from %q; want a tombstone from cluster-sb", row.Tombstone, row.SourceCluster)
	}
	if row := e.readRow("kept"); row.Tombstone || row.SourceCluster != "cluster-sb" {
		t.Errorf("row of the kept Secret: tombstone %v from %q; want it live, taken over by cluster-sb", row.Tombstone, row.SourceCluster)
	}
}
