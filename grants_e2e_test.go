package main

// Tests of docs/database-roles.sql and docs/database-grants.sql (steps 1
// and 3; step 2 is kube-secret-sync migrate) against real PostgreSQL: the
// README's commands run as written (TestDatabaseGrantsCommands), the roles
// are enough to sync (TestDatabaseGrantsSync), every privilege granted is
// needed and nothing else is allowed (TestDatabaseGrantsMinimal), and the
// files stay within SQL that CockroachDB runs too
// (TestDatabaseGrantsPortable).

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// grantsScripts are the SQL steps: step 1 as an administrator, step 3 as
// the owner once step 2 (kube-secret-sync migrate) has made the tables.
var grantsScripts = map[int]string{1: "docs/database-roles.sql", 3: "docs/database-grants.sql"}

// grantsRoleNames are the roles the script creates, as it spells them.
var grantsRoleNames = []string{"kss_owner", "kss_leader", "kss_follower"}

// grantsSteps reads the SQL steps, with every role name given suffix.
func grantsSteps(tb testing.TB, suffix string) map[int]string {
	tb.Helper()
	steps := map[int]string{}
	for n, file := range grantsScripts {
		b, err := os.ReadFile(file)
		if err != nil {
			tb.Fatal(err)
		}
		steps[n] = regexp.MustCompile(`\b(kss_(?:owner|leader|follower))\b`).ReplaceAllString(string(b), "${1}_"+suffix)
	}
	return steps
}

// mustRunSQL runs every statement of script on dsn, one at a time, as
// psql -f would.
func mustRunSQL(tb testing.TB, dsn, script string) {
	tb.Helper()
	conn := testenv.MustConnect(tb, dsn)
	for _, stmt := range splitStatements(script) {
		if _, err := conn.Exec(tb.Context(), stmt); err != nil {
			tb.Fatalf("%s: %v", stmt, err)
		}
	}
}

// grantsEnv is one test database with the script's roles.
type grantsEnv struct {
	admin     string            // DSN of the superuser
	dsn       map[string]string // role as the script spells it → its DSN
	role      map[string]string // role as the script spells it → its name here
	passwords []string          // must never be logged
	steps     map[int]string
}

// newGrantsEnv runs step 1 of the script as an administrator in the
// database of adminDSN and gives the roles passwords. Roles are
// cluster-wide in PostgreSQL and the tests share one server, so each
// test's roles carry its database's name. (The test server trusts local
// connections, so the passwords are not checked: they are there to be
// looked for in the logs.)
func newGrantsEnv(tb testing.TB, adminDSN string) *grantsEnv {
	tb.Helper()
	u, err := url.Parse(adminDSN)
	if err != nil {
		tb.Fatal(err)
	}
	db := strings.TrimPrefix(u.Path, "/")
	g := &grantsEnv{admin: adminDSN, dsn: map[string]string{}, role: map[string]string{}, steps: grantsSteps(tb, db)}
	mustRunSQL(tb, adminDSN, g.steps[1])
	admin := testenv.MustConnect(tb, adminDSN)
	for _, name := range grantsRoleNames {
		role := name + "_" + db
		if len(role) > 63 { // PostgreSQL would truncate it, and names could collide
			tb.Fatalf("role name %s is longer than 63 bytes: shorten the test's name", role)
		}
		password := fmt.Sprintf("%s-Passw0rd-never-logged", strings.TrimPrefix(name, "kss_"))
		if _, err := admin.Exec(tb.Context(), fmt.Sprintf("ALTER ROLE %s WITH PASSWORD '%s'", pgx.Identifier{role}.Sanitize(), password)); err != nil {
			tb.Fatal(err)
		}
		ru := *u
		ru.User = url.UserPassword(role, password)
		g.dsn[name], g.role[name] = ru.String(), role
		g.passwords = append(g.passwords, password)
	}
	return g
}

// migrate applies the migrations as the owner (step 2) and runs step 3.
func (g *grantsEnv) migrate(tb testing.TB) {
	tb.Helper()
	if err := mustOpenStore(tb, g.dsn["kss_owner"]).Migrate(tb.Context(), "owner"); err != nil {
		tb.Fatalf("Migrate as the owner: %v", err)
	}
	mustRunSQL(tb, g.dsn["kss_owner"], g.steps[3])
}

