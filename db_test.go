package main

import (
	"bytes"
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
	"github.com/kube-secret-sync/kube-secret-sync/migrations"
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

// mustWrite writes changes as dbTestCluster and returns the version.
func mustWrite(tb testing.TB, s *Store, changes []Change, seal SealFunc) int64 {
	tb.Helper()
	v, err := s.Write(tb.Context(), dbTestCluster, "kid", changes, seal)
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

func migrationFiles(tb testing.TB) []string {
	tb.Helper()
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil || len(files) == 0 {
		tb.Fatalf("embedded migrations: %v, %d files", err, len(files))
	}
	slices.Sort(files)
	return files
}

func TestMigrate(t *testing.T) {
	s := mustOpenStore(t, testenv.PostgresDSN(t))
	ctx := t.Context()
	const tablesSQL = `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY table_name`
	if got := queryStrings(t, s, tablesSQL); len(got) != 0 {
		t.Fatalf("fresh database has tables %v", got)
	}
	if err := s.Migrate(ctx, "replica-a"); err != nil {
		t.Fatalf("Migrate(empty database) = %v; want nil", err)
	}
	wantTables := []string{"kss_migration_lock", "kss_schema_migrations", "kss_secrets", "kss_version"}
	if got := queryStrings(t, s, tablesSQL); !slices.Equal(got, wantTables) {
		t.Errorf("tables after Migrate = %v; want %v", got, wantTables)
	}
	const appliedSQL = `SELECT name || ' ' || applied_at::TEXT FROM kss_schema_migrations ORDER BY name`
	applied := queryStrings(t, s, appliedSQL)
	if got, want := queryStrings(t, s, `SELECT name FROM kss_schema_migrations ORDER BY name`), migrationFiles(t); !slices.Equal(got, want) {
		t.Errorf("recorded migrations = %v; want %v", got, want)
	}
	if got := queryStrings(t, s, `SELECT indexname FROM pg_indexes WHERE tablename = 'kss_secrets' ORDER BY indexname`); !slices.Contains(got, "kss_secrets_version_idx") {
		t.Errorf("indexes of kss_secrets = %v; want kss_secrets_version_idx for the pull order", got)
	}
	if got := mustMaxVersion(t, s); got != 0 {
		t.Errorf("MaxVersion() after Migrate = %d; want 0", got)
	}
	if n := queryInt(t, s, `SELECT count(*) FROM kss_migration_lock`); n != 0 {
		t.Errorf("migration lock rows after Migrate = %d; want 0 (released)", n)
	}

	// A second Migrate is a no-op: nothing re-recorded, the counter and
	// the rows untouched.
	v := mustWrite(t, s, []Change{change("ns", "a", 1)}, labelSeal)
	if err := s.Migrate(ctx, "replica-b"); err != nil {
		t.Fatalf("second Migrate = %v; want nil", err)
	}
	if got := queryStrings(t, s, appliedSQL); !slices.Equal(got, applied) {
		t.Errorf("recorded migrations after a second Migrate = %v; want unchanged %v", got, applied)
	}
	if got := mustMaxVersion(t, s); got != v {
		t.Errorf("MaxVersion() after a second Migrate = %d; want %d", got, v)
	}

	// A replica that died after running a file but before recording it:
	// the next one runs the file again, which must be harmless.
	if _, err := s.pool.Exec(ctx, `DELETE FROM kss_schema_migrations`); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx, "replica-c"); err != nil {
		t.Fatalf("Migrate after a lost record = %v; want nil (migrations must be idempotent)", err)
	}
	if got := mustMaxVersion(t, s); got != v {
		t.Errorf("MaxVersion() after re-running the migrations = %d; want %d (the counter must survive)", got, v)
	}
	if rows := mustPullAll(t, s, Cursor{}, 10); len(rows) != 1 {
		t.Errorf("rows after re-running the migrations = %d; want 1", len(rows))
	}
}

// TestMigrateConcurrent starts eight replicas at once on one fresh database:
// concurrent CREATE TABLE IF NOT EXISTS can fail on PostgreSQL with 23505,
// 42P07 (TESTENV.md) or 42710 (the table's row type), and the lock row must
// let exactly one apply each file. The race is hit in a fraction of the
// rounds only, hence several.
func TestMigrateConcurrent(t *testing.T) {
	for round := range 6 {
		t.Run(fmt.Sprintf("round %d", round), func(t *testing.T) {
			dsn := testenv.PostgresDSN(t)
			const replicas = 8
			stores := make([]*Store, replicas)
			for i := range stores {
				stores[i] = mustOpenStore(t, dsn)
				// Connect now, so that the start below is simultaneous.
				if err := stores[i].Ping(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			start := make(chan struct{})
			errs := make([]error, replicas)
			var wg sync.WaitGroup
			for i, s := range stores {
				wg.Go(func() {
					<-start
					errs[i] = s.Migrate(t.Context(), fmt.Sprintf("replica-%d", i))
				})
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("replica %d: Migrate = %v; want nil", i, err)
				}
			}
			s := stores[0]
			if got, want := queryStrings(t, s, `SELECT name FROM kss_schema_migrations ORDER BY name`), migrationFiles(t); !slices.Equal(got, want) {
				t.Errorf("recorded migrations = %v; want each of %v once", got, want)
			}
			if n := queryInt(t, s, `SELECT count(*) FROM kss_version`); n != 1 {
				t.Errorf("kss_version rows = %d; want 1", n)
			}
			if got := mustMaxVersion(t, s); got != 0 {
				t.Errorf("MaxVersion() = %d; want 0", got)
			}
			if n := queryInt(t, s, `SELECT count(*) FROM kss_migration_lock`); n != 0 {
				t.Errorf("migration lock rows = %d; want 0 (released)", n)
			}
		})
	}
}

// TestMigrateLock checks the lock row: a live holder makes others wait, an
// expired one (a replica that died holding it) is replaced.
func TestMigrateLock(t *testing.T) {
	s := mustMigratedStore(t)
	ctx := t.Context()
	pending := func() {
		t.Helper()
		if _, err := s.pool.Exec(ctx, `DELETE FROM kss_schema_migrations`); err != nil {
			t.Fatal(err)
		}
	}
	hold := func(holder, expires string) {
		t.Helper()
		_, err := s.pool.Exec(ctx, `INSERT INTO kss_migration_lock (id, holder, expires_at) VALUES (1, $1, now() + $2::INTERVAL)
ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at`, holder, expires)
		if err != nil {
			t.Fatal(err)
		}
	}

	pending()
	hold("alive", "1 minute")
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if err := s.Migrate(short, "waiting"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Migrate while another replica holds the lock = %v; want it to wait until its context ends", err)
	}
	if got := queryStrings(t, s, `SELECT holder FROM kss_migration_lock`); !slices.Equal(got, []string{"alive"}) {
		t.Errorf("lock holders = %v; want [alive]", got)
	}

	hold("dead", "-1 second")
	if err := s.Migrate(ctx, "successor"); err != nil {
		t.Errorf("Migrate with an expired lock = %v; want nil", err)
	}
	if n := queryInt(t, s, `SELECT count(*) FROM kss_migration_lock`); n != 0 {
		t.Errorf("migration lock rows = %d; want 0 (released by the successor)", n)
	}

	// Nothing pending: no lock is taken at all, even a live one is ignored.
	hold("alive", "1 minute")
	short, cancel = context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if err := s.Migrate(short, "no-op"); err != nil {
		t.Errorf("Migrate with nothing pending while the lock is held = %v; want nil", err)
	}
}

// TestMigrateReadOnlyUser: a follower needs no write access to the shared
// database (its cursor lives in its own cluster), so a follower connecting
// with a read-only user must start once the leader has migrated.
func TestMigrateReadOnlyUser(t *testing.T) {
	dsn := testenv.PostgresDSN(t)
	admin := mustOpenStore(t, dsn)
	ctx := t.Context()
	if err := admin.Migrate(ctx, "leader"); err != nil {
		t.Fatal(err)
	}
	v := mustWrite(t, admin, []Change{change("ns", "a", 1)}, labelSeal)

	db := queryStrings(t, admin, `SELECT current_database()`)[0]
	role := db + "_ro"
	for _, stmt := range []string{
		`CREATE ROLE ` + role + ` LOGIN`,
		`GRANT CONNECT ON DATABASE ` + db + ` TO ` + role,
		`REVOKE CREATE ON SCHEMA public FROM PUBLIC`,
		`GRANT USAGE ON SCHEMA public TO ` + role,
		`GRANT SELECT ON ALL TABLES IN SCHEMA public TO ` + role,
	} {
		if _, err := admin.pool.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = admin.pool.Exec(ctx, `DROP OWNED BY `+role)
		_, _ = admin.pool.Exec(ctx, `DROP ROLE `+role)
	})
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	reader := mustOpenStore(t, u.String())

	if err := reader.Migrate(ctx, "follower"); err != nil {
		t.Errorf("Migrate as a read-only user after the leader migrated = %v; want nil", err)
	}
	if rows, err := reader.Pull(ctx, Cursor{}, 10); err != nil || len(rows) != 1 || rows[0].Version != v {
		t.Errorf("Pull as a read-only user = %d rows, %v; want the leader's row", len(rows), err)
	}
	// And it really is read-only.
	_, err = reader.Write(ctx, "follower", "kid", []Change{change("ns", "b", 2)}, labelSeal)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Errorf("Write as a read-only user = %v; want SQLSTATE 42501 insufficient_privilege", err)
	}
}

