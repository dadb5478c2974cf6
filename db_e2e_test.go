package main

import (
	"bytes"
	"cmp"
	crand "crypto/rand"
	"encoding/binary"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// Every test here runs against a real PostgreSQL (a fresh database each);
// SQL is never mocked. CockroachDB cannot run here: its compatibility is
// covered by portable_test.go and by the write path's SERIALIZABLE
// isolation, which these tests exercise.

const dbTestCluster = "leader-eu"

// mustOpenStore opens a Store on dsn and closes it when the test ends.
func mustOpenStore(tb testing.TB, dsn string) *Store {
	tb.Helper()
	s, err := OpenStore(tb.Context(), dsn)
	if err != nil {
		tb.Fatalf("OpenStore: %v", err)
	}
	tb.Cleanup(s.Close)
	return s
}

// mustMigratedStore returns a Store on a fresh, migrated database.
func mustMigratedStore(tb testing.TB) *Store {
	tb.Helper()
	s := mustOpenStore(tb, testenv.PostgresDSN(tb))
	if err := s.Migrate(tb.Context(), "test"); err != nil {
		tb.Fatalf("Migrate: %v", err)
	}
	return s
}

// claimFor gives holder the writer claim, whoever held it: the tests of
// the write path write as several clusters in turn.
func claimFor(tb testing.TB, s *Store, holder string) Claim {
	tb.Helper()
	c := Claim{Holder: holder}
	err := s.pool.QueryRow(tb.Context(), `
UPDATE kss_writer SET holder = $1, epoch = epoch + 1, expires_at = now() + INTERVAL '1 hour'
WHERE id = 1 RETURNING epoch`, holder).Scan(&c.Epoch)
	if err != nil {
		tb.Fatalf("claim for %s: %v", holder, err)
	}
	return c
}

// mustWrite writes changes as dbTestCluster and returns the version.
func mustWrite(tb testing.TB, s *Store, changes []Change, seal SealFunc) int64 {
	tb.Helper()
	v, err := s.Write(tb.Context(), claimFor(tb, s, dbTestCluster), "kid", changes, seal)
	if err != nil {
		tb.Fatalf("Write(%d changes): %v", len(changes), err)
	}
	return v
}

// mustPullAll pages through every row after c.
func mustPullAll(tb testing.TB, s *Store, c Cursor, limit int) []Row {
	tb.Helper()
	var out []Row
	for {
		rows, err := s.Pull(tb.Context(), c, limit)
		if err != nil {
			tb.Fatalf("Pull(%+v, %d): %v", c, limit, err)
		}
		if len(rows) > limit {
			tb.Fatalf("Pull(%+v, %d) returned %d rows", c, limit, len(rows))
		}
		out = append(out, rows...)
		if len(rows) < limit {
			return out
		}
		last := rows[len(rows)-1]
		c = Cursor{last.Version, last.Namespace, last.Name}
	}
}

func mustMaxVersion(tb testing.TB, s *Store) int64 {
	tb.Helper()
	v, err := s.MaxVersion(tb.Context())
	if err != nil {
		tb.Fatalf("MaxVersion: %v", err)
	}
	return v
}

// labelSeal seals nothing: its ciphertext names the version and key it was
// called with, so a test can see which transaction produced a row.
func labelSeal(version int64, c *Change) ([]byte, error) {
	return fmt.Appendf(nil, "%d/%s", version, c.ObjectKey), nil
}

// hashOf is a stand-in change hash: distinct per n.
func hashOf(n uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 32), n) }

func change(ns, name string, hash uint64) Change {
	return Change{ObjectKey: ObjectKey{ns, name}, Hash: hashOf(hash), Payload: &Payload{Type: "Opaque"}}
}

// receive waits for one value from ch, failing the test after timeout.
func receive[T any](tb testing.TB, ch <-chan T, timeout time.Duration, what string) T {
	tb.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		panic("unreachable")
	}
}

func queryStrings(tb testing.TB, s *Store, sql string, args ...any) []string {
	tb.Helper()
	rows, err := s.pool.Query(tb.Context(), sql, args...)
	if err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
	return out
}

