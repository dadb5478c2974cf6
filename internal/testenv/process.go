// Package testenv starts the real components that kube-secret-sync's tests,
// demo and benchmarks run against: a throw-away PostgreSQL server and any
// number of independent Kubernetes control planes (etcd + kube-apiserver),
// all on 127.0.0.1, all child processes that die with the process that
// started them.
//
// The Kubernetes binaries come from hack/kube-assets.sh (directory in
// KSS_KUBE_ASSETS); PostgreSQL from Debian's packages (hack/postgres.sh
// installs it, KSS_PG_BIN overrides where its binaries are found).
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// process is a child server process. It is started with a parent-death
// signal so that a test binary killed by `go test -timeout` (or a Ctrl-C'd
// demo) does not orphan its servers.
type process struct {
	name string
	args []string // bin and arguments, for restart
	cred *syscall.Credential
	env  []string // beyond the test's own environment
	cmd  *exec.Cmd
	log  *tailBuffer
	done chan struct{}
	err  error // valid after done is closed
}

func startProcess(name string, cred *syscall.Credential, dir string, bin string, args ...string) (*process, error) {
	return startProcessEnv(name, nil, cred, dir, bin, args...)
}

// startProcessEnv is startProcess with env added to the environment.
func startProcessEnv(name string, env []string, cred *syscall.Credential, dir string, bin string, args ...string) (*process, error) {
	// `go test -short` runs unit tests only; a test that gets here under
	// -short lacks its SkipShort, which must fail loudly, not slow the
	// unit suite down.
	if testing.Testing() && testing.Short() {
		panic("testenv: " + name + " started under -short: the test needs testenv.SkipShort (or a helper that calls it)")
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "GOMAXPROCS=2"), env...)
	log := &tailBuffer{max: 64 << 10}
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig:  syscall.SIGKILL,
		Setpgid:    true,
		Credential: cred,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, args: append([]string{bin}, args...), cred: cred, env: env, cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// restart starts the same command again after stop.
func (p *process) restart() (*process, error) {
	return startProcessEnv(p.name, p.env, p.cred, p.cmd.Dir, p.args[0], p.args[1:]...)
}

// exited reports whether the process has ended, with its output tail.
func (p *process) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited (%v): %s", p.name, p.err, p.log.String())
	default:
		return nil
	}
}

// stop asks the process to end with sig and kills its process group if it
// has not ended within grace.
func (p *process) stop(sig syscall.Signal, grace time.Duration) {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// kill ends the process and its process group at once (SIGKILL).
func (p *process) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// tailBuffer keeps the last max bytes written to it, for error messages.
type tailBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(b)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.buf.String()
	if len(s) > 4000 {
		s = "…" + s[len(s)-4000:]
	}
	return s
}

var _ io.Writer = (*tailBuffer)(nil)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. It
// is drawn at random below Linux's ephemeral range (32768-60999), so that
// the kernel does not hand it to an outgoing connection before the server
// binds it; two starts racing for one port remain possible, and are retried
// by the callers (see addrInUse).
func FreePort() (int, error) {
	const lo, hi = 20000, 32000
	var err error
	for range 100 {
		port := lo + mrand.IntN(hi-lo)
		var l net.Listener
		if l, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			l.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port in %d-%d: %w", lo, hi, err)
}

// addrInUse reports whether a server failed because its port was taken
// between FreePort and its bind. Only the server's own log says so.
func addrInUse(err error) bool {
	return err != nil && strings.Contains(strings.ToLower(err.Error()), "address already in use")
}

// startAttempts bounds the retries of a start that lost its port.
const startAttempts = 3

// poll calls cond every interval until it returns true, ctx ends, or
// check reports that a server died.
func poll(ctx context.Context, interval time.Duration, check func() error, cond func(context.Context) bool) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := check(); err != nil {
			return err
		}
		if cond(ctx) {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), check())
		case <-t.C:
		}
	}
}

// tempDir creates a directory for one server under os.TempDir(), named
// kss-<what>-<pid>-<random>. The pid lets a later run remove what a
// crashed one left behind: a test binary that panics or is killed dies
// without running its cleanups (its servers die with it through the
// parent-death signal, but their directories stay).
func tempDir(what string) (string, error) {
	sweepOnce.Do(sweepStaleDirs)
	return os.MkdirTemp("", fmt.Sprintf("kss-%s-%d-", what, os.Getpid()))
}

var sweepOnce sync.Once

func sweepStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "kss-*-*-*"))
	for _, dir := range dirs {
		parts := strings.Split(filepath.Base(dir), "-")
		pid, err := strconv.Atoi(parts[len(parts)-2])
		if err != nil || pid == os.Getpid() {
			continue
		}
		// Signal 0 only checks that the process exists.
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(dir)
		}
	}
}
