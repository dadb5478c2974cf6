package main

// Tests of the embedded migrations against real PostgreSQL.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
	"github.com/kube-secret-sync/kube-secret-sync/migrations"
)

// Every test here runs against a real PostgreSQL (a fresh database each);
// SQL is never mocked. CockroachDB cannot run here: its compatibility is
// covered by portable_test.go and by the write path's SERIALIZABLE
// isolation, which these tests exercise.

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
	wantTables := []string{"kss_migration_lock", "kss_schema_migrations", "kss_secrets", "kss_version", "kss_writer"}
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
	_, err = reader.Write(ctx, claimFor(t, admin, "follower"), "kid", []Change{change("ns", "b", 2)}, labelSeal)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Errorf("Write as a read-only user = %v; want SQLSTATE 42501 insufficient_privilege", err)
	}
}