func queryInt(tb testing.TB, s *Store, sql string, args ...any) int64 {
	tb.Helper()
	var n int64
	if err := s.pool.QueryRow(tb.Context(), sql, args...).Scan(&n); err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestWritePull(t *testing.T) {
	s := mustMigratedStore(t)
	k := mustKeys(t, cryptoTestKey)
	ctx := t.Context()
	start := time.Now()

	type written struct {
		key     ObjectKey
		payload *Payload
		cluster string
		keyID   string
		version int64
	}
	var all []written
	write := func(cluster string, keys *Keys, ps map[ObjectKey]*Payload) int64 {
		t.Helper()
		var changes []Change
		for key, p := range ps {
			changes = append(changes, Change{ObjectKey: key, Hash: keys.Hash(key.Namespace, key.Name, p), Payload: p})
		}
		seal := func(v int64, c *Change) ([]byte, error) {
			return keys.Seal(crand.Reader, Binding{c.Namespace, c.Name, v, cluster}, c.Payload)
		}
		v, err := s.Write(ctx, claimFor(t, s, cluster), keys.ID(), changes, seal)
		if err != nil {
			t.Fatalf("Write: %v", err)
		}
		for key, p := range ps {
			all = slices.DeleteFunc(all, func(w written) bool { return w.key == key })
			all = append(all, written{key, p, cluster, keys.ID(), v})
		}
		return v
	}
	tombstone := &Payload{Deleted: true, UpdatedAt: time.Date(2025, 2, 2, 0, 0, 0, 0, time.UTC)}
	other := mustKeys(t, cryptoOtherKey)
	v1 := write(dbTestCluster, k, map[ObjectKey]*Payload{
		{"b", "z"}: tlsPayload(),
		{"b", "a"}: cryptoTestPayload(),
		{"a", "m"}: {Type: "Opaque", Data: map[string][]byte{"k": []byte("v")}},
	})
	v2 := write(dbTestCluster, k, map[ObjectKey]*Payload{
		{"a", "a"}: {Type: "Opaque", Immutable: true},
		{"b", "z"}: tombstone,
	})
	v3 := write("leader-us", other, map[ObjectKey]*Payload{{"c", "c"}: tlsPayload()})
	if v1 != 1 || v2 != 2 || v3 != 3 {
		t.Fatalf("Write versions = %d, %d, %d; want 1, 2, 3", v1, v2, v3)
	}
	slices.SortFunc(all, func(a, b written) int {
		return cmpRows(a.version, a.key, b.version, b.key)
	})

	rows := mustPullAll(t, s, Cursor{}, 100)
	if len(rows) != len(all) {
		t.Fatalf("Pull(start) = %d rows; want %d", len(rows), len(all))
	}
	for i, r := range rows {
		w := all[i]
		if r.ObjectKey != w.key || r.Version != w.version {
			t.Errorf("row %d = %s@%d; want %s@%d (order by version, namespace, name)", i, r.ObjectKey, r.Version, w.key, w.version)
			continue
		}
		keys := k
		if w.keyID == other.ID() {
			keys = other
		}
		if r.KeyID != w.keyID || r.SourceCluster != w.cluster || r.Tombstone != w.payload.Deleted {
			t.Errorf("row %s: key id %q, source %q, tombstone %v; want %q, %q, %v",
				r.ObjectKey, r.KeyID, r.SourceCluster, r.Tombstone, w.keyID, w.cluster, w.payload.Deleted)
		}
		if want := keys.Hash(w.key.Namespace, w.key.Name, w.payload); !bytes.Equal(r.Hash, want) {
			t.Errorf("row %s: hash %x; want %x", r.ObjectKey, r.Hash, want)
		}
		// The ciphertext was sealed under the row's own version and source.
		p, err := keys.Open(r.Binding(), r.KeyID, r.Ciphertext)
		if err != nil {
			t.Errorf("Open(row %s) = %v", r.ObjectKey, err)
		} else if d := diffPayload(p, w.payload); d != "" {
			t.Errorf("Open(row %s): %s", r.ObjectKey, d)
		}
		if r.UpdatedAt.Before(start.Add(-time.Minute)) || r.UpdatedAt.After(time.Now().Add(time.Minute)) {
			t.Errorf("row %s: updated_at %v; want about now (%v)", r.ObjectKey, r.UpdatedAt, start)
		}
	}

	// Paging with any limit gives the same rows, each once, and every page
	// starts after its cursor.
	for _, limit := range []int{1, 2, 3, 4, 5, 6} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
			var got []Row
			c := Cursor{}
			for pages := 0; ; pages++ {
				if pages > len(rows)+1 {
					t.Fatalf("paging with limit %d does not end", limit)
				}
				page, err := s.Pull(ctx, c, limit)
				if err != nil {
					t.Fatal(err)
				}
				for i := range page {
					if !c.Before(&page[i]) {
						t.Errorf("Pull(%+v) returned %s@%d, not after the cursor", c, page[i].ObjectKey, page[i].Version)
					}
				}
				got = append(got, page...)
				if len(page) < limit {
					break
				}
				last := page[len(page)-1]
				c = Cursor{last.Version, last.Namespace, last.Name}
			}
			if len(got) != len(rows) {
				t.Fatalf("paging with limit %d: %d rows; want %d", limit, len(got), len(rows))
			}
			for i := range got {
				if got[i].ObjectKey != rows[i].ObjectKey || got[i].Version != rows[i].Version {
					t.Errorf("paging with limit %d: row %d = %s@%d; want %s@%d", limit, i, got[i].ObjectKey, got[i].Version, rows[i].ObjectKey, rows[i].Version)
				}
			}
		})
	}

	// A cursor inside a version resumes at the next key of that version.
	mid := Cursor{Version: 1, Namespace: "a", Name: "m"}
	if got := mustPullAll(t, s, mid, 100); len(got) != len(rows)-1 || got[0].ObjectKey != rows[1].ObjectKey {
		t.Errorf("Pull(%+v) starts at %v (%d rows); want %s (%d rows)", mid, got[0].ObjectKey, len(got), rows[1].ObjectKey, len(rows)-1)
	}
	end := Cursor{Version: v3, Namespace: "c", Name: "c"}
	if got := mustPullAll(t, s, end, 100); len(got) != 0 {
		t.Errorf("Pull(after the last row) = %d rows; want 0", len(got))
	}
}

