package main

import (
	"bytes"
	"crypto/md5"
	"fmt"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// allStates reads every row's state straight from the table: the oracle
// that the index's refresh must reproduce.
func allStates(tb testing.TB, s *Store) map[ObjectKey]RowState {
	tb.Helper()
	rows, err := s.pool.Query(tb.Context(), `SELECT namespace, name, hash, tombstone, source_cluster, key_id, version, octet_length(ciphertext) FROM kss_secrets`)
	if err != nil {
		tb.Fatal(err)
	}
	out := map[ObjectKey]RowState{}
	var k ObjectKey
	var st RowState
	if _, err := pgx.ForEachRow(rows, []any{&k.Namespace, &k.Name, &st.Hash, &st.Tombstone, &st.SourceCluster, &st.KeyID, &st.Version, &st.Size}, func() error {
		out[k] = st
		st.Hash = nil
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
	return out
}

// indexDiff describes how got differs from want ("" when equal).
func indexDiff(got, want map[ObjectKey]RowState) string {
	var diffs []string
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("%s missing", k))
		} else if !bytes.Equal(g.Hash, w.Hash) || g.Tombstone != w.Tombstone || g.SourceCluster != w.SourceCluster || g.KeyID != w.KeyID || g.Version != w.Version || g.Size != w.Size {
			diffs = append(diffs, fmt.Sprintf("%s = %+v; want %+v", k, g, w))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s should not be there", k))
		}
	}
	slices.Sort(diffs)
	return fmt.Sprint(diffs)
}