// TestDatabaseGrantsSync runs a leader and a follower end to end through the
// script's roles: the leader's may read and upsert, the follower's only
// read.
func TestDatabaseGrantsSync(t *testing.T) {
	e := newSyncEnv(t)
	g := newGrantsEnv(t, e.dsn)
	g.migrate(t)
	// Registered before the daemons start, so it runs after they stop.
	t.Cleanup(func() {
		logs := e.logs.String()
		for _, pw := range g.passwords {
			if strings.Contains(logs, pw) {
				t.Errorf("logs contain the password %q", pw)
			}
		}
	})
	leader, follower := e.config(true), e.config(false)
	leader.DSN, follower.DSN = g.dsn["kss_leader"], g.dsn["kss_follower"]
	e.start(leader)
	e.start(follower)

	src := e.secrets(e.leader)
	s := labelled("db-credentials", map[string]string{"password": secretValue})
	s.Type = corev1.SecretTypeOpaque
	mustCreate(t, src, s)
	e.waitSynced("db-credentials")

	mustModify(t, src, "db-credentials", func(s *corev1.Secret) { s.Data["password"] = []byte("rotated") })
	if got := e.waitSynced("db-credentials"); string(got.Data["password"]) != "rotated" {
		t.Errorf("copy password = %q; want rotated", got.Data["password"])
	}

	if err := src.Delete(t.Context(), "db-credentials", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("db-credentials")

	// The rows were written by the leader's role, as upserts: the row is a
	// tombstone now, not deleted.
	conn := testenv.MustConnect(t, g.admin)
	var tombstone bool
	if err := conn.QueryRow(t.Context(), `SELECT tombstone FROM kss_secrets WHERE namespace = $1 AND name = 'db-credentials'`, e.ns).Scan(&tombstone); err != nil || !tombstone {
		t.Errorf("row of db-credentials: tombstone %v, %v; want a tombstone row", tombstone, err)
	}
}

// tablePrivileges are those PostgreSQL knows on a table.
var tablePrivileges = []string{"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"}

// grantsWant is what the script grants: role → table → privileges.
var grantsWant = map[string]map[string][]string{
	"kss_leader": {
		"kss_secrets":           {"SELECT", "INSERT", "UPDATE"},
		"kss_version":           {"SELECT", "UPDATE"},
		"kss_schema_migrations": {"SELECT"},
		"kss_writer":            {"SELECT", "UPDATE"},
	},
	"kss_follower": {
		"kss_secrets":           {"SELECT"},
		"kss_version":           {"SELECT"},
		"kss_schema_migrations": {"SELECT"},
		"kss_writer":            {"SELECT"},
	},
}

// grantsWork is everything a role's daemon does with the database: the
// leader's start, full pass and writes (a new row, a changed row, a
// tombstone) and rotate-key's re-encryption; the follower's start, pulls
// and full pass.
func grantsWork(ctx context.Context, role string, s *Store, round int) error {
	if err := s.Migrate(ctx, role); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if role == "kss_leader" {
		idx, err := loadIndex(ctx, s)
		if err != nil {
			return err
		}
		var buckets []int64
		for _, st := range idx.rows {
			buckets = append(buckets, bucketOf(st.Version, 1))
		}
		if _, err := s.SealDigests(ctx, buckets, 1); err != nil {
			return err
		}
		if _, err := s.SealsIn(ctx, buckets, 1); err != nil {
			return err
		}
		tomb := change("ns", "gone", uint64(round))
		tomb.Payload = &Payload{Deleted: true}
		changes := []Change{change("ns", "kept", uint64(round)), change("ns", fmt.Sprintf("new-%d", round), 1), tomb}
		claim, ok, err := s.TakeClaim(ctx, "cluster-a", time.Minute, true)
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("the writer claim is held by another cluster")
		}
		if err := s.RenewClaim(ctx, claim, time.Minute); err != nil {
			return err
		}
		if _, err := s.Write(ctx, claim, "kid", changes, labelSeal); err != nil {
			return err
		}
		if err := s.ReleaseClaim(ctx, claim); err != nil {
			return err
		}
		rows, err := s.RowsNotUnder(ctx, "kid2", ObjectKey{}, 10)
		if err != nil {
			return err
		}
		_, err = s.Reseal(ctx, "kid2", rows, func(version int64, r *Row) ([]byte, []byte, error) {
			return []byte("resealed"), r.Hash, nil
		})
		return err
	}
	rows, err := s.Pull(ctx, Cursor{}, 10)
	if err != nil {
		return err
	}
	if _, err := s.MaxVersion(ctx); err != nil {
		return err
	}
	idx, err := loadIndex(ctx, s)
	if err != nil {
		return err
	}
	var headers []*Row
	for k, st := range idx.rows {
		r := headerRow(k, &st)
		headers = append(headers, &r)
	}
	if err := s.FillCiphertexts(ctx, headers); err != nil {
		return err
	}
	if len(rows) == 0 {
		return errors.New("the follower read no rows")
	}
	// The status subcommand.
	if _, err := s.ReadClaim(ctx); err != nil {
		return err
	}
	_, err = s.Lag(ctx, 0)
	return err
}

func isPermissionDenied(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42501" // insufficient_privilege
}