func cmpRows(va int64, ka ObjectKey, vb int64, kb ObjectKey) int {
	return cmp.Or(cmp.Compare(va, vb), cmp.Compare(ka.Namespace, kb.Namespace), cmp.Compare(ka.Name, kb.Name))
}

// TestWriteSkipsUnchanged: a row whose stored hash equals the change's keeps
// its version and ciphertext, so followers do not see it again; a tombstone
// flip or a new key id is a change even under an equal hash.
func TestWriteSkipsUnchanged(t *testing.T) {
	s := mustMigratedStore(t)
	ctx := t.Context()
	key := ObjectKey{"ns", "s"}
	row := func() Row {
		t.Helper()
		rows := mustPullAll(t, s, Cursor{}, 10)
		if len(rows) != 1 || rows[0].ObjectKey != key {
			t.Fatalf("rows = %+v; want one row %s", rows, key)
		}
		return rows[0]
	}
	updatedAt := func() time.Time {
		t.Helper()
		var ts time.Time
		if err := s.pool.QueryRow(ctx, `SELECT updated_at FROM kss_secrets`).Scan(&ts); err != nil {
			t.Fatal(err)
		}
		return ts
	}

	v1 := mustWrite(t, s, []Change{change(key.Namespace, key.Name, 1)}, labelSeal)
	first, firstUpdated := row(), updatedAt()

	v2 := mustWrite(t, s, []Change{change(key.Namespace, key.Name, 1)}, labelSeal)
	if v2 <= v1 {
		t.Errorf("Write returned version %d after %d; want the counter bumped", v2, v1)
	}
	got := row()
	if got.Version != first.Version || !bytes.Equal(got.Ciphertext, first.Ciphertext) || !updatedAt().Equal(firstUpdated) {
		t.Errorf("Write(same hash) changed the row: version %d, ciphertext %q; want %d, %q unchanged",
			got.Version, got.Ciphertext, first.Version, first.Ciphertext)
	}
	if rows := mustPullAll(t, s, Cursor{got.Version, key.Namespace, key.Name}, 10); len(rows) != 0 {
		t.Errorf("a follower at the row's version pulls %d rows after an unchanged Write; want 0", len(rows))
	}

	// A second leader writing equal content leaves the row, and its
	// binding to the first leader's version and cluster, as it is.
	if _, err := s.Write(ctx, claimFor(t, s, "leader-us"), "kid", []Change{change(key.Namespace, key.Name, 1)}, labelSeal); err != nil {
		t.Fatal(err)
	}
	if got := row(); got.Version != first.Version || got.SourceCluster != dbTestCluster {
		t.Errorf("Write(same hash, other cluster) changed the row to version %d from %q; want %d from %q",
			got.Version, got.SourceCluster, first.Version, dbTestCluster)
	}

	tests := []struct {
		name     string
		keyID    string
		c        Change
		wantTomb bool
	}{
		{"tombstone flip under an equal hash", "kid", Change{ObjectKey: key, Hash: hashOf(1), Payload: &Payload{Deleted: true}}, true},
		{"key id change under an equal hash", "kid-2", Change{ObjectKey: key, Hash: hashOf(1), Payload: &Payload{Deleted: true}}, true},
		{"hash change", "kid-2", change(key.Namespace, key.Name, 2), false},
	}
	for _, tt := range tests {
		before := row()
		v, err := s.Write(ctx, claimFor(t, s, dbTestCluster), tt.keyID, []Change{tt.c}, labelSeal)
		if err != nil {
			t.Fatalf("%s: Write: %v", tt.name, err)
		}
		got := row()
		if got.Version != v || got.Version <= before.Version || got.Tombstone != tt.wantTomb || got.KeyID != tt.keyID ||
			!bytes.Equal(got.Ciphertext, fmt.Appendf(nil, "%d/%s", v, key)) {
			t.Errorf("%s: row = version %d, tombstone %v, key id %q, ciphertext %q; want version %d, %v, %q, sealed at %d",
				tt.name, got.Version, got.Tombstone, got.KeyID, got.Ciphertext, v, tt.wantTomb, tt.keyID, v)
		}
	}
}

