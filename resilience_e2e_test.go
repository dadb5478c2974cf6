package main

// Tests of what goes wrong: bad rows, a wrong key, outages, restarts, hand
// edits; and of what must not happen: writes on an idle tick.

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

const fullOK = `kube_secret_sync_reconciles_total{kind="full",result="ok"}`

// tamper rewrites a stored row the way a database writer could: it takes a
// new version from the counter so that followers pull the row again, and
// lets edit change the row.
func (e *syncEnv) tamper(name string, edit func(r *Row)) {
	e.t.Helper()
	ctx := e.t.Context()
	conn := e.dbConn()
	var r Row
	err := conn.QueryRow(ctx, `SELECT namespace, name, ciphertext, key_id, hash, tombstone, version, source_cluster FROM kss_secrets WHERE namespace = $1 AND name = $2`,
		e.ns, name).Scan(&r.Namespace, &r.Name, &r.Ciphertext, &r.KeyID, &r.Hash, &r.Tombstone, &r.Version, &r.SourceCluster)
	if err != nil {
		e.t.Fatalf("read row %s: %v", name, err)
	}
	if err := conn.QueryRow(ctx, `UPDATE kss_version SET version = version + 1 WHERE id = 1 RETURNING version`).Scan(&r.Version); err != nil {
		e.t.Fatal(err)
	}
	edit(&r)
	_, err = conn.Exec(ctx, `
INSERT INTO kss_secrets (namespace, name, ciphertext, key_id, hash, tombstone, version, source_cluster)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (namespace, name) DO UPDATE SET ciphertext = excluded.ciphertext, key_id = excluded.key_id,
  hash = excluded.hash, tombstone = excluded.tombstone, version = excluded.version, source_cluster = excluded.source_cluster`,
		r.Namespace, r.Name, r.Ciphertext, r.KeyID, r.Hash, r.Tombstone, r.Version, r.SourceCluster)
	if err != nil {
		e.t.Fatalf("write row %s: %v", name, err)
	}
}

func TestBadRowsAreSkipped(t *testing.T) {
	e := newSyncEnv(t)
	leader, follower := e.startPair()
	src := e.secrets(e.leader)
	for _, n := range []string{"tampered", "swapped", "flipped", "good"} {
		mustCreate(t, src, labelled(n, map[string]string{"k": secretValue + "-" + n}))
	}
	for _, n := range []string{"tampered", "swapped", "flipped", "good"} {
		e.waitSynced(n)
	}
	before := map[string]*corev1.Secret{}
	for _, n := range []string{"tampered", "swapped", "flipped"} {
		before[n], _ = e.secrets(e.follower).Get(t.Context(), n, metav1.GetOptions{})
	}
	// The leader's verification would heal the rows before the follower
	// has met them all: it comes back once they have.
	leader.stop(t)

	// One bit flipped in the ciphertext.
	e.tamper("tampered", func(r *Row) { r.Ciphertext[len(r.Ciphertext)-1] ^= 1 })
	// Another row's ciphertext moved under this name.
	var good Row
	e.tamper("good", func(r *Row) { good = *r })
	e.tamper("swapped", func(r *Row) { r.Ciphertext = good.Ciphertext; r.Hash = good.Hash })
	// The tombstone flag flipped to delete a Secret.
	e.tamper("flipped", func(r *Row) { r.Tombstone = true })
	// A row sealed under another key, correctly bound.
	other, err := NewKeys("another-key-another-key-another!")
	if err != nil {
		t.Fatal(err)
	}
	e.tamper("good", func(r *Row) {
		p := &Payload{Type: "Opaque", Data: map[string][]byte{"k": []byte("forged")}, UpdatedAt: time.Now()}
		r.Ciphertext, err = other.Seal(rand.Reader, r.Binding(), p)
		r.KeyID, r.Hash = other.ID(), other.Hash(r.Namespace, r.Name, p)
	})
	if err != nil {
		t.Fatal(err)
	}
	follower.waitMetric(t, `kube_secret_sync_row_errors_total{reason="tampered"}`, 3)
	follower.waitMetric(t, `kube_secret_sync_row_errors_total{reason="wrong_key"}`, 1)

	// The rest keeps syncing.
	e.start(e.config(true))
	mustCreate(t, src, labelled("after", map[string]string{"k": "v"}))
	e.waitSynced("after")
	// A full pass retries the bad rows; the leader's full pass finds them
	// (by their changed hash or tombstone flag, or by verifying them) and
	// rewrites them, which heals those rows.
	n := follower.metric(t, fullOK)
	follower.waitMetric(t, fullOK, n+1)
	for name, want := range before {
		got := e.waitSynced(name)
		if got.UID != want.UID {
			t.Errorf("copy %s was deleted and recreated because of a bad row", name)
		}
	}
	if got, err := e.secrets(e.follower).Get(t.Context(), "good", metav1.GetOptions{}); err != nil || string(got.Data["k"]) == "forged" {
		t.Errorf("copy good: %v, forged data applied = %v", err, err == nil && string(got.Data["k"]) == "forged")
	}
}