// TestDatabaseGrantsMinimal shows that the script grants what each role
// needs and nothing more: each role's work succeeds, fails with
// "permission denied" once any single grant is revoked, and every write
// outside its job is refused.
func TestDatabaseGrantsMinimal(t *testing.T) {
	g := newGrantsEnv(t, testenv.PostgresDSN(t))
	ctx := t.Context()
	stores := map[string]*Store{}
	for _, role := range []string{"kss_leader", "kss_follower"} {
		stores[role] = mustOpenStore(t, g.dsn[role])
	}

	// Before the owner has migrated, neither role can: their daemons wait.
	for role, s := range stores {
		if err := s.Migrate(ctx, role); !isPermissionDenied(err) {
			t.Errorf("%s: Migrate(fresh database) = %v; want permission denied", role, err)
		}
	}
	g.migrate(t)
	owner := testenv.MustConnect(t, g.dsn["kss_owner"])

	t.Run("granted exactly", func(t *testing.T) {
		conn := testenv.MustConnect(t, g.admin)
		for _, role := range []string{"kss_leader", "kss_follower"} {
			for _, table := range []string{"kss_secrets", "kss_version", "kss_schema_migrations", "kss_migration_lock"} {
				for _, priv := range tablePrivileges {
					var has bool
					if err := conn.QueryRow(ctx, `SELECT has_table_privilege($1, $2, $3)`, g.role[role], table, priv).Scan(&has); err != nil {
						t.Fatal(err)
					}
					if want := slices.Contains(grantsWant[role][table], priv); has != want {
						t.Errorf("%s has %s on %s: %v; want %v", role, priv, table, has, want)
					}
				}
			}
			var create bool
			if err := conn.QueryRow(ctx, `SELECT has_schema_privilege($1, 'public', 'CREATE')`, g.role[role]).Scan(&create); err != nil || create {
				t.Errorf("%s may create in schema public: %v, %v; want false", role, create, err)
			}
		}
	})

	round := 0
	t.Run("sufficient", func(t *testing.T) {
		// The leader first: the follower needs rows to read.
		for _, role := range []string{"kss_leader", "kss_follower"} {
			round++
			if err := grantsWork(ctx, role, stores[role], round); err != nil {
				t.Errorf("%s with the script's grants: %v", role, err)
			}
		}
	})

	t.Run("each grant needed", func(t *testing.T) {
		for _, role := range []string{"kss_leader", "kss_follower"} {
			for table, privs := range grantsWant[role] {
				for _, priv := range privs {
					ident := pgx.Identifier{g.role[role]}.Sanitize()
					if _, err := owner.Exec(ctx, fmt.Sprintf("REVOKE %s ON TABLE %s FROM %s", priv, table, ident)); err != nil {
						t.Fatal(err)
					}
					round++
					if err := grantsWork(ctx, role, stores[role], round); !isPermissionDenied(err) {
						t.Errorf("%s without %s on %s: %v; want permission denied (the grant is not needed)", role, priv, table, err)
					}
					if _, err := owner.Exec(ctx, fmt.Sprintf("GRANT %s ON TABLE %s TO %s", priv, table, ident)); err != nil {
						t.Fatal(err)
					}
				}
			}
			round++
			if err := grantsWork(ctx, role, stores[role], round); err != nil {
				t.Errorf("%s with its grants restored: %v", role, err)
			}
		}
	})

	t.Run("refused", func(t *testing.T) {
		const insertRow = `INSERT INTO kss_secrets (namespace, name, ciphertext, key_id, hash, version, source_cluster) VALUES ('ns', 'forged', '\x00', 'kid', '\x00', 1, 'x')`
		denied := map[string][]string{
			"kss_follower": {
				insertRow,
				`UPDATE kss_secrets SET tombstone = true`,
				`DELETE FROM kss_secrets`,
				`UPDATE kss_version SET version = version + 1`,
				`INSERT INTO kss_schema_migrations (name) VALUES ('9999_forged.sql')`,
				`SELECT * FROM kss_migration_lock`,
				`CREATE TABLE kss_forged (id INT)`,
			},
			"kss_leader": {
				`DELETE FROM kss_secrets`,
				`TRUNCATE kss_secrets`,
				`DROP TABLE kss_secrets`,
				`ALTER TABLE kss_secrets ADD COLUMN forged INT`,
				`CREATE INDEX kss_forged_idx ON kss_secrets (hash)`,
				`DELETE FROM kss_version`,
				`INSERT INTO kss_version (id, version) VALUES (2, 0)`,
				`INSERT INTO kss_schema_migrations (name) VALUES ('9999_forged.sql')`,
				`DELETE FROM kss_schema_migrations`,
				`INSERT INTO kss_migration_lock (id, holder, expires_at) VALUES (1, 'x', now())`,
				`CREATE TABLE kss_forged (id INT)`,
			},
		}
		for role, stmts := range denied {
			conn := testenv.MustConnect(t, g.dsn[role])
			for _, stmt := range stmts {
				if _, err := conn.Exec(ctx, stmt); !isPermissionDenied(err) {
					t.Errorf("%s: %s = %v; want permission denied (SQLSTATE 42501)", role, stmt, err)
				}
			}
		}
	})
}

