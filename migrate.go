package main

// Database migrations: the SQL files of migrations/, embedded, applied in
// order, one statement per transaction, recorded in kss_schema_migrations,
// and serialised across replicas by a lock row. Also the migrate
// subcommand, and the daemon's wait for a database it can migrate.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sirupsen/logrus"

	"github.com/kube-secret-sync/kube-secret-sync/migrations"
)

// runMigrate is the migrate subcommand: it applies the pending migrations
// with the role DSN names and exits. It needs only DSN (and DEBUG,
// PRETTY), so that a schema owner can run it without the encryption key.
func runMigrate() int {
	cfg := &Config{DSN: os.Getenv("DSN"), Debug: os.Getenv("DEBUG"), Pretty: os.Getenv("PRETTY"), ClusterName: os.Getenv("CLUSTER_NAME")}
	if cfg.DSN == "" {
		fmt.Fprintln(os.Stderr, "kube-secret-sync: DSN is required")
		return 2
	}
	log := newLogger(cfg).WithField("cmd", "migrate")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	store, err := OpenStore(ctx, cfg.DSN)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-secret-sync: "+dsnError)
		return 2
	}
	defer store.Close()
	host, _ := os.Hostname()
	if err := store.Migrate(ctx, "migrate@"+host); err != nil {
		log.WithError(err).Error("migrations not applied")
		return 1
	}
	log.Info("the database schema is up to date")
	return 0
}

// openMigrated connects to the database and applies migrations, retrying
// while the database is unreachable: a daemon that starts before its
// database must wait, not crash-loop. It returns nil, nil if ctx ends.
func openMigrated(ctx context.Context, cfg *Config, log *logrus.Entry) (*Store, error) {
	backoff := time.Second
	for {
		store, err := OpenStore(ctx, cfg.DSN)
		if err == nil {
			if err = store.Migrate(ctx, cfg.PodName); err == nil {
				return store, nil
			}
			store.Close()
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		log.WithError(err).WithField("retry_in", backoff.String()).Error("database not ready")
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// Migrate applies the embedded migrations that are not yet recorded. Many
// replicas may start at once: they serialise on a lock row with an expiry
// (portable, unlike advisory locks), and a replica that finds nothing
// pending takes no lock at all, so a follower with a read-only database
// user starts once the leader has migrated.
func (s *Store) Migrate(ctx context.Context, holder string) error {
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		return err
	}
	slices.Sort(files)
	pending, err := s.pendingMigrations(ctx, files)
	if err != nil || len(pending) == 0 {
		return err
	}
	// There is work to do, which needs DDL rights anyway.
	if err := s.execDDL(ctx, createMigrationLockSQL); err != nil {
		return err
	}
	release, err := s.lockMigrations(ctx, holder)
	if err != nil {
		return err
	}
	defer release()
	// Another replica may have applied them while we waited.
	if pending, err = s.pendingMigrations(ctx, files); err != nil {
		return err
	}
	for _, name := range pending {
		body, err := fs.ReadFile(migrations.FS, name)
		if err != nil {
			return err
		}
		for _, stmt := range splitStatements(string(body)) {
			// One statement per transaction: CockroachDB restricts DDL
			// mixed with writes in one transaction.
			if _, err := s.pool.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("migration %s: %w", name, err)
			}
		}
		if _, err := s.pool.Exec(ctx, `INSERT INTO kss_schema_migrations (name) VALUES ($1) ON CONFLICT (name) DO NOTHING`, name); err != nil {
			return fmt.Errorf("record migration %s: %w", name, err)
		}
	}
	return nil
}

const (
	createSchemaMigrationsSQL = `CREATE TABLE IF NOT EXISTS kss_schema_migrations (name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`
	createMigrationLockSQL    = `CREATE TABLE IF NOT EXISTS kss_migration_lock (id INT PRIMARY KEY, holder TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL)`
)

// pendingMigrations returns the files not yet applied, creating the
// migrations table in a database that lacks it. It reads first: even
// CREATE TABLE IF NOT EXISTS of an existing table needs the CREATE
// privilege on the schema, which a follower's read-only user lacks.
func (s *Store) pendingMigrations(ctx context.Context, files []string) ([]string, error) {
	applied, err := s.appliedMigrations(ctx)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table: a fresh database
		if err := s.execDDL(ctx, createSchemaMigrationsSQL); err != nil {
			return nil, err
		}
		applied, err = s.appliedMigrations(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("read applied migrations: %w", err)
	}
	return slices.DeleteFunc(slices.Clone(files), func(f string) bool { return slices.Contains(applied, f) }), nil
}

func (s *Store) appliedMigrations(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT name FROM kss_schema_migrations`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// execDDL runs an idempotent CREATE … IF NOT EXISTS. Two of them racing
// on PostgreSQL can fail with a unique violation (23505) in the catalog,
// duplicate table (42P07) or duplicate object (42710: the table's row
// type); the table then exists, which is all we wanted, so the statement
// is simply tried again.
func (s *Store) execDDL(ctx context.Context, stmt string) error {
	for attempt := 0; ; attempt++ {
		_, err := s.pool.Exec(ctx, stmt)
		var pgErr *pgconn.PgError
		if err == nil || attempt >= 3 || !errors.As(err, &pgErr) || (!slices.Contains([]string{"23505", "42P07", "42710"}, pgErr.Code) && !retryable(err)) {
			return err
		}
	}
}

// lockMigrations takes the migration lock row. The lock expires after two
// minutes so that a replica that died holding it is replaced.
func (s *Store) lockMigrations(ctx context.Context, holder string) (release func(), err error) {
	for {
		tag, err := s.pool.Exec(ctx, `
INSERT INTO kss_migration_lock (id, holder, expires_at) VALUES (1, $1, now() + INTERVAL '2 minutes')
ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE kss_migration_lock.expires_at < now()`, holder)
		if err != nil && !retryable(err) {
			return nil, fmt.Errorf("take migration lock: %w", err)
		}
		if err == nil && tag.RowsAffected() == 1 {
			return func() {
				// The caller's context may be cancelled; releasing must still happen.
				ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				_, _ = s.pool.Exec(ctx, `DELETE FROM kss_migration_lock WHERE id = 1 AND holder = $1`, holder)
			}, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for migration lock: %w", ctx.Err())
		case <-time.After(100*time.Millisecond + rand.N(100*time.Millisecond)):
		}
	}
}

// splitStatements splits a migration file at semicolons that end a line,
// dropping comment-only and empty statements.
func splitStatements(sql string) []string {
	var out []string
	var cur strings.Builder
	for line := range strings.Lines(sql) {
		cur.WriteString(line)
		if strings.HasSuffix(strings.TrimSpace(line), ";") {
			if stmt := strings.TrimSpace(stripComments(cur.String())); stmt != "" {
				out = append(out, stmt)
			}
			cur.Reset()
		}
	}
	if stmt := strings.TrimSpace(stripComments(cur.String())); stmt != "" {
		out = append(out, stmt)
	}
	return out
}

func stripComments(s string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			b.WriteString(line)
		}
	}
	return b.String()
}