// TestIndexRefresh: the database's bucket digests equal the index's for
// the same rows, under a byte-order collation and under ICU's, whose order
// of the names is not Go's; so an unchanged table is never read again, and
// every change a database writer can make to a row's header, without
// touching its version, is found by reading the buckets it touched only.
func TestIndexRefresh(t *testing.T) {
	eachCollation(t, func(t *testing.T, s *Store, icu bool) {
		ctx := t.Context()
		// Names whose order differs between byte order and a
		// linguistic collation, several rows per version.
		var hash uint64
		for _, ns := range []string{"a", "a-b", "a.b", "ab"} {
			var changes []Change
			for _, name := range []string{"x", "x-1", "x.1", "x1", "x_1"} {
				hash++
				changes = append(changes, change(ns, name, hash))
			}
			mustWrite(t, s, changes, labelSeal)
		}
		tomb := change("a", "x", 99)
		tomb.Payload = &Payload{Deleted: true}
		mustWrite(t, s, []Change{tomb}, labelSeal)
		if _, err := s.Write(ctx, claimFor(t, s, "cluster-us"), "kid2", []Change{change("us", "z", 100)}, labelSeal); err != nil {
			t.Fatal(err)
		}
		// What a database writer adds: names no Kubernetes object has,
		// sharing a version with real rows.
		for _, name := range []string{"Z", "é", "_", "a b"} {
			if _, err := s.pool.Exec(ctx, `
INSERT INTO kss_secrets (namespace, name, ciphertext, key_id, hash, version, source_cluster)
VALUES ('a-b', $1, '\x00', 'kid', '\x01', 2, 'forger')`, name); err != nil {
				t.Fatal(err)
			}
		}
		var dbOrder []string
		rows, _ := s.pool.Query(ctx, `SELECT namespace || '/' || name FROM kss_secrets ORDER BY namespace, name`)
		dbOrder, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		if byteOrder := slices.Sorted(slices.Values(dbOrder)); icu && slices.Equal(byteOrder, dbOrder) {
			t.Fatalf("the ICU database orders the names as Go does (%v): the test would prove nothing", dbOrder)
		}

		idx := newRowIndex()
		refresh := func(want string) int {
			t.Helper()
			n, err := idx.refresh(ctx, s, mustMaxVersion(t, s))
			if err != nil {
				t.Fatal(err)
			}
			if d := indexDiff(idx.rows, allStates(t, s)); d != "[]" {
				t.Fatalf("after %s, the index differs from the table: %s", want, d)
			}
			return n
		}
		if n := refresh("the first refresh"); n == 0 {
			t.Fatal("the first refresh read no bucket")
		}
		if n := refresh("a refresh of an unchanged table"); n != 0 {
			t.Fatalf("a refresh of an unchanged table read %d buckets; want 0 (the digests disagree)", n)
		}
		edits := []struct{ what, sql string }{
			{"hash changed", `UPDATE kss_secrets SET hash = '\x0102' WHERE namespace = 'a-b' AND name = 'x.1'`},
			{"tombstone flipped", `UPDATE kss_secrets SET tombstone = NOT tombstone WHERE namespace = 'ab' AND name = 'x'`},
			{"key id changed", `UPDATE kss_secrets SET key_id = 'other' WHERE namespace = 'a' AND name = 'x_1'`},
			{"source changed", `UPDATE kss_secrets SET source_cluster = 'cluster-b' WHERE namespace = 'a.b' AND name = 'x1'`},
			{"row deleted", `DELETE FROM kss_secrets WHERE namespace = 'a.b' AND name = 'x-1'`},
			{"row moved to an old version", `UPDATE kss_secrets SET version = 1 WHERE namespace = 'us' AND name = 'z'`},
			{"row inserted", `INSERT INTO kss_secrets (namespace, name, ciphertext, key_id, hash, version, source_cluster) VALUES ('new', 'n', '\x00', 'kid', '\x01', 3, 'forger')`},
		}
		for _, e := range edits {
			if _, err := s.pool.Exec(ctx, e.sql); err != nil {
				t.Fatal(err)
			}
			if n := refresh(e.what); n < 1 || n > 2 {
				t.Errorf("%s: the refresh read %d buckets; want the one or two it touched", e.what, n)
			}
			if n := refresh(e.what + ", again"); n != 0 {
				t.Errorf("%s: the next refresh read %d buckets; want 0", e.what, n)
			}
		}
		// Many new versions change the buckets' width: an index that is
		// current still matches.
		for i := range 300 {
			mustWrite(t, s, []Change{change("more", fmt.Sprint(i), uint64(1000+i))}, labelSeal)
		}
		refresh("300 writes")
		if n := refresh("300 writes, again"); n != 0 {
			t.Errorf("after the width changed, a refresh of an unchanged table read %d buckets; want 0", n)
		}
		if w := bucketWidth(mustMaxVersion(t, s)); w < 2 {
			t.Errorf("bucket width %d at version %d: the test did not change it", w, mustMaxVersion(t, s))
		}
	})
}

