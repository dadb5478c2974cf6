package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// End-to-end tests of what a database writer can do to rows, versions and
// sizes, and of damage in the follower's own state: each delays or refuses
// at most the damaged row, and is healed.

// TestForgedVersionDelaysOnlyItsRow: a database writer raises one row's
// version far above the counter. Followers' pulls must not jump past
// every row the leader writes afterwards; only the forged row is held up.
func TestForgedVersionDelaysOnlyItsRow(t *testing.T) {
	e := newSyncEnv(t)
	lc := e.config(true)
	lc.TickSeconds = 3600 // the leader does not heal the row meanwhile
	e.start(lc)
	fc := e.config(false)
	fc.TickSeconds = 3600 // changes must arrive by the pull, not a full pass
	fc.PollSeconds = 0.1
	follower := e.start(fc)
	src := e.secrets(e.leader)
	mustCreate(t, src, labelled("forged", map[string]string{"k": secretValue}))
	e.waitSynced("forged")
	// The fresh follower's first full pass (the copy may be written before
	// that pass is over and counted); with this tick there is no other.
	follower.waitMetric(t, fullOK, 1)
	passes := follower.metric(t, fullOK)

	// Above versionCeiling, so that the leader's next writes stay below it
	// (a lower forged version only makes them jump over it).
	if _, err := e.dbConn().Exec(t.Context(), `UPDATE kss_secrets SET version = $2 WHERE namespace = $1 AND name = 'forged'`, e.ns, versionCeiling+5); err != nil {
		t.Fatal(err)
	}
	// The forged row is now the newest in pull order; a pull that moved
	// the cursor to it would skip every row written afterwards. The pull that
	// brings after-1 reads the forged row too (one page, version order),
	// so at the latest after-2 shows whether the cursor jumped.
	for _, n := range []string{"after-1", "after-2"} {
		mustCreate(t, src, labelled(n, map[string]string{"k": secretValue}))
		e.waitSynced(n)
	}
	mustModify(t, src, "after-1", func(s *corev1.Secret) { s.Data["k"] = []byte("changed") })
	e.waitSynced("after-1")
	if n := follower.metric(t, fullOK); n != passes {
		t.Fatalf("a full pass ran (%v -> %v): the test shows nothing", passes, n)
	}
	// Never past the counter.
	var counter int64
	if err := e.dbConn().QueryRow(t.Context(), `SELECT version FROM kss_version`).Scan(&counter); err != nil {
		t.Fatal(err)
	}
	if v := follower.metric(t, "kube_secret_sync_cursor_version"); v > float64(counter) {
		t.Errorf("follower cursor = %v: past the version counter %d", v, counter)
	}
}

// TestLeaderHealsDamagedRows: rows changed in the database where the
// leader's row states do not look (ciphertext, key id, version, source
// cluster) are found by the leader's verification and rewritten, so that
// a copy deleted by hand (or a new follower) gets its Secret back.
func TestLeaderHealsDamagedRows(t *testing.T) {
	e := newSyncEnv(t)
	leader := e.start(e.config(true))
	fc := e.config(false)
	fc.TickSeconds = 3600 // only the leader's rewrite brings the copies back
	e.start(fc)
	src := e.secrets(e.leader)
	damage := map[string]func(r *Row){
		"ciphertext": func(r *Row) { r.Ciphertext[len(r.Ciphertext)/2] ^= 0x01 },
		"key-id":     func(r *Row) { r.KeyID = strings.Repeat("0", len(r.KeyID)) },
		"version":    func(r *Row) { r.Version += 1000 },
		"source":     func(r *Row) { r.SourceCluster = "someone-else" },
		"truncated":  func(r *Row) { r.Ciphertext = r.Ciphertext[:5] },
	}
	for name := range damage {
		mustCreate(t, src, labelled(name, map[string]string{"k": secretValue}))
	}
	for name := range damage {
		e.waitSynced(name)
	}
	errorsBefore := 0.0
	for _, reason := range []string{"tampered", "wrong_key", "invalid"} {
		errorsBefore += leader.metric(t, `kube_secret_sync_row_errors_total{reason="`+reason+`"}`)
	}
	for name, edit := range damage {
		e.tamper(name, edit)
		// Gone from the follower: only a healed row brings it back.
		if err := e.secrets(e.follower).Delete(t.Context(), name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for name := range damage {
		e.waitSynced(name)
		if err := verifyRow(mustConfigKeyring(t, e.config(true)), ptr.To(e.readRow(name))); err != nil {
			t.Errorf("row %s after healing: %v", name, err)
		}
	}
	errorsAfter := 0.0
	for _, reason := range []string{"tampered", "wrong_key", "invalid"} {
		errorsAfter += leader.metric(t, `kube_secret_sync_row_errors_total{reason="`+reason+`"}`)
	}
	if errorsAfter-errorsBefore < float64(len(damage)) {
		t.Errorf("leader reported %v damaged rows; want %d", errorsAfter-errorsBefore, len(damage))
	}
}

// peakRSS returns the peak resident set (VmHWM) of the process pid, in
// bytes, and resetPeakRSS makes it the current one (Linux's clear_refs).
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("/proc/%d/status has no VmHWM", pid)
	return 0
}

func resetPeakRSS(t *testing.T, pid int) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatal(err)
	}
}