func TestSplitStatements(t *testing.T) {
	tests := []struct {
		name string
		sql  string
		want []string
	}{
		{"empty", "", nil},
		{"comments only", "-- a\n  -- b;\n\n", nil},
		{"one", "CREATE TABLE t (a INT);\n", []string{"CREATE TABLE t (a INT);"}},
		{"without final semicolon", "SELECT 1", []string{"SELECT 1"}},
		{"two with comments", "-- first\nCREATE TABLE t (\n    a INT -- why\n);\n\n-- second;\nINSERT INTO t VALUES (1) ON CONFLICT DO NOTHING;\n",
			[]string{"CREATE TABLE t (\n    a INT -- why\n);", "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING;"}},
		{"semicolon inside a line does not split", "SELECT ';' AS x, 1;\n", []string{"SELECT ';' AS x, 1;"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := splitStatements(tt.sql); !slices.Equal(got, tt.want) {
				t.Errorf("splitStatements(%q) = %q; want %q", tt.sql, got, tt.want)
			}
		})
	}
}

func TestCursorBefore(t *testing.T) {
	row := func(v int64, ns, name string) *Row { return &Row{ObjectKey: ObjectKey{ns, name}, Version: v} }
	tests := []struct {
		c    Cursor
		r    *Row
		want bool
	}{
		{Cursor{}, row(1, "a", "a"), true},
		{Cursor{}, row(0, "", ""), false},
		{Cursor{1, "b", "b"}, row(2, "a", "a"), true},
		{Cursor{2, "a", "a"}, row(1, "z", "z"), false},
		{Cursor{1, "a", "z"}, row(1, "b", "a"), true},
		{Cursor{1, "b", "a"}, row(1, "a", "z"), false},
		{Cursor{1, "a", "a"}, row(1, "a", "b"), true},
		{Cursor{1, "a", "b"}, row(1, "a", "a"), false},
		{Cursor{1, "a", "a"}, row(1, "a", "a"), false},
		{Cursor{1, "a", "a-b"}, row(1, "a", "a.b"), true}, // byte order, as the database's pull order
	}
	for _, tt := range tests {
		if got := tt.c.Before(tt.r); got != tt.want {
			t.Errorf("Cursor%+v.Before(%d %s) = %v; want %v", tt.c, tt.r.Version, tt.r.ObjectKey, got, tt.want)
		}
	}
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
		v, err := s.Write(ctx, cluster, keys.ID(), changes, seal)
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
	if _, err := s.Write(ctx, "leader-us", "kid", []Change{change(key.Namespace, key.Name, 1)}, labelSeal); err != nil {
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
		v, err := s.Write(ctx, dbTestCluster, tt.keyID, []Change{tt.c}, labelSeal)
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

// TestWriteConcurrent: eight writers at once (a second leader, a retried
// batch) all succeed through retries of serialization failures, every
// transaction gets its own version, and a follower paging throughout never
// misses a row.
func TestWriteConcurrent(t *testing.T) {
	s := mustMigratedStore(t)
	reader := mustOpenStore(t, dsnOf(t, s))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const writers, writes = 8, 20

	versions := make([][]int64, writers)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range writes {
				// One row of its own and one row every writer fights over.
				changes := []Change{
					change("own", fmt.Sprintf("w%d-%02d", g, i), uint64(g*1000+i)),
					change("hot", fmt.Sprintf("h%d", i%3), uint64(g*1000+i)),
				}
				v, err := s.Write(ctx, fmt.Sprintf("writer-%d", g), "kid", changes, labelSeal)
				if err != nil {
					errs[g] = fmt.Errorf("write %d: %w", i, err)
					return
				}
				versions[g] = append(versions[g], v)
			}
		})
	}
	var writersDone atomic.Bool
	go func() { wg.Wait(); writersDone.Store(true) }()

	// The follower pages with a small limit while the writers run, and
	// stops after a pass that began once they were all done.
	seen := map[ObjectKey]int64{}
	var c Cursor
	var readErr error
	for pulls := 0; ; pulls++ {
		done := writersDone.Load()
		page, err := reader.Pull(ctx, c, 7)
		if err != nil {
			readErr = err
			break
		}
		for i := range page {
			if !c.Before(&page[i]) {
				t.Errorf("Pull(%+v) returned %s@%d, not after the cursor", c, page[i].ObjectKey, page[i].Version)
			}
			seen[page[i].ObjectKey] = page[i].Version
			c = Cursor{page[i].Version, page[i].Namespace, page[i].Name}
		}
		if done && len(page) < 7 {
			break
		}
		if len(page) == 0 {
			// Pacing, not synchronisation: leave the CPU to the writers.
			select {
			case <-ctx.Done():
			case <-time.After(time.Millisecond):
			}
		}
	}
	wg.Wait()
	if readErr != nil {
		t.Fatalf("reader: %v", readErr)
	}
	for g, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", g, err)
		}
	}
	if t.Failed() {
		return
	}

	all := slices.Concat(versions...)
	slices.Sort(all)
	if len(slices.Compact(slices.Clone(all))) != writers*writes {
		t.Errorf("versions returned by %d writes are not distinct: %v", writers*writes, all)
	}
	if got := mustMaxVersion(t, s); got != writers*writes || all[len(all)-1] != got {
		t.Errorf("MaxVersion() = %d, highest returned %d; want %d (one per transaction)", got, all[len(all)-1], writers*writes)
	}
	final := mustPullAll(t, s, Cursor{}, 1000)
	if len(final) != writers*writes+3 {
		t.Errorf("rows = %d; want %d", len(final), writers*writes+3)
	}
	for _, r := range final {
		if seen[r.ObjectKey] != r.Version {
			t.Errorf("the concurrent reader saw %s at version %d; final version %d", r.ObjectKey, seen[r.ObjectKey], r.Version)
		}
	}
	for g := range writers {
		for i, v := range versions[g] {
			key := ObjectKey{"own", fmt.Sprintf("w%d-%02d", g, i)}
			if idx := slices.IndexFunc(final, func(r Row) bool { return r.ObjectKey == key }); idx < 0 || final[idx].Version != v {
				t.Errorf("row %s is not at the version its Write returned (%d)", key, v)
			}
		}
	}
}