// TestSealDigests: the database's digests of the ciphertexts' MD5s equal
// the index's, under both collations, and a ciphertext changed without its
// header is found in its bucket only.
func TestSealDigests(t *testing.T) {
	eachCollation(t, func(t *testing.T, s *Store, _ bool) {
		ctx := t.Context()
		for i, ns := range []string{"a", "a-b", "a.b", "ab", "b"} {
			var changes []Change
			for j, name := range []string{"x", "x-1", "x.1", "x1"} {
				changes = append(changes, change(ns, name, uint64(10*i+j)))
			}
			mustWrite(t, s, changes, labelSeal)
		}
		idx, err := loadIndex(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		width := bucketWidth(mustMaxVersion(t, s))
		var buckets []int64
		for _, st := range idx.rows {
			buckets = append(buckets, bucketOf(st.Version, width))
		}
		slices.Sort(buckets)
		buckets = slices.Compact(buckets)
		seals, err := s.SealsIn(ctx, buckets, width)
		if err != nil {
			t.Fatal(err)
		}
		if len(seals) != len(idx.rows) {
			t.Fatalf("SealsIn = %d rows; want %d", len(seals), len(idx.rows))
		}
		for _, r := range seals {
			st := idx.rows[r.key]
			if want := md5.Sum(fmt.Appendf(nil, "%d/%s", st.Version, r.key)); r.sum != want {
				t.Errorf("SealsIn %s = %x; want the MD5 of its ciphertext, %x", r.key, r.sum, want)
			}
			st.Sealed, st.SealedKnown = r.sum, true
			idx.set(r.key, st)
		}
		compare := func() (differ []int64) {
			t.Helper()
			remote, err := s.SealDigests(ctx, buckets, width)
			if err != nil {
				t.Fatal(err)
			}
			local := idx.sealDigests(width, buckets)
			if len(remote) != len(buckets) || len(local) != len(buckets) {
				t.Fatalf("%d remote and %d local digests; want %d", len(remote), len(local), len(buckets))
			}
			for _, b := range buckets {
				if remote[b] != local[b] {
					differ = append(differ, b)
				}
			}
			return differ
		}
		if d := compare(); len(d) != 0 {
			t.Fatalf("buckets %v differ for unchanged ciphertexts", d)
		}
		if _, err := s.pool.Exec(ctx, `UPDATE kss_secrets SET ciphertext = '\x00' WHERE namespace = 'a-b' AND name = 'x.1'`); err != nil {
			t.Fatal(err)
		}
		want := bucketOf(idx.rows[ObjectKey{"a-b", "x.1"}].Version, width)
		if d := compare(); !slices.Equal(d, []int64{want}) {
			t.Errorf("after a ciphertext changed, buckets %v differ; want [%d]", d, want)
		}
	})
}

// eachCollation runs test on a migrated store in a database of byte-order
// collation, then in one of ICU's (icu), whose order of names is not Go's.
func eachCollation(t *testing.T, test func(t *testing.T, s *Store, icu bool)) {
	for _, db := range []struct{ name, options string }{
		{"C collation", ""},
		{"ICU collation", "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"},
	} {
		t.Run(db.name, func(t *testing.T) {
			s := mustOpenStore(t, testenv.PostgresDSNWith(t, db.options))
			if err := s.Migrate(t.Context(), "test"); err != nil {
				t.Fatal(err)
			}
			test(t, s, db.options != "")
		})
	}
}

// TestDigestsReadAhead: a full pass that uses the database's digests read
// before rows were written and pulled (digestsAhead, so that the loops go
// on meanwhile) still leaves each daemon's index equal to the table, writes
// nothing again, and does not take the follower's cursor, now past the
// counter it read, for a database restored from a backup.
func TestDigestsReadAhead(t *testing.T) {
	testenv.SkipShort(t)
	e := newSyncEnv(t)
	ctx := t.Context()
	e.mustCreateMany("s", 3)
	l, store := e.watchingLeader()
	if _, err := l.reconcileFull(ctx); err != nil {
		t.Fatal(err)
	}
	f := newFollowerLoop(e.deps(e.config(false), store, e.follower.Clientset))
	if err := f.startWatch(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reconcileFull(ctx); err != nil {
		t.Fatal(err)
	}

	leaderAhead, followerAhead := <-digestsAhead(ctx, store, l.known), <-digestsAhead(ctx, store, f.rows)
	f.cursorAhead = f.cursor
	e.mustCreateMany("t", 3)
	eventually(t, syncTimeout, func() error {
		if n := len(l.sources.list()); n < 6 {
			return fmt.Errorf("%d Secrets cached", n)
		}
		return nil
	})
	if _, err := l.reconcileFull(ctx); err != nil { // writes the three
		t.Fatal(err)
	}
	if _, err := f.pull(ctx); err != nil {
		t.Fatal(err)
	}
	written := mustMaxVersion(t, store)
	if f.cursor.Version <= followerAhead.maxVersion || f.cursor.Version != written {
		t.Fatalf("after the pull the cursor is at %d; want %d, past the %d read ahead", f.cursor.Version, written, followerAhead.maxVersion)
	}

	if _, err := l.reconcileFullFrom(ctx, &leaderAhead); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reconcileFullFrom(ctx, &followerAhead); err != nil {
		t.Fatal(err)
	}
	table := allStates(t, store)
	if v := mustMaxVersion(t, store); v != written {
		t.Errorf("the leader's pass wrote again: version %d -> %d", written, v)
	}
	if f.cursor.Version != written {
		t.Errorf("after the full pass the follower's cursor is at %d; want %d (taken for a restored backup?)", f.cursor.Version, written)
	}
	for who, idx := range map[string]*rowIndex{"leader": l.known, "follower": f.rows} {
		if d := indexDiff(idx.rows, table); d != "[]" {
			t.Errorf("the %s's index differs from the table: %s", who, d)
		}
	}
	for _, name := range []string{"s-0", "t-2"} {
		e.waitSynced(name)
	}
}

// TestQuietFullPassCompares: a leader's full pass when no Secret and no
// row changed since the last completed one compares nothing, and any
// change, a row a database writer deleted or a Secret edited in the
// cluster, has the next pass compare again and write.
func TestQuietFullPassCompares(t *testing.T) {
	testenv.SkipShort(t)
	e := newSyncEnv(t)
	ctx := t.Context()
	e.mustCreateMany("s", 3)
	l, store := e.watchingLeader()
	pass := func() {
		t.Helper()
		if _, err := l.reconcileFull(ctx); err != nil {
			t.Fatal(err)
		}
	}
	pass() // writes the three
	pass() // compares: the first pass's writes changed the rows
	written := mustMaxVersion(t, store)

	// Quiet: a row the index says differs, behind the index's back, is
	// not compared (were it, the pass would rewrite it).
	key := ObjectKey{e.ns, "s-0"}
	forged := l.known.rows[key]
	forged.Hash = []byte("not what the Secret hashes to")
	l.known.rows[key] = forged
	pass()
	if v := mustMaxVersion(t, store); v != written {
		t.Fatalf("a pass with nothing changed wrote: version %d -> %d", written, v)
	}
	l.known.set(key, forged) // now a change: the next pass compares
	pass()
	if v := mustMaxVersion(t, store); v == written {
		t.Fatal("a pass after a row changed did not rewrite it")
	}

	// A row deleted in the database: the digests differ, and the pass
	// that reads them writes it back.
	pass()
	if _, err := e.dbConn().Exec(ctx, `DELETE FROM kss_secrets WHERE namespace = $1 AND name = 's-1'`, e.ns); err != nil {
		t.Fatal(err)
	}
	pass()
	if r := e.readRow("s-1"); r.Tombstone {
		t.Fatalf("s-1 rewritten as a tombstone")
	}

	// A Secret edited: once the watch has it, a full pass (no incremental
	// one runs here) writes it.
	pass()
	before := e.readRow("s-2").Version
	mustModify(t, e.secrets(e.leader), "s-2", func(s *corev1.Secret) { s.Data["tls.crt"] = []byte("renewed") })
	live, err := e.secrets(e.leader).Get(ctx, "s-2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, syncTimeout, func() error {
		if c := l.sources.get(ObjectKey{e.ns, "s-2"}); c == nil || c.resourceVersion != live.ResourceVersion {
			return fmt.Errorf("the cache does not have the edit yet")
		}
		return nil
	})
	pass()
	if after := e.readRow("s-2").Version; after == before {
		t.Fatal("the edited Secret's row was not rewritten by the full pass")
	}
}

// watchingLeader is a leader loop of the leader cluster with the default
// configuration, holding the writer claim, its cache of labelled Secrets
// filled; and its store.
func (e *syncEnv) watchingLeader() (*leaderLoop, *Store) {
	e.t.Helper()
	cfg := e.config(true)
	store := e.mustStore(cfg)
	l := newLeaderLoop(e.deps(cfg, store, e.leader.Clientset), claimFor(e.t, store, cfg.ClusterName))
	if err := l.startWatch(e.t.Context()); err != nil {
		e.t.Fatal(err)
	}
	return l, store
}
