package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// startBinary runs bin with args and env (and PATH only) until the test
// ends, when it gets SIGTERM and must exit 0; stdout and stderr both go to
// out. It returns the process.
func startBinary(t *testing.T, bin string, env []string, out *syncBuffer, args ...string) *os.Process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s exited with %v after SIGTERM", bin, err)
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("%s did not stop within 30s of SIGTERM", bin)
		}
	})
	return cmd.Process
}

// binaryPair is the real binary running as leader and follower of e, with
// the GOMEMLIMIT it sets itself under the Deployment's 256 MiB memory
// limit (all but 64 MiB of it).
type binaryPair struct {
	leader, follower         *daemon // their metrics
	leaderProc, followerProc *os.Process
	leaderOut, followerOut   *syncBuffer
}

// startBinaries starts bin as leader and follower of e with TICK_SECONDS
// tick, until the test ends.
func (e *syncEnv) startBinaries(t *testing.T, bin string, tick int) binaryPair {
	t.Helper()
	p := binaryPair{leader: &daemon{metrics: e.config(true).MetricsAddr}, follower: &daemon{metrics: e.config(true).MetricsAddr},
		leaderOut: &syncBuffer{}, followerOut: &syncBuffer{}}
	common := []string{"DSN=" + e.dsn, "ENCRYPTION_KEY=" + testKey, fmt.Sprintf("TICK_SECONDS=%d", tick), "POLL_SECONDS=0.1",
		"CLUSTER_NAME=cluster-a", "NAMESPACES=" + e.ns, "GOMEMLIMIT=201326592"}
	p.leaderProc = startBinary(t, bin, append([]string{"LEADER=1", "KUBECONFIG=" + e.leader.Kubeconfig, "POD_NAMESPACE=" + e.sysA,
		"POD_NAME=leader-0", "METRICS_ADDR=" + p.leader.metrics}, common...), p.leaderOut)
	p.followerProc = startBinary(t, bin, append([]string{"KUBECONFIG=" + e.follower.Kubeconfig, "POD_NAMESPACE=" + e.sysB,
		"POD_NAME=follower-0", "METRICS_ADDR=" + p.follower.metrics}, common...), p.followerOut)
	return p
}

// TestDebugLogsHoldNoSecrets runs the real binary as leader (JSON logs) and
// follower (PRETTY text logs), both with DEBUG=1, over a scenario that goes
// through every path that logs (create, update, delete, a tampered row, a
// Secret it must not overwrite), with known values, a known key and a DSN
// with a password. None of them may appear anywhere in the output,
// Kubernetes client messages included.
func TestDebugLogsHoldNoSecrets(t *testing.T) {
	testenv.SkipShort(t)
	bin := buildBinary(t)
	e := newSyncEnv(t)
	const (
		value    = "debug-scenario-secret-value-7f3a"
		keyName  = "debug-scenario-private-key-name"
		newValue = "debug-scenario-renewed-value-91c2"
	)
	port := func() string {
		p, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("127.0.0.1:%d", p)
	}
	common := []string{"DSN=" + e.dsn, "ENCRYPTION_KEY=" + testKey, "TICK_SECONDS=1", "POLL_SECONDS=0.1",
		"DEBUG=1", "CLUSTER_NAME=cluster-a", "NAMESPACES=" + e.ns}
	var leaderOut, followerOut syncBuffer
	// The leader's full pass would heal the tampered row below before the
	// follower has logged it: only the first pass runs.
	startBinary(t, bin, append([]string{"LEADER=1", "KUBECONFIG=" + e.leader.Kubeconfig, "POD_NAMESPACE=" + e.sysA,
		"POD_NAME=leader-0", "METRICS_ADDR=" + port()}, append(common, "TICK_SECONDS=3600")...), &leaderOut)
	startBinary(t, bin, append([]string{"PRETTY=1", "KUBECONFIG=" + e.follower.Kubeconfig, "POD_NAMESPACE=" + e.sysB,
		"POD_NAME=follower-0", "METRICS_ADDR=" + port()}, common...), &followerOut)

	src := e.secrets(e.leader)
	s := labelled("tls", map[string]string{keyName: value, "tls.crt": value + "-crt"})
	s.Type = corev1.SecretTypeOpaque
	mustCreate(t, src, s)
	e.waitSynced("tls")
	mustModify(t, src, "tls", func(s *corev1.Secret) { s.Data[keyName] = []byte(newValue) })
	e.waitSynced("tls")
	// A Secret of the same name that the follower does not manage.
	unmanaged := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "taken"}, Data: map[string][]byte{"k": []byte(value)}}
	mustCreate(t, e.secrets(e.follower), unmanaged)
	mustCreate(t, src, labelled("taken", map[string]string{"k": newValue}))
	// A tampered row.
	mustCreate(t, src, labelled("victim", map[string]string{keyName: value}))
	e.waitSynced("victim")
	e.tamper("victim", func(r *Row) { r.Ciphertext[len(r.Ciphertext)-1] ^= 1 })
	mustCreate(t, src, labelled("doomed", map[string]string{"k": value}))
	e.waitSynced("doomed")
	if err := src.Delete(t.Context(), "doomed", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("doomed")
	eventually(t, syncTimeout, func() error {
		for _, want := range []string{"row not applied: cannot open it", "is not managed by kube-secret-sync"} {
			if !strings.Contains(followerOut.String(), want) {
				return fmt.Errorf("follower has not logged %q yet", want)
			}
		}
		return nil
	})

	for who, out := range map[string]*syncBuffer{"leader": &leaderOut, "follower": &followerOut} {
		logs := out.String()
		// The logs are what the test thinks they are: debug level on, in
		// the format asked for.
		debugMark := `"level":"debug"`
		if who == "follower" {
			debugMark = "level=debug"
		}
		if !strings.Contains(logs, debugMark) {
			t.Errorf("%s logs have no debug line (%s): DEBUG=1 had no effect?\n%s", who, debugMark, logs)
		}
		for what, secret := range map[string]string{
			"the encryption key": testKey, "the DSN password": testPassword, "the DSN": e.dsn,
			"a Secret value": value, "a renewed Secret value": newValue, "a data key name": keyName,
		} {
			for _, form := range []string{secret, base64.StdEncoding.EncodeToString([]byte(secret)), fmt.Sprintf("%x", secret)} {
				if strings.Contains(logs, form) {
					t.Errorf("%s logs contain %s", who, what)
				}
			}
		}
	}
}
