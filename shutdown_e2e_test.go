package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"k8s.io/utils/ptr"
	utilptr "k8s.io/utils/ptr"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// TestShutdownDuringPassIsQuiet stops the follower (as SIGTERM does) while
// a pass is waiting on the API server: the pass is abandoned, and nothing
// is logged at error level (daemon.stop checks), since a shutdown is not a
// failure an operator must look into.
func TestShutdownDuringPassIsQuiet(t *testing.T) {
	e := newSyncEnv(t)
	e.start(e.config(true))
	blocked := make(chan struct{}, 1)
	hang := func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/secrets") {
				// An API server that does not answer: the create waits
				// until its context ends.
				select {
				case blocked <- struct{}{}:
				default:
				}
				<-r.Context().Done()
				return nil, r.Context().Err()
			}
			return rt.RoundTrip(r)
		})
	}
	cfg := e.config(false)
	cfg.LeaderElection = false // the Lease's own shutdown is not what this is about
	follower := e.startWrapped(cfg, hang)
	mustCreate(t, e.secrets(e.leader), labelled("stuck", map[string]string{"k": secretValue}))
	select {
	case <-blocked:
	case <-time.After(syncTimeout):
		t.Fatal("the follower never tried to create the copy")
	}
	follower.stop(t)
}

// TestShutdownReleasesTheLeaseLast stops the active follower while it is
// between the delete and the create of a recreate. The Lease stays its
// own until the step is done, so no standby starts meanwhile, and the copy
// is complete afterwards.
func TestShutdownReleasesTheLeaseLast(t *testing.T) {
	e := newSyncEnv(t)
	leader := e.start(e.config(true))
	src := e.secrets(e.leader)
	immutable := func(value string) *corev1.Secret {
		s := labelled("recreated", map[string]string{"k": value})
		s.Immutable = ptr.To(true)
		return s
	}
	mustCreate(t, src, immutable(secretValue))

	var deleted atomic.Bool
	midStep, release := make(chan struct{}, 1), make(chan struct{})
	hang := func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method == http.MethodDelete && strings.HasSuffix(r.URL.Path, "/secrets/recreated") {
				deleted.Store(true)
			}
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/secrets") && deleted.Load() {
				select {
				case midStep <- struct{}{}:
				default:
				}
				select {
				case <-release:
				case <-time.After(syncTimeout):
				}
			}
			return rt.RoundTrip(r)
		})
	}
	fa := e.config(false)
	fa.PodName = "follower-a"
	a := e.startWrapped(fa, hang)
	e.waitSynced("recreated")

	// A new value of an immutable Secret: the copy is recreated. The
	// leader is stopped meanwhile, so that it writes the new value over
	// the row, never a tombstone first (which the follower would apply as
	// a plain delete, then a plain create).
	leader.stop(t)
	if err := src.Delete(t.Context(), "recreated", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, src, immutable("new-"+secretValue))
	e.start(e.config(true))
	select {
	case <-midStep:
	case <-time.After(syncTimeout):
		t.Fatal("the follower never recreated the copy")
	}
	stopped := make(chan struct{})
	go func() { a.stop(t); close(stopped) }()
	leases := e.follower.Clientset.CoordinationV1().Leases(fa.PodNamespace)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		l, err := leases.Get(t.Context(), fa.LeaseName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if h := utilptr.Deref(l.Spec.HolderIdentity, ""); h != "follower-a" {
			t.Fatalf("Lease holder %q while follower-a is mid-step; want follower-a until its step is done", h)
		}
		time.Sleep(20 * time.Millisecond) // polling a state that must not change
	}
	close(release)
	select {
	case <-stopped:
	case <-time.After(syncTimeout):
		t.Fatal("follower-a did not stop")
	}
	eventually(t, syncTimeout, func() error {
		l, err := leases.Get(t.Context(), fa.LeaseName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if h := utilptr.Deref(l.Spec.HolderIdentity, ""); h == "follower-a" {
			return fmt.Errorf("Lease still held by %s after it stopped", h)
		}
		return nil
	})
	// The step was finished, not abandoned: the copy is there, new.
	if got := mustGet(t, e.secrets(e.follower), "recreated"); string(got.Data["k"]) != "new-"+secretValue {
		t.Errorf("copy after the shutdown holds %q; want the new value", got.Data["k"])
	}
}

// TestSecondSignalExitsAtOnce: the first SIGTERM asks for a clean stop,
// which may wait (here on a hung API server, to release the Lease); a
// second one ends the process at once.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	testenv.SkipShort(t)
	bin := buildBinary(t)
	e := newSyncEnv(t)
	addr := e.config(false).MetricsAddr
	cmd := exec.Command(bin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "DSN=" + e.dsn, "ENCRYPTION_KEY=" + testKey, "CLUSTER_NAME=cluster-a",
		"NAMESPACES=" + e.ns, "KUBECONFIG=" + e.follower.Kubeconfig, "POD_NAMESPACE=" + e.sysB, "POD_NAME=follower-0",
		"METRICS_ADDR=" + addr}
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	(&daemon{metrics: addr}).waitMetric(t, "kube_secret_sync_active", 1)

	if err := e.follower.FreezeAPIServer(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.follower.ThawAPIServer(); err != nil {
			t.Error(err)
		}
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("the first SIGTERM ended the process (%v) although its API server hangs: the test no longer shows what a second one does", err)
	case <-time.After(time.Second): // it is waiting on the API server, as intended
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Errorf("after the second SIGTERM: %v; want the process ended by the signal", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the process did not end within 5s of a second SIGTERM\n%s", out.String())
	}
}
