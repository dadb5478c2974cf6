package testenv

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoPostgres says PostgreSQL's server binaries were not found.
var ErrNoPostgres = fmt.Errorf("PostgreSQL server binaries not found (run hack/postgres.sh, or set KSS_PG_BIN to the directory holding initdb and postgres)")

// Postgres is a throw-away PostgreSQL server in a temporary directory.
type Postgres struct {
	Port int
	dir  string
	proc *process
	dbs  atomic.Int64
}

// PostgresBinDir finds initdb and postgres: KSS_PG_BIN if set, else the
// newest /usr/lib/postgresql/*/bin.
func PostgresBinDir() (string, error) {
	if dir := os.Getenv("KSS_PG_BIN"); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err != nil {
			return "", fmt.Errorf("KSS_PG_BIN=%s: %w", dir, err)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(dirs) == 0 {
		return "", ErrNoPostgres
	}
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) < pgMajor(dirs[j]) })
	return filepath.Dir(dirs[len(dirs)-1]), nil
}

func pgMajor(initdb string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdb))))
	return n
}

// StartPostgres initialises and starts a server on a free port. PostgreSQL
// refuses to run as root, so as root it runs as the "postgres" user that
// Debian's package creates. Durability is switched off: the data is
// throw-away.
func StartPostgres(ctx context.Context) (pg *Postgres, err error) {
	for range startAttempts {
		if pg, err = startPostgres(ctx); !addrInUse(err) {
			break
		}
	}
	return pg, err
}

func startPostgres(ctx context.Context) (*Postgres, error) {
	bin, err := PostgresBinDir()
	if err != nil {
		return nil, err
	}
	dir, err := tempDir("postgres")
	if err != nil {
		return nil, err
	}
	pg := &Postgres{dir: dir}
	ok := false
	defer func() {
		if !ok {
			pg.Stop()
		}
	}()
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs the postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
	initdb.Dir = dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	if pg.Port, err = FreePort(); err != nil {
		return nil, err
	}
	pg.proc, err = startProcess("postgres", cred, dir, filepath.Join(bin, "postgres"),
		"-D", data,
		"-k", dir,
		"-p", strconv.Itoa(pg.Port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=200",
		"-c", "shared_buffers=128MB",
	)
	if err != nil {
		return nil, err
	}
	if err := pg.waitReady(ctx); err != nil {
		return nil, err
	}
	ok = true
	return pg, nil
}

func (pg *Postgres) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err := poll(ctx, 50*time.Millisecond, pg.proc.exited, func(ctx context.Context) bool {
		conn, err := pgx.Connect(ctx, pg.DSN("postgres"))
		if err != nil {
			return false
		}
		conn.Close(ctx)
		return true
	})
	if err != nil {
		return fmt.Errorf("wait for postgres: %w", err)
	}
	return nil
}

// Pause stops the server but keeps its data, simulating a database
// outage; Resume starts it again on the same port.
func (pg *Postgres) Pause() { pg.proc.stop(syscall.SIGINT, 10*time.Second) }

// Crash kills the server and every backend at once (SIGKILL), as a power
// loss would; Resume starts it again, with crash recovery.
func (pg *Postgres) Crash() { pg.proc.kill() }

// Resume restarts a paused server and waits until it accepts connections.
func (pg *Postgres) Resume(ctx context.Context) error {
	p, err := pg.proc.restart()
	if err != nil {
		return err
	}
	pg.proc = p
	return pg.waitReady(ctx)
}

// DSN returns a connection string for database db as the superuser.
func (pg *Postgres) DSN(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     fmt.Sprintf("127.0.0.1:%d", pg.Port),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// CreateDatabase creates a fresh database whose name starts with prefix
// and returns its DSN.
func (pg *Postgres) CreateDatabase(ctx context.Context, prefix string) (string, error) {
	return pg.CreateDatabaseWith(ctx, prefix, "")
}

// CreateDatabaseWith is CreateDatabase with options after CREATE DATABASE
// name, such as a collation.
func (pg *Postgres) CreateDatabaseWith(ctx context.Context, prefix, options string) (string, error) {
	name := fmt.Sprintf("%s_%d_%d", sanitize(prefix), os.Getpid(), pg.dbs.Add(1))
	conn, err := pgx.Connect(ctx, pg.DSN("postgres"))
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" "+options); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return pg.DSN(name), nil
}

// Stop shuts the server down (fast shutdown) and removes its directory.
func (pg *Postgres) Stop() {
	if pg == nil {
		return
	}
	pg.proc.stop(syscall.SIGINT, 10*time.Second)
	os.RemoveAll(pg.dir)
}

// sanitize makes s usable in a database name: lower-case letters, digits
// and underscores, at most 40 characters.
func sanitize(s string) string {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s) && len(b) < 40; i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			b = append(b, c)
		case c >= 'A' && c <= 'Z':
			b = append(b, c+'a'-'A')
		default:
			b = append(b, '_')
		}
	}
	if len(b) == 0 || (b[0] >= '0' && b[0] <= '9') {
		b = append([]byte("t_"), b...)
	}
	return string(b)
}
