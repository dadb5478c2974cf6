package main

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// allStates reads every row's state straight from the table: the oracle
// that the index's refresh must reproduce.
func allStates(tb testing.TB, s *Store) rowIndex {
	tb.Helper()
	rows, err := s.pool.Query(tb.Context(), `SELECT namespace, name, hash, tombstone, source_cluster, key_id, version, octet_length(ciphertext) FROM kss_secrets`)
	if err != nil {
		tb.Fatal(err)
	}
	out := rowIndex{}
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
func indexDiff(got, want rowIndex) string {
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
	for _, db := range []struct{ name, options string }{
		{"C collation", ""},
		{"ICU collation", "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"},
	} {
		t.Run(db.name, func(t *testing.T) {
			s := mustOpenStore(t, testenv.PostgresDSNWith(t, db.options))
			ctx := t.Context()
			if err := s.Migrate(ctx, "test"); err != nil {
				t.Fatal(err)
			}
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
			if byteOrder := slices.Sorted(slices.Values(dbOrder)); db.options != "" && slices.Equal(byteOrder, dbOrder) {
				t.Fatalf("the ICU database orders the names as Go does (%v): the test would prove nothing", dbOrder)
			}

			idx := rowIndex{}
			refresh := func(want string) int {
				t.Helper()
				n, err := idx.refresh(ctx, s, mustMaxVersion(t, s))
				if err != nil {
					t.Fatal(err)
				}
				if d := indexDiff(idx, allStates(t, s)); d != "[]" {
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
}