// dsnOf returns the DSN of s's database, so that a second pool (a
// follower) can connect to it.
func dsnOf(tb testing.TB, s *Store) string {
	tb.Helper()
	return s.pool.Config().ConnString()
}

// TestWriteCommitOrder is the race that rules out sequences and updated_at
// cursors: transaction A takes a version and stays open, B starts after it.
// With version order equal to commit order, B can neither commit first nor
// take a version below A's, so a follower whose cursor has passed A's row
// still receives B's.
func TestWriteCommitOrder(t *testing.T) {
	s := mustMigratedStore(t)
	reader := mustOpenStore(t, dsnOf(t, s))
	ctx := t.Context()

	type result struct {
		version int64
		err     error
	}
	// blockingSeal reports the version it was first called with on
	// sealing and then waits for release.
	blockingSeal := func(sealing chan<- int64, release <-chan struct{}) SealFunc {
		var once sync.Once
		return func(v int64, c *Change) ([]byte, error) {
			once.Do(func() {
				sealing <- v
				select {
				case <-release:
				case <-ctx.Done():
				}
			})
			return labelSeal(v, c)
		}
	}
	aSealing, bSealing := make(chan int64, 1), make(chan int64, 1)
	aRelease, bRelease := make(chan struct{}), make(chan struct{})
	releaseA, releaseB := sync.OnceFunc(func() { close(aRelease) }), sync.OnceFunc(func() { close(bRelease) })
	t.Cleanup(releaseA)
	t.Cleanup(releaseB)
	aDone, bDone := make(chan result, 1), make(chan result, 1)

	go func() {
		v, err := s.Write(ctx, dbTestCluster, "kid", []Change{change("ns", "a", 1)}, blockingSeal(aSealing, aRelease))
		aDone <- result{v, err}
	}()
	aVersion := receive(t, aSealing, 30*time.Second, "A to take its version")

	go func() {
		v, err := s.Write(ctx, dbTestCluster, "kid", []Change{change("ns", "b", 2)}, blockingSeal(bSealing, bRelease))
		bDone <- result{v, err}
	}()
	// B is queued behind A on the version counter's row.
	eventually(t, 30*time.Second, func() error {
		n := queryInt(t, reader, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%kss_version%'`)
		if n != 1 {
			return fmt.Errorf("%d transactions wait on the version counter; want B", n)
		}
		return nil
	})
	if rows := mustPullAll(t, reader, Cursor{}, 10); len(rows) != 0 {
		t.Errorf("a reader sees %d rows while A and B are open; want 0", len(rows))
	}
	if got := mustMaxVersion(t, reader); got != 0 {
		t.Errorf("MaxVersion() while A is open = %d; want 0", got)
	}

	releaseA()
	a := receive(t, aDone, 30*time.Second, "A to commit")
	if a.err != nil || a.version != aVersion {
		t.Fatalf("Write A = %d, %v; want %d, nil", a.version, a.err, aVersion)
	}
	bVersion := receive(t, bSealing, 30*time.Second, "B to take its version after A committed")

	// The follower pulls while B is still open: it sees A and moves its
	// cursor past A's row.
	rows := mustPullAll(t, reader, Cursor{}, 10)
	if len(rows) != 1 || rows[0].Name != "a" || rows[0].Version != aVersion {
		t.Fatalf("Pull after A committed = %+v; want A's row at version %d only", rows, aVersion)
	}
	cursor := Cursor{rows[0].Version, rows[0].Namespace, rows[0].Name}
	if rows := mustPullAll(t, reader, cursor, 10); len(rows) != 0 {
		t.Errorf("Pull(%+v) while B is open = %d rows; want 0", cursor, len(rows))
	}

	releaseB()
	b := receive(t, bDone, 30*time.Second, "B to commit")
	if b.err != nil {
		t.Fatalf("Write B: %v", b.err)
	}
	if b.version != bVersion || b.version <= a.version {
		t.Errorf("Write B = version %d (sealed at %d); want above A's %d: version order must be commit order", b.version, bVersion, a.version)
	}
	rows = mustPullAll(t, reader, cursor, 10)
	if len(rows) != 1 || rows[0].Name != "b" || rows[0].Version != b.version {
		t.Errorf("Pull(%+v) after B committed = %+v; want B's row at version %d", cursor, rows, b.version)
	}
}

func TestRetryable(t *testing.T) {
	pgErr := func(code string) error { return &pgconn.PgError{Code: code, Message: "m"} }
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain", errors.New("boom"), false},
		{"context canceled", context.Canceled, false},
		{"40001 serialization_failure", pgErr("40001"), true},
		{"40P01 deadlock_detected", pgErr("40P01"), true},
		{"23505 unique_violation", pgErr("23505"), false},
		{"42P07 duplicate_table", pgErr("42P07"), false},
		{"40003 statement_completion_unknown", pgErr("40003"), false},
		{"40001 wrapped", fmt.Errorf("upsert: %w", pgErr("40001")), true},
		{"40P01 wrapped twice", fmt.Errorf("write: %w", fmt.Errorf("bump version: %w", pgErr("40P01"))), true},
		{"40001 joined", errors.Join(errors.New("rollback failed"), pgErr("40001")), true},
		{"23505 wrapped", fmt.Errorf("upsert: %w", pgErr("23505")), false},
	}
	for _, tt := range tests {
		if got := retryable(tt.err); got != tt.want {
			t.Errorf("retryable(%v) = %v; want %v", tt.name, got, tt.want)
		}
	}
}

