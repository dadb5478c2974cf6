package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// daemon is one kube-secret-sync process, run as a child of the demo. Its
// output goes to a log file, never to the terminal.
type daemon struct {
	role    string // "leader" or "follower"
	cluster string
	podName string
	logPath string
	metrics string // host:port of /metrics, /readyz

	cmd  *exec.Cmd
	done chan struct{}
	err  error // cmd.Wait's result, valid once done is closed
}

// startDaemon starts binary with exactly env (nothing inherited, so that a
// DSN or NAMESPACES in the caller's shell cannot change the demo).
//
// Pdeathsig kills the daemon if the demo dies without cleaning up (kill -9,
// a panic); Go's runtime never retires the thread that started it while
// the demo runs, so the signal is not sent early. Setpgid keeps the
// terminal's Ctrl-C away from it: the demo stops it with SIGTERM, which is
// the shutdown under test.
func startDaemon(binary, logDir string, d *daemon, env []string) error {
	d.logPath = filepath.Join(logDir, d.role+".log")
	f, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	// The child gets the file itself; our copy is not needed after Start.
	defer f.Close()
	d.cmd = exec.Command(binary)
	d.cmd.Env = env
	d.cmd.Stdout, d.cmd.Stderr = f, f
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", d.role, err)
	}
	d.done = make(chan struct{})
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	return nil
}

// daemonEnv is the environment of a daemon: what the OS needs plus vars.
func daemonEnv(vars map[string]string) []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "TZ"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env
}

// exited returns an error once the daemon has ended: while the demo runs,
// any exit is unexpected.
func (d *daemon) exited() error {
	if d == nil || d.done == nil {
		return nil
	}
	select {
	case <-d.done:
		return fmt.Errorf("%s exited unexpectedly (%v); its log: %s", d.role, d.err, d.logPath)
	default:
		return nil
	}
}

// stop sends SIGTERM and waits up to grace for the daemon to exit; then it
// kills the process group. It reports how long the exit took, and an error
// unless the daemon exited by itself with status 0.
func (d *daemon) stop(grace time.Duration) (time.Duration, error) {
	if d == nil || d.done == nil {
		return 0, nil
	}
	start := time.Now()
	select {
	case <-d.done:
		return 0, d.exitErr()
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(grace):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
		return time.Since(start), fmt.Errorf("%s did not exit within %s of SIGTERM: killed", d.role, grace)
	}
	return time.Since(start), d.exitErr()
}

func (d *daemon) exitErr() error {
	if d.err != nil {
		return fmt.Errorf("%s: %w", d.role, d.err)
	}
	return nil
}

// get fetches path from the daemon's metrics server.
func (d *daemon) get(ctx context.Context, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.metrics+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, string(b), err
}

// metric returns the value of an unlabelled sample in the Prometheus text
// exposition of /metrics.
func (d *daemon) metric(ctx context.Context, name string) (float64, error) {
	_, body, err := d.get(ctx, "/metrics")
	if err != nil {
		return 0, err
	}
	return parseMetric(body, name)
}

func parseMetric(exposition, name string) (float64, error) {
	sc := bufio.NewScanner(strings.NewReader(exposition))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// tail returns the last n lines of the daemon's log.
func (d *daemon) tail(n int) []string {
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return []string{err.Error()}
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// freeAddr returns a 127.0.0.1 address that was free a moment ago, drawn
// where outgoing connections do not take ports (see testenv.FreePort).
func freeAddr() (string, error) {
	port, err := testenv.FreePort()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", port), nil
}