// TestWriteChunks: Write splits changes into transactions of writeChunk
// rows, each with its own, increasing version, and seals every row under
// the version its transaction stores it with.
func TestWriteChunks(t *testing.T) {
	s := mustMigratedStore(t)
	for _, n := range []int{0, 1, writeChunk - 1, writeChunk, writeChunk + 1, 2*writeChunk + 234} {
		t.Run(fmt.Sprintf("%d rows", n), func(t *testing.T) {
			ns := fmt.Sprintf("chunk-%d", n)
			changes := make([]Change, n)
			for i := range changes {
				changes[i] = change(ns, fmt.Sprintf("s%05d", i), uint64(i))
			}
			var mu sync.Mutex
			sealedAt := map[ObjectKey]int64{}
			seal := func(v int64, c *Change) ([]byte, error) {
				mu.Lock()
				sealedAt[c.ObjectKey] = v
				mu.Unlock()
				return labelSeal(v, c)
			}
			before := mustMaxVersion(t, s)
			last := mustWrite(t, s, changes, seal)
			after := mustMaxVersion(t, s)
			txs := int64((n + writeChunk - 1) / writeChunk)
			if after-before != txs {
				t.Errorf("Write(%d rows) used %d transactions; want %d", n, after-before, txs)
			}
			if n > 0 && last != after {
				t.Errorf("Write(%d rows) = %d; want the last version %d", n, last, after)
			}
			var rows []Row
			for _, r := range mustPullAll(t, s, Cursor{Version: before}, 97) {
				if r.Namespace == ns {
					rows = append(rows, r)
				}
			}
			if len(rows) != n {
				t.Fatalf("Write(%d rows) stored %d", n, len(rows))
			}
			for i, r := range rows {
				// Rows come back in version order; chunk i/writeChunk
				// of the (sorted) input is transaction before+1+i/writeChunk.
				want := before + 1 + int64(i/writeChunk)
				if r.Version != want || sealedAt[r.ObjectKey] != r.Version || string(r.Ciphertext) != fmt.Sprintf("%d/%s", r.Version, r.ObjectKey) {
					t.Errorf("row %s: version %d, sealed at %d, ciphertext %q; want version %d sealed under it",
						r.ObjectKey, r.Version, sealedAt[r.ObjectKey], r.Ciphertext, want)
				}
			}
		})
	}
}

func TestStates(t *testing.T) {
	s := mustMigratedStore(t)
	ctx := t.Context()
	if got, err := loadIndex(ctx, s); err != nil || got == nil || len(got.rows) != 0 {
		t.Errorf("loadIndex(empty) = %v, %v; want an empty index", got, err)
	}
	mustWrite(t, s, []Change{change("a", "x", 1), change("a", "y", 2), change("b", "x", 3)}, labelSeal)
	if _, err := s.Write(ctx, claimFor(t, s, "leader-us"), "kid", []Change{change("c", "z", 4)}, labelSeal); err != nil {
		t.Fatal(err)
	}
	tomb := change("a", "y", 5)
	tomb.Payload = &Payload{Deleted: true}
	mustWrite(t, s, []Change{tomb}, labelSeal)

	want := map[ObjectKey]RowState{
		{"a", "x"}: {Hash: hashOf(1), SourceCluster: dbTestCluster},
		{"a", "y"}: {Hash: hashOf(5), Tombstone: true, SourceCluster: dbTestCluster},
		{"b", "x"}: {Hash: hashOf(3), SourceCluster: dbTestCluster},
		{"c", "z"}: {Hash: hashOf(4), SourceCluster: "leader-us"},
	}
	got, err := loadIndex(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.rows) != len(want) {
		t.Errorf("loadIndex() = %d rows; want %d", len(got.rows), len(want))
	}
	for k, w := range want {
		g, ok := got.rows[k]
		if !ok || !bytes.Equal(g.Hash, w.Hash) || g.Tombstone != w.Tombstone || g.SourceCluster != w.SourceCluster {
			t.Errorf("loadIndex()[%s] = %+v, %v; want %+v", k, g, ok, w)
		}
	}
}

