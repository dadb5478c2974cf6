package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kube-secret-sync/kube-secret-sync/migrations"
)

// CockroachDB cannot run on the reference machines, so its compatibility is
// guarded here: the SQL of the required path must stay within what SPEC §4
// allows on both PostgreSQL and CockroachDB. The check reads the SQL the
// daemon actually sends (string literals of its Go files that are SQL, and
// the migration files), with SQL comments removed, so that comments and
// documentation may still name what is forbidden.

// nonPortable is SPEC §4's list of what the required path must not use.
var nonPortable = []struct {
	re   *regexp.Regexp
	what string
}{
	{regexp.MustCompile(`(?i)\b(UN)?LISTEN\b`), "LISTEN (PostgreSQL only)"},
	{regexp.MustCompile(`(?i)\bNOTIFY\b|\bpg_notify\b`), "NOTIFY (PostgreSQL only)"},
	{regexp.MustCompile(`(?i)\bpg_(try_)?advisory_`), "advisory locks (PostgreSQL only)"},
	{regexp.MustCompile(`(?i)\bTEMP(ORARY)?\b`), "temporary tables"},
	{regexp.MustCompile(`(?i)\bxmin\b`), "xmin (PostgreSQL system column)"},
	{regexp.MustCompile(`(?i)\btxid_|\bpg_current_xact_id\b|\bpg_snapshot_`), "transaction ids (PostgreSQL only)"},
	{regexp.MustCompile(`(?i)\bCREATE\s+(OR\s+REPLACE\s+)?(CONSTRAINT\s+)?TRIGGER\b`), "triggers"},
	{regexp.MustCompile(`(?i)\b(nextval|currval|setval)\s*\(|\bCREATE\s+SEQUENCE\b|\b(SMALL|BIG)?SERIAL[248]?\b|\bAS\s+IDENTITY\b`),
		"sequences (values are handed out before commit: not an ordering)"},
}

// portableExceptions lists SQL allowed despite nonPortable, for an optional
// PostgreSQL-only accelerator with a portable fallback (SPEC §4), keyed by
// the exact SQL text with the reason as value. Empty: nothing needs one.
var portableExceptions = map[string]string{}

// sqlCallNames are the methods whose string arguments are SQL.
var sqlCallNames = []string{"Exec", "Query", "QueryRow", "Prepare", "Queue", "execDDL"}

// sqlStart recognises a Go string literal that is SQL on its own: it starts
// with an upper-case statement keyword (this code base writes SQL keywords
// in upper case; lower-case SQL is caught where it is passed to pgx).
var sqlStart = regexp.MustCompile(`^\s*(SELECT|INSERT|UPDATE|DELETE|UPSERT|CREATE|ALTER|DROP|WITH|LISTEN|UNLISTEN|NOTIFY|TRUNCATE|GRANT|REVOKE|SET|SHOW|BEGIN|COMMIT|DO|DECLARE|LOCK)\b`)

// sqlText is one piece of SQL and where it comes from.
type sqlText struct {
	where string
	sql   string
}

// goSQL returns the SQL in a Go source file: string literals passed to pgx
// (directly or through a named constant or variable) and literals that read
// as SQL statements.
func goSQL(filename string, src []byte) ([]sqlText, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, filename, src, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	named := map[string]*ast.BasicLit{}
	ast.Inspect(f, func(n ast.Node) bool {
		if vs, ok := n.(*ast.ValueSpec); ok {
			for i, name := range vs.Names {
				if i < len(vs.Values) {
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						named[name.Name] = lit
					}
				}
			}
		}
		return true
	})
	found := map[*ast.BasicLit]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			sel, ok := n.Fun.(*ast.SelectorExpr)
			if !ok || !slices.Contains(sqlCallNames, sel.Sel.Name) {
				return true
			}
			for _, arg := range n.Args {
				switch arg := arg.(type) {
				case *ast.BasicLit:
					if arg.Kind == token.STRING {
						found[arg] = true
					}
				case *ast.Ident:
					if lit := named[arg.Name]; lit != nil {
						found[lit] = true
					}
				}
			}
		case *ast.BasicLit:
			if n.Kind == token.STRING {
				if s, err := strconv.Unquote(n.Value); err == nil && sqlStart.MatchString(s) {
					found[n] = true
				}
			}
		}
		return true
	})
	var out []sqlText
	for lit := range found {
		s, err := strconv.Unquote(lit.Value)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", fset.Position(lit.Pos()), err)
		}
		out = append(out, sqlText{fset.Position(lit.Pos()).String(), s})
	}
	slices.SortFunc(out, func(a, b sqlText) int { return strings.Compare(a.where, b.where) })
	return out, nil
}