// TestInTxRetries: inTx runs at SERIALIZABLE, reruns the whole transaction
// (earlier attempts rolled back) on 40001/40P01, and gives up after
// maxRetries retries.
func TestInTxRetries(t *testing.T) {
	s := mustMigratedStore(t)
	s.maxRetries = 3
	sentinel := errors.New("not a database error")
	tests := []struct {
		name      string
		failures  int
		err       error
		wantCalls int
		wantErr   string // SQLSTATE, "sentinel" or ""
	}{
		{"success", 0, nil, 1, ""},
		{"two serialization failures", 2, &pgconn.PgError{Code: "40001"}, 3, ""},
		{"deadlock", 1, &pgconn.PgError{Code: "40P01"}, 2, ""},
		{"wrapped serialization failure", 3, fmt.Errorf("bump version: %w", &pgconn.PgError{Code: "40001"}), 4, ""},
		{"gives up after maxRetries", 100, &pgconn.PgError{Code: "40001"}, 4, "40001"},
		{"unique violation is not retried", 100, &pgconn.PgError{Code: "23505"}, 1, "23505"},
		{"other errors are not retried", 100, sentinel, 1, "sentinel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := mustMaxVersion(t, s)
			calls := 0
			err := s.inTx(t.Context(), func(tx pgx.Tx) error {
				calls++
				var iso string
				if err := tx.QueryRow(t.Context(), `SHOW transaction_isolation`).Scan(&iso); err != nil {
					return err
				}
				if iso != "serializable" {
					t.Errorf("inTx runs at %q; want serializable", iso)
				}
				if _, err := tx.Exec(t.Context(), `UPDATE kss_version SET version = version + 1 WHERE id = 1`); err != nil {
					return err
				}
				if calls <= tt.failures {
					return tt.err
				}
				return nil
			})
			if calls != tt.wantCalls {
				t.Errorf("inTx called fn %d times; want %d", calls, tt.wantCalls)
			}
			var pgErr *pgconn.PgError
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("inTx = %v; want nil", err)
			case tt.wantErr == "sentinel" && !errors.Is(err, sentinel):
				t.Errorf("inTx = %v; want the function's error", err)
			case tt.wantErr != "" && tt.wantErr != "sentinel" && (!errors.As(err, &pgErr) || pgErr.Code != tt.wantErr):
				t.Errorf("inTx = %v; want SQLSTATE %s", err, tt.wantErr)
			}
			// Only a successful attempt commits its increment.
			want := before
			if tt.wantErr == "" {
				want++
			}
			if got := mustMaxVersion(t, s); got != want {
				t.Errorf("counter after inTx = %d; want %d (failed attempts rolled back)", got, want)
			}
		})
	}

	t.Run("context ends during backoff", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		calls := 0
		err := s.inTx(ctx, func(pgx.Tx) error {
			calls++
			cancel()
			return &pgconn.PgError{Code: "40001"}
		})
		if !errors.Is(err, context.Canceled) || calls != 1 {
			t.Errorf("inTx with a cancelled context = %v after %d calls; want context.Canceled after 1", err, calls)
		}
	})
}