func TestMaxVersion(t *testing.T) {
	s := mustMigratedStore(t)
	if got := mustMaxVersion(t, s); got != 0 {
		t.Errorf("MaxVersion(fresh) = %d; want 0", got)
	}
	for i := range 3 {
		mustWrite(t, s, []Change{change("ns", "s", uint64(i))}, labelSeal)
	}
	if v, err := s.Write(t.Context(), claimFor(t, s, dbTestCluster), "kid", nil, labelSeal); err != nil || v != 0 {
		t.Errorf("Write(no changes) = %d, %v; want 0, nil", v, err)
	}
	if got := mustMaxVersion(t, s); got != 3 {
		t.Errorf("MaxVersion() after 3 writes = %d; want 3", got)
	}
}

// benchmarkRows is the table size of the benchmarks.
const benchmarkRows = 10_000

func TestFillCiphertexts(t *testing.T) {
	s := mustMigratedStore(t)
	mustWrite(t, s, []Change{change("ns", "a", 1), change("ns", "b", 1), change("ns", "c", 1)}, labelSeal)
	full := mustPullAll(t, s, Cursor{}, 10)
	idx, err := loadIndex(t.Context(), s)
	if err != nil {
		t.Fatal(err)
	}
	var headers []Row
	for _, r := range full {
		st, ok := idx.rows[r.ObjectKey]
		if !ok {
			t.Fatalf("%s is not in the index", r.ObjectKey)
		}
		h := headerRow(r.ObjectKey, &st)
		h.Ciphertext, h.UpdatedAt = r.Ciphertext, r.UpdatedAt
		if !reflect.DeepEqual(h, r) {
			t.Errorf("the index's header row = %+v; want %+v without ciphertext", h, r)
		}
		h.Ciphertext = nil
		headers = append(headers, h)
	}
	// b is rewritten after the headers were read: its old version is gone.
	mustWrite(t, s, []Change{change("ns", "b", 2)}, labelSeal)
	todo := []*Row{&headers[0], &headers[1], &headers[2]}
	if err := s.FillCiphertexts(t.Context(), todo); err != nil {
		t.Fatal(err)
	}
	for i, r := range todo {
		want := full[i].Ciphertext
		if r.Name == "b" {
			want = nil
		}
		if !bytes.Equal(r.Ciphertext, want) {
			t.Errorf("FillCiphertexts %s = %q; want %q", r.ObjectKey, r.Ciphertext, want)
		}
	}
	if err := s.FillCiphertexts(t.Context(), nil); err != nil {
		t.Errorf("FillCiphertexts(nil) = %v", err)
	}
}

// TestWriteRoundTrips: a writing transaction costs two round trips to the
// database however many rows it has (the database is often in another
// region), counted by a proxy between the Store and PostgreSQL. The first
// on a connection costs two more: pgx prepares the statements, once per
// connection.
func TestWriteRoundTrips(t *testing.T) {
	dsn := testenv.PostgresDSN(t)
	direct := mustOpenStore(t, dsn)
	if err := direct.Migrate(t.Context(), "test"); err != nil {
		t.Fatal(err)
	}
	proxied, proxy := proxiedDSN(t, dsn)
	s := mustOpenStore(t, proxied)
	claim := claimFor(t, direct, dbTestCluster)
	if _, err := s.Write(t.Context(), claim, "kid", []Change{change("ns", "first", 1)}, labelSeal); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, writeChunk, writeChunk + 1} {
		changes := make([]Change, n)
		for i := range changes {
			changes[i] = change("ns", fmt.Sprintf("s-%d-%d", n, i), uint64(i))
		}
		before := proxy.Turns()
		if _, err := s.Write(t.Context(), claim, "kid", changes, labelSeal); err != nil {
			t.Fatal(err)
		}
		transactions := (n + writeChunk - 1) / writeChunk
		if got := proxy.Turns() - before; got != int64(2*transactions) {
			t.Errorf("Write of %d rows (%d transactions): %d round trips; want %d", n, transactions, got, 2*transactions)
		}
	}
}

// proxiedDSN is dsn through a counting TCP proxy of its own (no delay),
// closed when the test ends.
func proxiedDSN(t *testing.T, dsn string) (string, *testenv.DelayProxy) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	p, err := testenv.StartDelayProxy(u.Host, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	u.Host = p.Addr
	return u.String(), p
}