// stripSQLComments removes -- and /* */ comments outside quoted strings and
// identifiers.
func stripSQLComments(sql string) string {
	var b strings.Builder
	for i := 0; i < len(sql); i++ {
		switch c := sql[i]; {
		case c == '\'' || c == '"':
			j := i + 1
			for j < len(sql) && sql[j] != c {
				j++
			}
			b.WriteString(sql[i:min(j+1, len(sql))])
			i = j
		case strings.HasPrefix(sql[i:], "--"):
			for i < len(sql) && sql[i] != '\n' {
				i++
			}
			b.WriteByte('\n')
		case strings.HasPrefix(sql[i:], "/*"):
			end := strings.Index(sql[i+2:], "*/")
			if end < 0 {
				return b.String()
			}
			i += 2 + end + 1
			b.WriteByte(' ')
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// nonPortableUses reports what of nonPortable each piece of SQL uses.
func nonPortableUses(texts []sqlText) []string {
	var out []string
	for _, t := range texts {
		if _, ok := portableExceptions[t.sql]; ok {
			continue
		}
		code := stripSQLComments(t.sql)
		for _, np := range nonPortable {
			if m := np.re.FindString(code); m != "" {
				out = append(out, fmt.Sprintf("%s: %q: %s", t.where, m, np.what))
			}
		}
	}
	return out
}

var (
	spaces        = regexp.MustCompile(`\s+`)
	addColumn     = regexp.MustCompile(`\bADD\s+(COLUMN\s+)?`)
	addColumnSafe = regexp.MustCompile(`\bADD\s+(COLUMN\s+)?IF\s+NOT\s+EXISTS\b`)
	dropColumn    = regexp.MustCompile(`\bDROP\s+(COLUMN\s+)?`)
	dropSafe      = regexp.MustCompile(`\bDROP\s+(COLUMN\s+)?IF\s+EXISTS\b`)
)

// notIdempotent reports why stmt could fail or change data when run twice
// (a replica may die after running a migration file and before recording
// it), "" if it can be run again safely.
func notIdempotent(stmt string) string {
	s := strings.ToUpper(strings.TrimSpace(spaces.ReplaceAllString(stripSQLComments(stmt), " ")))
	switch {
	case s == "" || s == ";":
		return ""
	case strings.HasPrefix(s, "CREATE TABLE"), strings.HasPrefix(s, "CREATE INDEX"), strings.HasPrefix(s, "CREATE UNIQUE INDEX"):
		if !strings.Contains(s, " IF NOT EXISTS") {
			return "CREATE without IF NOT EXISTS"
		}
	case strings.HasPrefix(s, "INSERT"), strings.HasPrefix(s, "UPSERT"):
		if strings.HasPrefix(s, "INSERT") && !strings.Contains(s, " ON CONFLICT") {
			return "INSERT without ON CONFLICT"
		}
	case strings.HasPrefix(s, "ALTER TABLE"):
		if len(addColumn.FindAllString(s, -1)) != len(addColumnSafe.FindAllString(s, -1)) {
			return "ALTER TABLE ADD without IF NOT EXISTS"
		}
		if len(dropColumn.FindAllString(s, -1)) != len(dropSafe.FindAllString(s, -1)) {
			return "ALTER TABLE DROP without IF EXISTS"
		}
		if len(addColumn.FindAllString(s, -1))+len(dropColumn.FindAllString(s, -1)) == 0 {
			return "ALTER TABLE other than ADD/DROP COLUMN: cannot tell whether it can run twice; extend this test"
		}
	case strings.HasPrefix(s, "DROP"):
		if !strings.Contains(s, " IF EXISTS") {
			return "DROP without IF EXISTS"
		}
	default:
		return "statement kind unknown to this test: make sure it can run twice, then extend notIdempotent"
	}
	return ""
}

// daemonSQL collects the SQL of the daemon: its top-level Go files (tests
// excluded) and the migration files.
func daemonSQL(t *testing.T) (goTexts, sqlFiles []sqlText) {
	t.Helper()
	goFiles, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range goFiles {
		// notify.go is the optional PostgreSQL-only wake-up hint, which
		// SPEC §4 allows beside the portable path (TestPortableSQLOnlyInHint
		// checks that it holds nothing else).
		if strings.HasSuffix(name, "_test.go") || name == hintFile {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		texts, err := goSQL(name, src)
		if err != nil {
			t.Fatalf("parse %s: %v", name, err)
		}
		goTexts = append(goTexts, texts...)
	}
	names, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		body, err := fs.ReadFile(migrations.FS, name)
		if err != nil {
			t.Fatal(err)
		}
		sqlFiles = append(sqlFiles, sqlText{"migrations/" + name, string(body)})
	}
	return goTexts, sqlFiles
}

func TestPortableSQL(t *testing.T) {
	goTexts, sqlFiles := daemonSQL(t)
	// The extraction must see the store's statements, or this test would
	// pass by reading nothing.
	for _, want := range []string{"INSERT INTO kss_secrets", "UPDATE kss_version", "FROM kss_secrets", "kss_migration_lock"} {
		if !slices.ContainsFunc(goTexts, func(s sqlText) bool { return strings.Contains(s.sql, want) }) {
			t.Errorf("no SQL containing %q found in the daemon's Go files; the extraction is broken", want)
		}
	}
	if len(sqlFiles) == 0 {
		t.Error("no migration files found")
	}
	for _, use := range nonPortableUses(slices.Concat(goTexts, sqlFiles)) {
		t.Errorf("non-portable SQL in the required path (SPEC §4): %s", use)
	}
}

func TestMigrationsIdempotent(t *testing.T) {
	goTexts, sqlFiles := daemonSQL(t)
	n := 0
	for _, f := range sqlFiles {
		for _, stmt := range splitStatements(f.sql) {
			n++
			if why := notIdempotent(stmt); why != "" {
				t.Errorf("%s: %s:\n%s", f.where, why, stmt)
			}
		}
	}
	if n == 0 {
		t.Error("no migration statements found")
	}
	// DDL issued from Go (the bookkeeping tables) follows the same rule.
	for _, g := range goTexts {
		s := strings.ToUpper(strings.TrimSpace(g.sql))
		if strings.HasPrefix(s, "CREATE") || strings.HasPrefix(s, "DROP") || strings.HasPrefix(s, "ALTER") {
			if why := notIdempotent(g.sql); why != "" {
				t.Errorf("%s: %s: %s", g.where, why, g.sql)
			}
		}
	}
}

// TestPortableSQLChecker shows that the checks above can fail, and do not
// fail on prose: comments, log messages, the words inside SQL comments.
func TestPortableSQLChecker(t *testing.T) {
	tests := []struct {
		name string
		src  string // a Go file, or SQL when it does not start with "package"
		want []string
	}{
		{"LISTEN passed to pgx", `package p
func f() { conn.Exec(ctx, "LISTEN kss_changes") }`, []string{"LISTEN"}},
		{"lower-case advisory lock through a constant", `package p
const lockSQL = "select pg_advisory_lock(42)"
func f() { pool.QueryRow(ctx, lockSQL) }`, []string{"pg_advisory_"}},
		{"NOTIFY in a raw string", "package p\nconst q = `SELECT 1;\nNOTIFY kss`", []string{"NOTIFY"}},
		{"temp table", "package p\nvar q = `CREATE TEMP TABLE batch (a INT)`", []string{"TEMP"}},
		{"prose is not SQL", `package p
// We never use LISTEN/NOTIFY, xmin or nextval(): see SPEC.
func f() { log.Info("listen on :8080; notify the operator"); _ = "temporary failure" }`, nil},
		{"words in SQL comments", "package p\nconst q = `-- no LISTEN, no xmin\nSELECT version /* not nextval(s) */ FROM kss_version`", nil},
		{"words in SQL strings are still flagged", "package p\nconst q = `SELECT 'a -- b', xmin FROM t`", []string{"xmin"}},
		{"sequence", "-- a sequence would use nextval()\nCREATE SEQUENCE s;\n", []string{"CREATE SEQUENCE"}},
		{"serial", "CREATE TABLE IF NOT EXISTS t (id BIGSERIAL PRIMARY KEY);\n", []string{"BIGSERIAL"}},
		{"nextval", "INSERT INTO t (v) VALUES (nextval('s')) ON CONFLICT DO NOTHING;\n", []string{"nextval("}},
		{"identity", "CREATE TABLE IF NOT EXISTS t (id INT GENERATED ALWAYS AS IDENTITY);\n", []string{"AS IDENTITY"}},
		{"txid", "SELECT txid_current();\n", []string{"txid_"}},
		{"trigger", "CREATE OR REPLACE TRIGGER bump AFTER INSERT ON t EXECUTE FUNCTION f();\n", []string{"CREATE OR REPLACE TRIGGER"}},
		{"portable statements", "CREATE TABLE IF NOT EXISTS t (a INT PRIMARY KEY, templates TEXT, listener TEXT);\nSELECT * FROM t WHERE (version, namespace, name) > ($1, $2, $3);\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			texts := []sqlText{{"test.sql", tt.src}}
			if strings.HasPrefix(tt.src, "package") {
				var err error
				if texts, err = goSQL("test.go", []byte(tt.src)); err != nil {
					t.Fatal(err)
				}
			}
			got := nonPortableUses(texts)
			if len(got) != len(tt.want) {
				t.Fatalf("nonPortableUses(%s) = %q; want %d findings %q", tt.name, got, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], strconv.Quote(w)) {
					t.Errorf("nonPortableUses(%s)[%d] = %q; want it to flag %q", tt.name, i, got[i], w)
				}
			}
		})
	}

	idempotency := []struct {
		stmt string
		ok   bool
	}{
		{"CREATE TABLE t (a INT);", false},
		{"CREATE TABLE IF NOT EXISTS t (a INT);", true},
		{"create index i on t (a);", false},
		{"CREATE UNIQUE INDEX IF NOT EXISTS i ON t (a);", true},
		{"INSERT INTO t VALUES (1);", false},
		{"INSERT INTO t VALUES (1) ON CONFLICT (a) DO NOTHING;", true},
		{"-- ON CONFLICT\nINSERT INTO t VALUES (1);", false},
		{"ALTER TABLE t ADD COLUMN b INT;", false},
		{"ALTER TABLE t ADD COLUMN IF NOT EXISTS b INT;", true},
		{"ALTER TABLE t DROP COLUMN b;", false},
		{"ALTER TABLE t DROP COLUMN IF EXISTS b;", true},
		{"ALTER TABLE t RENAME COLUMN a TO b;", false},
		{"DROP TABLE t;", false},
		{"DROP INDEX IF EXISTS i;", true},
		{"UPDATE t SET a = a + 1;", false},
	}
	for _, tt := range idempotency {
		if why := notIdempotent(tt.stmt); (why == "") != tt.ok {
			t.Errorf("notIdempotent(%q) = %q; want ok %v", tt.stmt, why, tt.ok)
		}
	}
}

// hintFile holds the only PostgreSQL-only SQL: the wake-up hint.
const hintFile = "notify.go"

// TestPortableSQLOnlyInHint: the hint's file is excluded from
// TestPortableSQL, so it must hold the hint and nothing of the required
// path: all its SQL is LISTEN or NOTIFY.
func TestPortableSQLOnlyInHint(t *testing.T) {
	src, err := os.ReadFile(hintFile)
	if err != nil {
		t.Fatal(err)
	}
	texts, err := goSQL(hintFile, src)
	if err != nil {
		t.Fatal(err)
	}
	if len(texts) == 0 {
		t.Fatalf("no SQL found in %s; the extraction is broken", hintFile)
	}
	for _, text := range texts {
		if len(nonPortableUses([]sqlText{text})) == 0 {
			t.Errorf("%s: %q is portable SQL of the required path; it belongs in db.go", hintFile, text.sql)
		}
	}
}