// TestPlantedHugeRowIsNeverTransferred: a database writer plants rows with
// 64 MiB ciphertexts, far above anything a leader writes. No daemon reads
// one into memory: the real binaries' peak RSS rises by less than 40 MiB,
// and both report the rows as invalid.
func TestPlantedHugeRowIsNeverTransferred(t *testing.T) {
	testenv.SkipShort(t)
	bin := buildBinary(t)
	e := newSyncEnv(t)
	bins := e.startBinaries(t, bin, 1)
	leader, follower, leaderProc, followerProc := bins.leader, bins.follower, bins.leaderProc, bins.followerProc
	mustCreate(t, e.secrets(e.leader), labelled("small", map[string]string{"k": secretValue}))
	e.waitSynced("small")
	leader.waitMetric(t, fullOK, 2)
	follower.waitMetric(t, fullOK, 2)

	for _, p := range []*os.Process{leaderProc, followerProc} {
		resetPeakRSS(t, p.Pid)
	}
	base := map[string]int64{"leader": peakRSS(t, leaderProc.Pid), "follower": peakRSS(t, followerProc.Pid)}
	// Made by the server, so that this process never holds it either. One
	// row under the leader's name, two under another's: the leader may
	// rewrite its own as a tombstone before the follower pulls it (each row
	// version is reported once), but nobody rewrites the other two.
	for name, source := range map[string]string{"huge-ours": "cluster-a", "huge-theirs": "someone-else", "huge-others": "someone-else"} {
		_, err := e.dbConn().Exec(t.Context(), `
WITH v AS (UPDATE kss_version SET version = version + 1 WHERE id = 1 RETURNING version)
INSERT INTO kss_secrets (namespace, name, ciphertext, key_id, hash, tombstone, version, source_cluster)
SELECT $1, $2, decode(repeat('01', 64 * 1024 * 1024), 'hex'), $3, '\x00'::BYTEA, false, v.version, $4 FROM v`,
			e.ns, name, mustConfigKeyring(t, e.config(true)).ID(), source)
		if err != nil {
			t.Fatal(err)
		}
	}
	// The follower meets the other clusters' rows in its pull and in its
	// full passes; the leader meets its own in its verification, which
	// rewrites it as a tombstone.
	follower.waitMetric(t, `kube_secret_sync_row_errors_total{reason="invalid"}`, 2)
	leader.waitMetric(t, `kube_secret_sync_row_errors_total{reason="invalid"}`, 1)
	passes := follower.metric(t, fullOK)
	follower.waitMetric(t, fullOK, passes+2)
	leader.waitMetric(t, fullOK, leader.metric(t, fullOK)+2)
	mustCreate(t, e.secrets(e.leader), labelled("after", map[string]string{"k": secretValue}))
	e.waitSynced("after")

	for who, p := range map[string]*os.Process{"leader": leaderProc, "follower": followerProc} {
		if rise := peakRSS(t, p.Pid) - base[who]; rise > 40<<20 {
			t.Errorf("%s peak RSS rose by %d MiB with a 64 MiB row in the database; want at most 40 MiB", who, rise>>20)
		} else {
			t.Logf("%s peak RSS rose by %.1f MiB", who, float64(rise)/(1<<20))
		}
	}
}

// TestCounterSetBackIsHarmless: with the version counter set below the
// highest row version (by a writer, or by restoring kss_version alone),
// the leader's next write still gets a version above every row, so no
// follower refuses it as a rollback.
func TestCounterSetBackIsHarmless(t *testing.T) {
	e := newSyncEnv(t)
	_, follower := e.startPair()
	src := e.secrets(e.leader)
	mustCreate(t, src, labelled("s", map[string]string{"k": "v0"}))
	for i := range 3 {
		mustModify(t, src, "s", func(s *corev1.Secret) { s.Data["k"] = []byte(fmt.Sprintf("v%d", i+1)) })
		e.waitSynced("s")
	}
	if _, err := e.dbConn().Exec(t.Context(), `UPDATE kss_version SET version = 1`); err != nil {
		t.Fatal(err)
	}
	mustModify(t, src, "s", func(s *corev1.Secret) { s.Data["k"] = []byte("after the counter was set back") })
	e.waitSynced("s")
	if n := follower.metric(t, `kube_secret_sync_row_errors_total{reason="rollback"}`); n != 0 {
		t.Errorf("rollback errors: %v; want none", n)
	}
}

// TestGarbageCursorStartsOver: a cursor ConfigMap that holds no cursor (a
// hand edit, a bad restore) is reported, and the follower starts over
// instead of retrying forever.
func TestGarbageCursorStartsOver(t *testing.T) {
	e := newSyncEnv(t)
	e.start(e.config(true))
	mustCreate(t, e.secrets(e.leader), labelled("s", map[string]string{"k": secretValue}))
	fc := e.config(false)
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: fc.PodNamespace, Name: fc.LeaseName + stateSuffix},
		Data: map[string]string{"version": "garbage"}}
	if _, err := e.follower.Clientset.CoreV1().ConfigMaps(fc.PodNamespace).Create(t.Context(), cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	follower := e.start(fc)
	e.waitSynced("s")
	if !strings.Contains(follower.logs.String(), "holds no valid cursor") {
		t.Error("the garbage cursor was not reported")
	}
	eventually(t, syncTimeout, func() error {
		got, err := e.follower.Clientset.CoreV1().ConfigMaps(fc.PodNamespace).Get(t.Context(), cm.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if _, err := strconv.ParseInt(got.Data["version"], 10, 64); err != nil {
			return fmt.Errorf("cursor ConfigMap still holds %q", got.Data["version"])
		}
		return nil
	})
}