// TestWriteRetriesSerializationFailure forces a real serialization failure:
// while a Write's transaction is open, another session changes the row it is
// about to upsert. PostgreSQL aborts the Write with 40001 at SERIALIZABLE;
// Write must run the whole transaction again (sealing again, under the
// version it then gets) and store its change: a lost write that reports
// success is what the spec rules out.
func TestWriteRetriesSerializationFailure(t *testing.T) {
	s := mustMigratedStore(t)
	ctx := t.Context()
	mustWrite(t, s, []Change{change("ns", "a", 1)}, labelSeal)

	sealing := make(chan int64, 4)
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce)
	var calls atomic.Int32
	seal := func(v int64, c *Change) ([]byte, error) {
		n := calls.Add(1)
		sealing <- v
		if n == 1 {
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return fmt.Appendf(nil, "attempt %d at %d", n, v), nil
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Write(ctx, dbTestCluster, "kid", []Change{change("ns", "a", 2)}, seal)
		done <- err
	}()
	first := receive(t, sealing, 30*time.Second, "the Write to take its version")
	// Another session changes the row and commits while the Write's
	// snapshot predates it.
	if _, err := s.pool.Exec(ctx, `UPDATE kss_secrets SET updated_at = now() WHERE namespace = 'ns' AND name = 'a'`); err != nil {
		t.Fatal(err)
	}
	releaseOnce()
	if err := receive(t, done, 30*time.Second, "the Write to finish"); err != nil {
		t.Fatalf("Write after a serialization failure = %v; want nil (retried)", err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("seal called %d times; want 2 (one failed attempt, one retry)", n)
	}
	second := receive(t, sealing, time.Second, "the retry's version")
	if second != first {
		t.Errorf("retry sealed at version %d; want %d (the failed attempt's bump rolled back)", second, first)
	}
	rows := mustPullAll(t, s, Cursor{}, 10)
	if len(rows) != 1 || !bytes.Equal(rows[0].Hash, hashOf(2)) || rows[0].Version != second ||
		string(rows[0].Ciphertext) != fmt.Sprintf("attempt 2 at %d", second) {
		t.Errorf("row after the retried Write = %+v; want hash %x at version %d from attempt 2", rows, hashOf(2), second)
	}
}

func TestStates(t *testing.T) {
	s := mustMigratedStore(t)
	ctx := t.Context()
	if got, err := s.States(ctx); err != nil || got == nil || len(got) != 0 {
		t.Errorf("States(empty) = %v, %v; want an empty map", got, err)
	}
	mustWrite(t, s, []Change{change("a", "x", 1), change("a", "y", 2), change("b", "x", 3)}, labelSeal)
	if _, err := s.Write(ctx, "leader-us", "kid", []Change{change("c", "z", 4)}, labelSeal); err != nil {
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
	got, err := s.States(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("States() = %d rows; want %d", len(got), len(want))
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok || !bytes.Equal(g.Hash, w.Hash) || g.Tombstone != w.Tombstone || g.SourceCluster != w.SourceCluster {
			t.Errorf("States()[%s] = %+v, %v; want %+v", k, g, ok, w)
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
	if v, err := s.Write(t.Context(), dbTestCluster, "kid", nil, labelSeal); err != nil || v != 0 {
		t.Errorf("Write(no changes) = %d, %v; want 0, nil", v, err)
	}
	if got := mustMaxVersion(t, s); got != 3 {
		t.Errorf("MaxVersion() after 3 writes = %d; want 3", got)
	}
}

// benchmarkRows is the table size of the benchmarks.
const benchmarkRows = 10_000

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
	for b.Loop() {
		for i := range changes {
			changes[i] = Change{ObjectKey: keys[(n*writeChunk+i)%len(keys)], Hash: hashOf(uint64(n)), Payload: payload}
		}
		if _, err := s.Write(b.Context(), dbTestCluster, "kid", changes, seal); err != nil {
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

// Before reports whether c comes before r in pull order, comparing bytes
// as the tests' C-collation database does.
func (c Cursor) Before(r *Row) bool {
	if r.Version != c.Version {
		return r.Version > c.Version
	}
	if r.Namespace != c.Namespace {
		return r.Namespace > c.Namespace
	}
	return r.Name > c.Name
}

func TestPullHeadersAndFillCiphertexts(t *testing.T) {
	s := mustMigratedStore(t)
	mustWrite(t, s, []Change{change("ns", "a", 1), change("ns", "b", 1), change("ns", "c", 1)}, labelSeal)
	headers, err := s.PullHeaders(t.Context(), Cursor{}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(headers) != 3 {
		t.Fatalf("PullHeaders = %d rows; want 3", len(headers))
	}
	full := mustPullAll(t, s, Cursor{}, 10)
	for i, h := range headers {
		if h.Ciphertext != nil {
			t.Errorf("PullHeaders row %s has a ciphertext", h.ObjectKey)
		}
		h.Ciphertext = full[i].Ciphertext
		if !reflect.DeepEqual(h, full[i]) {
			t.Errorf("PullHeaders row %d = %+v; want %+v without ciphertext", i, h, full[i])
		}
		headers[i].Ciphertext = nil
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
