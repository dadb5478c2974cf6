package testenv

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// How hack/demo and hack/bench run kube-secret-sync: the leader against
// ClusterA, the follower against ClusterB.
const (
	ClusterA = "cluster-a"
	ClusterB = "cluster-b"
	// SystemNamespace holds each daemon's Lease and the follower's cursor.
	SystemNamespace = "kube-secret-sync"
	// LeaseName is the daemon's default LEASE_NAME.
	LeaseName = "kube-secret-sync"
)

// Daemon is one kube-secret-sync process, a child of the program that
// started it (hack/demo, hack/bench). Its output goes to a log file.
type Daemon struct {
	Name    string // how errors name it: "leader", "follower (idle)"
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}
	err  error // cmd.Wait's result, valid once done is closed
}

// StartDaemon starts binary with its output in a new (truncated) file at
// logPath and with exactly PATH, HOME, TMPDIR and TZ of the caller's
// environment plus vars: nothing else is inherited, so that a DSN,
// NAMESPACES or TICK_SECONDS in the caller's shell cannot change a demo or
// a measurement.
//
// Pdeathsig kills the daemon if its parent dies without cleaning up (kill
// -9, a panic); Go's runtime never retires the thread that started it
// while the parent runs, so the signal is not sent early. Setpgid keeps a
// terminal's Ctrl-C away from it: the parent stops it with SIGTERM (Stop),
// which is the shutdown under test.
func StartDaemon(name, binary, logPath string, vars map[string]string) (*Daemon, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	// The child gets the file itself; our copy is not needed after Start.
	defer f.Close()
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "TZ"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	cmd := exec.Command(binary)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &Daemon{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

// Pid is the daemon's process id.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Exited returns an error once the daemon has ended: while it is in use,
// any exit is unexpected. A nil Daemon (not started) has not exited.
func (d *Daemon) Exited() error {
	if d == nil {
		return nil
	}
	select {
	case <-d.done:
		return fmt.Errorf("%s exited unexpectedly (%v); its log: %s", d.Name, d.err, d.LogPath)
	default:
		return nil
	}
}

// Stop sends SIGTERM and waits up to grace for the daemon to exit; then it
// kills the process group. It reports how long the exit took, and an error
// unless the daemon exited by itself with status 0. Stopping a nil Daemon
// or one that has already ended does nothing more than report.
func (d *Daemon) Stop(grace time.Duration) (time.Duration, error) {
	if d == nil {
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
		return time.Since(start), fmt.Errorf("%s did not exit within %s of SIGTERM: killed", d.Name, grace)
	}
	return time.Since(start), d.exitErr()
}

func (d *Daemon) exitErr() error {
	if d.err != nil {
		return fmt.Errorf("%s: %w", d.Name, d.err)
	}
	return nil
}

// MetricsGet fetches path from a daemon's metrics server at addr
// (host:port, its METRICS_ADDR): the HTTP status and up to 8 MiB of body.
func MetricsGet(ctx context.Context, addr, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return resp.StatusCode, string(b), err
}

// FreeAddr returns a 127.0.0.1 address that was free a moment ago, drawn
// where outgoing connections do not take ports (see FreePort).
func FreeAddr() (string, error) {
	port, err := FreePort()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", port), nil
}

// EncryptionKey returns a random ENCRYPTION_KEY: 24 random bytes are 32
// base64 characters.
func EncryptionKey() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}