// TestDatabaseGrantsPortable keeps the script within what both PostgreSQL
// and CockroachDB run: plain statements (no psql meta-commands, which
// cockroach sql does not know, no DO blocks), no syntax of one of them
// only, and nothing SPEC §4 rules out.
func TestDatabaseGrantsPortable(t *testing.T) {
	for _, file := range grantsScripts {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		forbidden := []struct {
			re   *regexp.Regexp
			what string
		}{
			{regexp.MustCompile(`(?m)^\s*\\`), "a psql meta-command"},
			{regexp.MustCompile(`(?i)\bDO\s+(\$|')`), "a DO block (PostgreSQL only)"},
			{regexp.MustCompile(`(?i)\bCREATE\s+(ROLE|USER)\s+IF\s+NOT\s+EXISTS\b`), "CREATE ROLE IF NOT EXISTS (CockroachDB only)"},
			{regexp.MustCompile(`(?i)\bUPSERT\b`), "UPSERT (CockroachDB only)"},
			{regexp.MustCompile(`(?i)\bGRANT\s+\w+\s*\(`), "a column privilege (CockroachDB has none)"},
			{regexp.MustCompile(`(?i)\bSUPERUSER\b|\bBYPASSRLS\b|\bCREATEROLE\b|\bCREATEDB\b`), "a role attribute beyond LOGIN"},
			{regexp.MustCompile(`(?i)\bPASSWORD\s+'`), "a password in the script"},
		}
		stmts := splitStatements(string(b))
		if len(stmts) == 0 {
			t.Fatalf("%s holds no statement", file)
		}
		for _, stmt := range stmts {
			for _, f := range append(forbidden, nonPortable...) {
				if f.re.MatchString(stmt) {
					t.Errorf("%s: %q uses %s", file, stmt, f.what)
				}
			}
		}
	}
}

// TestDatabaseGrantsCommands runs the README's three commands as written,
// with psql and the real binary, on a PostgreSQL server of its own (the
// roles are the files' own names, which are server-wide), and then reads
// the table as the follower's role. Step 3 before step 2 fails: the order
// is not a choice.
func TestDatabaseGrantsCommands(t *testing.T) {
	testenv.SkipShort(t)
	bin := buildBinary(t)
	pg, err := testenv.StartPostgres(t.Context())
	if err != nil {
		testenv.Missing(t, err)
	}
	t.Cleanup(pg.Stop)
	admin, err := pg.CreateDatabase(t.Context(), "kss")
	if err != nil {
		t.Fatal(err)
	}
	psqlBin, err := testenv.PostgresBinDir()
	if err != nil {
		testenv.Missing(t, err)
	}
	as := func(role string) string {
		return strings.Replace(admin, "postgres://postgres@", "postgres://"+role+"@", 1)
	}
	psql := func(dsn, file string) (string, error) {
		out, err := exec.CommandContext(t.Context(), filepath.Join(psqlBin, "psql"), "-v", "ON_ERROR_STOP=1", "-q", dsn, "-f", file).CombinedOutput()
		return string(out), err
	}
	if out, err := psql(admin, "docs/database-roles.sql"); err != nil {
		t.Fatalf("step 1, psql -f docs/database-roles.sql as an administrator: %v\n%s", err, out)
	}
	if out, err := psql(as("kss_owner"), "docs/database-grants.sql"); err == nil || !strings.Contains(out, "does not exist") {
		t.Errorf("step 3 before step 2: %v\n%s; want it to fail on the tables that do not exist yet", err, out)
	}
	if _, stderr, code := runBinary(t, bin, []string{"DSN=" + as("kss_owner")}, "migrate"); code != 0 {
		t.Fatalf("step 2, kube-secret-sync migrate as kss_owner: exit %d\n%s", code, stderr)
	}
	if out, err := psql(as("kss_owner"), "docs/database-grants.sql"); err != nil {
		t.Fatalf("step 3, psql -f docs/database-grants.sql as kss_owner: %v\n%s", err, out)
	}
	for _, role := range []string{"kss_leader", "kss_follower"} {
		conn := testenv.MustConnect(t, as(role))
		var n int
		if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM kss_secrets").Scan(&n); err != nil {
			t.Errorf("%s: SELECT FROM kss_secrets: %v", role, err)
		}
	}
}