func TestFollowerWithWrongKeyAppliesAndDeletesNothing(t *testing.T) {
	e := newSyncEnv(t)
	leader := e.start(e.config(true))
	src := e.secrets(e.leader)
	mustCreate(t, src, labelled("a", map[string]string{"k": secretValue}))
	mustCreate(t, src, labelled("b", map[string]string{"k": secretValue}))
	leader.waitMetric(t, "kube_secret_sync_rows_written_total", 2)
	// A managed copy from earlier times, whose source is now deleted:
	// the tombstone must not be honoured without the key.
	if _, err := e.follower.Clientset.CoreV1().Namespaces().Create(t.Context(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	old := labelled("b", map[string]string{"k": "old"})
	old.Labels[managedLabel] = "true"
	old.Annotations = map[string]string{versionAnnotation: "1"}
	old = mustCreate(t, e.secrets(e.follower), old)
	if err := src.Delete(t.Context(), "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	leader.waitMetric(t, "kube_secret_sync_rows_written_total", 3)

	cfg := e.config(false)
	cfg.EncryptionKey = "wrong-key-wrong-key-wrong-key-32"
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	follower := e.start(cfg)
	follower.waitMetric(t, fullOK, 2)
	follower.waitMetric(t, `kube_secret_sync_row_errors_total{reason="wrong_key"}`, 2)
	if _, err := e.secrets(e.follower).Get(t.Context(), "a", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a applied under the wrong key (err %v)", err)
	}
	got, err := e.secrets(e.follower).Get(t.Context(), "b", metav1.GetOptions{})
	if err != nil || got.ResourceVersion != old.ResourceVersion {
		t.Errorf("b deleted or changed under the wrong key (err %v)", err)
	}
	if n := follower.writes.secrets.Load(); n != 0 {
		t.Errorf("follower with the wrong key made %d Secret writes; want 0", n)
	}
}

func TestIdleTicksWriteNothing(t *testing.T) {
	e := newSyncEnv(t)
	leader, follower := e.startPair()
	src := e.secrets(e.leader)
	for i := range 5 {
		mustCreate(t, src, labelled(fmt.Sprintf("s%d", i), map[string]string{"k": secretValue}))
	}
	for i := range 5 {
		e.waitSynced(fmt.Sprintf("s%d", i))
	}
	// Settle: one more full pass of each after everything arrived.
	leader.waitMetric(t, fullOK, leader.metric(t, fullOK)+1)
	follower.waitMetric(t, fullOK, follower.metric(t, fullOK)+1)

	ctx := t.Context()
	conn := e.dbConn()
	var version int64
	var since time.Time
	if err := conn.QueryRow(ctx, `SELECT version, now() FROM kss_version`).Scan(&version, &since); err != nil {
		t.Fatal(err)
	}
	secretWrites, otherWrites := follower.writes.secrets.Load(), follower.writes.other.Load()
	leader.waitMetric(t, fullOK, leader.metric(t, fullOK)+2)
	follower.waitMetric(t, fullOK, follower.metric(t, fullOK)+2)

	var after int64
	var touched int
	if err := conn.QueryRow(ctx, `SELECT (SELECT version FROM kss_version), (SELECT count(*) FROM kss_secrets WHERE updated_at > $1)`, since).Scan(&after, &touched); err != nil {
		t.Fatal(err)
	}
	if after != version || touched != 0 {
		t.Errorf("idle leader ticks: version %d -> %d, %d rows updated; want no write", version, after, touched)
	}
	if n := follower.writes.secrets.Load() - secretWrites; n != 0 {
		t.Errorf("idle follower ticks made %d Secret writes; want 0", n)
	}
	if n := follower.writes.other.Load() - otherWrites; n != 0 {
		t.Errorf("idle follower ticks made %d ConfigMap/Namespace writes; want 0", n)
	}
}

func TestFollowerRestartResumesFromCursor(t *testing.T) {
	e := newSyncEnv(t)
	e.start(e.config(true))
	first := e.start(e.config(false))
	src := e.secrets(e.leader)
	for i := range 5 {
		mustCreate(t, src, labelled(fmt.Sprintf("s%d", i), map[string]string{"k": secretValue}))
	}
	for i := range 5 {
		e.waitSynced(fmt.Sprintf("s%d", i))
	}
	first.stop(t)
	mustCreate(t, src, labelled("late", map[string]string{"k": "v"}))

	second := e.start(e.config(false))
	e.waitSynced("late")
	second.waitMetric(t, fullOK, 1) // a full pass has compared everything
	if n := second.writes.secrets.Load(); n != 1 {
		t.Errorf("restarted follower made %d Secret writes; want 1 (only the new Secret)", n)
	}
}

func TestDriftIsRepaired(t *testing.T) {
	e := newSyncEnv(t)
	e.startPair()
	mustCreate(t, e.secrets(e.leader), labelled("d", map[string]string{"k": secretValue, "k2": "v2"}))
	e.waitSynced("d")
	dst := e.secrets(e.follower)
	mustModify(t, dst, "d", func(s *corev1.Secret) {
		s.Data["k"] = []byte("edited by hand")
		delete(s.Data, "k2")
		s.Labels["extra"] = "x"
	})
	e.waitSynced("d")
	if err := dst.Delete(t.Context(), "d", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitSynced("d")
}

func TestDatabaseOutage(t *testing.T) {
	e := newSyncEnv(t)
	pg := e.ownPostgres("outage")
	leader, _ := e.startPair()
	src := e.secrets(e.leader)
	mustCreate(t, src, labelled("before", map[string]string{"k": secretValue}))
	e.waitSynced("before")

	pg.Pause()
	errors0 := leader.metric(t, `kube_secret_sync_reconciles_total{kind="incremental",result="error"}`)
	mustCreate(t, src, labelled("during", map[string]string{"k": secretValue}))
	mustModify(t, src, "before", func(s *corev1.Secret) { s.Data["k"] = []byte("changed during the outage") })
	leader.waitMetric(t, `kube_secret_sync_reconciles_total{kind="incremental",result="error"}`, errors0+1)
	if err := pg.Resume(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.waitSynced("during")
	e.waitSynced("before")
}

func TestAPIServerOutage(t *testing.T) {
	e := newSyncEnv(t)
	assets, err := testenv.KubeAssetsDir()
	if err != nil {
		testenv.Missing(t, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := testenv.StartCluster(ctx, assets, "outage")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	e.follower = c
	e.sysB = testenv.Namespace(t, c)
	e.start(e.config(true))
	cfg := e.config(false)
	// With leader election the daemon exits once it cannot renew its
	// Lease (Kubernetes restarts it); this test is about the sync loop
	// riding out the outage in one process.
	cfg.LeaderElection = false
	follower := e.start(cfg)
	src := e.secrets(e.leader)
	mustCreate(t, src, labelled("before", map[string]string{"k": secretValue}))
	e.waitSynced("before")

	c.PauseAPIServer()
	apiErrors := follower.metric(t, `kube_secret_sync_row_errors_total{reason="api"}`)
	mustCreate(t, src, labelled("during", map[string]string{"k": secretValue}))
	follower.waitMetric(t, `kube_secret_sync_row_errors_total{reason="api"}`, apiErrors+1)
	if err := c.ResumeAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	e.waitSynced("during")
	e.waitSynced("before")
}

func TestTwoReplicasOneActive(t *testing.T) {
	e := newSyncEnv(t)
	e.start(e.config(true))
	a := e.config(false)
	b := e.config(false)
	b.PodName = "follower-1"
	ra, rb := e.start(a), e.start(b)
	mustCreate(t, e.secrets(e.leader), labelled("x", map[string]string{"k": "v"}))
	e.waitSynced("x")
	eventually(t, syncTimeout, func() error {
		if n := ra.metric(t, "kube_secret_sync_active") + rb.metric(t, "kube_secret_sync_active"); n != 1 {
			return fmt.Errorf("%v replicas active; want 1", n)
		}
		return nil
	})
	active, standby := ra, rb
	if rb.metric(t, "kube_secret_sync_active") == 1 {
		active, standby = rb, ra
	}
	// Shutting the active one down releases the Lease; the standby takes
	// over and syncs.
	active.stop(t)
	standby.waitMetric(t, "kube_secret_sync_active", 1)
	mustCreate(t, e.secrets(e.leader), labelled("y", map[string]string{"k": "v"}))
	e.waitSynced("y")
}

func TestRollbackIsRefused(t *testing.T) {
	e := newSyncEnv(t)
	leader, follower := e.startPair()
	src := e.secrets(e.leader)
	mustCreate(t, src, labelled("r", map[string]string{"k": "old-" + secretValue}))
	e.waitSynced("r")
	conn := e.dbConn()
	var old Row
	if err := conn.QueryRow(t.Context(), `SELECT ciphertext, key_id, hash, version, source_cluster FROM kss_secrets WHERE namespace = $1 AND name = 'r'`, e.ns).
		Scan(&old.Ciphertext, &old.KeyID, &old.Hash, &old.Version, &old.SourceCluster); err != nil {
		t.Fatal(err)
	}
	mustModify(t, src, "r", func(s *corev1.Secret) { s.Data["k"] = []byte("new-" + secretValue) })
	current := e.waitSynced("r")
	// The leader would rewrite the row at its next full pass (the stored
	// hash no longer matches): stop it, so the follower faces the rows alone.
	leader.stop(t)

	// Replayed under a new version: the version is bound into the
	// ciphertext, so it does not open.
	e.tamper("r", func(r *Row) { r.Ciphertext, r.Hash = old.Ciphertext, old.Hash })
	follower.waitMetric(t, `kube_secret_sync_row_errors_total{reason="tampered"}`, 1)
	// Put back with its own old version: it opens, but the copy was
	// written from a newer version, so it is refused as a rollback.
	_, err := conn.Exec(t.Context(), `UPDATE kss_secrets SET ciphertext = $1, hash = $2, version = $3 WHERE namespace = $4 AND name = 'r'`,
		old.Ciphertext, old.Hash, old.Version, e.ns)
	if err != nil {
		t.Fatal(err)
	}
	follower.waitMetric(t, `kube_secret_sync_row_errors_total{reason="rollback"}`, 1)
	got, err := e.secrets(e.follower).Get(t.Context(), "r", metav1.GetOptions{})
	if err != nil || string(got.Data["k"]) != "new-"+secretValue || got.ResourceVersion != current.ResourceVersion {
		t.Errorf("copy rolled back or changed (err %v)", err)
	}
}

// TestRecoveryAfterRestore follows the README's steps for a database
// restored from an older backup, which followers must first refuse as a
// rollback.
func TestRecoveryAfterRestore(t *testing.T) {
	e := newSyncEnv(t)
	leader, follower := e.startPair()
	src := e.secrets(e.leader)
	mustCreate(t, src, labelled("kept", map[string]string{"k": "v1"}))
	e.waitSynced("kept")
	ctx := t.Context()
	conn := e.dbConn()
	// The backup.
	for _, stmt := range []string{
		`CREATE TABLE backup_secrets AS SELECT * FROM kss_secrets`,
		`CREATE TABLE backup_version AS SELECT * FROM kss_version`,
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	mustModify(t, src, "kept", func(s *corev1.Secret) { s.Data["k"] = []byte("v2") })
	e.waitSynced("kept")
	// The leader is down while the database is restored (else its next
	// full pass could rewrite the row before the follower sees it).
	leader.stop(t)
	// The restore, then what the README says to do.
	for _, stmt := range []string{
		`DELETE FROM kss_secrets`,
		`INSERT INTO kss_secrets SELECT * FROM backup_secrets`,
		`UPDATE kss_version SET version = (SELECT version FROM backup_version)`,
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	follower.waitMetric(t, `kube_secret_sync_row_errors_total{reason="rollback"}`, 1)
	for _, stmt := range []string{
		`UPDATE kss_version SET version = version + 1000000`,
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	e.start(e.config(true))
	// The leader rewrites the row above every old version, and the
	// follower takes it.
	eventually(t, syncTimeout, func() error {
		got, err := e.secrets(e.follower).Get(ctx, "kept", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if v := appliedVersion(got); v < 1000000 {
			return fmt.Errorf("copy still from version %d", v)
		}
		return copyMatches(mustGet(t, src, "kept"), got)
	})
	// Nothing is refused any more.
	rollbacks := follower.metric(t, `kube_secret_sync_row_errors_total{reason="rollback"}`)
	follower.waitMetric(t, fullOK, follower.metric(t, fullOK)+2)
	if n := follower.metric(t, `kube_secret_sync_row_errors_total{reason="rollback"}`); n != rollbacks {
		t.Errorf("rollback errors went on after recovery: %v -> %v", rollbacks, n)
	}
}

func mustGet(t testing.TB, c secretsClient, name string) *corev1.Secret {
	t.Helper()
	s, err := c.Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
