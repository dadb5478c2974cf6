package main

// A randomized fault test of the real binaries on two real clusters and
// PostgreSQL: random creates, updates, deletes, unlabels and relabels while
// the leader and the follower are SIGKILLed (the leader once in the middle
// of a burst of a few hundred Secrets), PostgreSQL is killed and restarted,
// and the follower's API server hangs for a while (SIGSTOP, then SIGCONT).
// Afterwards the follower's managed copies must be exactly the leader
// cluster's labelled Secrets, within a stated bound.
//
// CHAOS_DURATION sets how long the faults and changes go on (default 40s,
// the short run of make test); make soak runs it longer. CHAOS_SEED
// replays a run.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// chaosConvergence bounds how long after the last fault and change the
// copies may take to equal the sources: a few full passes (TICK_SECONDS=2)
// and a restart of a daemon that lost its Lease.
const chaosConvergence = 90 * time.Second

// chaosMarker starts every Secret value of the run, so that the logs can be
// searched for any of them.
const chaosMarker = "chaos-secret-value-"

// supervised runs a binary as Kubernetes runs a container: restarted a
// second after it exits, unless it is being stopped.
type supervised struct {
	t    *testing.T
	bin  string
	env  []string
	name string
	out  syncBuffer

	mu       sync.Mutex
	cmd      *exec.Cmd
	stopping bool
	exits    []string // how each run ended, but the last
	done     chan struct{}
}

func supervise(t *testing.T, name, bin string, env []string) *supervised {
	s := &supervised{t: t, bin: bin, env: env, name: name, done: make(chan struct{})}
	go s.loop()
	t.Cleanup(s.stop)
	return s
}

func (s *supervised) loop() {
	defer close(s.done)
	for {
		cmd := exec.Command(s.bin)
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, s.env...)
		cmd.Stdout, cmd.Stderr = &s.out, &s.out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		s.mu.Lock()
		if s.stopping {
			s.mu.Unlock()
			return
		}
		err := cmd.Start()
		s.cmd = cmd
		s.mu.Unlock()
		if err != nil {
			s.t.Errorf("%s: start: %v", s.name, err)
			return
		}
		err = cmd.Wait()
		s.mu.Lock()
		stopping := s.stopping
		if !stopping {
			s.exits = append(s.exits, fmt.Sprint(err))
		}
		s.mu.Unlock()
		if stopping {
			if err != nil {
				s.t.Errorf("%s exited with %v after SIGTERM; want 0", s.name, err)
			}
			return
		}
		time.Sleep(time.Second) // a restart backoff, not a synchronisation
	}
}

// kill SIGKILLs the running process; the loop starts a new one.
func (s *supervised) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
	}
}

// stop ends the process with SIGTERM and stops restarting it.
func (s *supervised) stop() {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return
	}
	s.stopping = true
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
	}
	s.mu.Unlock()
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.kill()
		s.t.Errorf("%s did not stop within 30s of SIGTERM", s.name)
	}
}

// chaosSource is the leader cluster's side of the run: random changes to
// Secrets, some of them never labelled.
type chaosSource struct {
	t      *testing.T
	e      *syncEnv
	rng    *rand.Rand
	serial int
}

func (c *chaosSource) value() []byte {
	c.serial++
	return []byte(fmt.Sprintf("%s%d-%x", chaosMarker, c.serial, c.rng.Uint64()))
}

// create creates name, labelled or not, ignoring a name already taken.
func (c *chaosSource) create(name string, labelledToo bool) {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string][]byte{"k": c.value()}}
	if labelledToo {
		s.Labels = map[string]string{"kube-secret-sync": "true"}
	}
	if c.rng.IntN(4) == 0 {
		s.Type = corev1.SecretTypeTLS
		s.Data = map[string][]byte{"tls.crt": c.value(), "tls.key": c.value()}
	}
	_, err := c.e.secrets(c.e.leader).Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		c.t.Errorf("create %s: %v", name, err)
	}
}

// step makes one random change to one of the names.
func (c *chaosSource) step(names []string) {
	ctx := context.Background()
	secrets := c.e.secrets(c.e.leader)
	name := names[c.rng.IntN(len(names))]
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		c.create(name, !strings.HasPrefix(name, "local-"))
		return
	}
	if err != nil {
		c.t.Errorf("get %s: %v", name, err)
		return
	}
	switch op := c.rng.IntN(10); {
	case op < 5: // update
		for k := range s.Data {
			s.Data[k] = c.value()
		}
		if c.rng.IntN(3) == 0 {
			s.Data["extra"] = c.value()
		}
	case op < 7: // delete
		if err := secrets.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			c.t.Errorf("delete %s: %v", name, err)
		}
		return
	case strings.HasPrefix(name, "local-"): // never labelled
		s.Data["k"] = c.value()
	case op < 8 && s.Labels["kube-secret-sync"] == "true": // unlabel
		delete(s.Labels, "kube-secret-sync")
	default: // relabel
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		s.Labels["kube-secret-sync"] = "true"
	}
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		c.t.Errorf("update %s: %v", name, err)
	}
}

// converged reports how the follower's managed copies differ from the
// leader cluster's labelled Secrets (nil when they are equal), and fails
// the test outright if an unlabelled Secret has crossed.
func (e *syncEnv) converged(t *testing.T) error {
	ctx := context.Background()
	src, err := e.leader.Clientset.CoreV1().Secrets(e.ns).List(ctx, metav1.ListOptions{LabelSelector: "kube-secret-sync=true"})
	if err != nil {
		return err
	}
	dst, err := e.follower.Clientset.CoreV1().Secrets(e.ns).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		dst = &corev1.SecretList{}
	} else if err != nil {
		return err
	}
	want := map[string]*corev1.Secret{}
	for i := range src.Items {
		want[src.Items[i].Name] = &src.Items[i]
	}
	var diffs []string
	seen := map[string]bool{}
	for i := range dst.Items {
		d := &dst.Items[i]
		if strings.HasPrefix(d.Name, "local-") {
			t.Fatalf("the never labelled Secret %s crossed to the follower", d.Name)
		}
		if !isManaged(d) {
			continue
		}
		seen[d.Name] = true
		s, ok := want[d.Name]
		switch {
		case !ok:
			diffs = append(diffs, d.Name+": copy without a labelled source")
		case d.Type != s.Type:
			diffs = append(diffs, fmt.Sprintf("%s: type %s; want %s", d.Name, d.Type, s.Type))
		case !dataEqual(d.Data, s.Data):
			diffs = append(diffs, d.Name+": data differs")
		}
	}
	for name := range want {
		if !seen[name] {
			diffs = append(diffs, name+": no copy")
		}
	}
	slices.Sort(diffs)
	if len(diffs) > 0 {
		return fmt.Errorf("%d differences, e.g. %s", len(diffs), strings.Join(diffs[:min(5, len(diffs))], "; "))
	}
	return nil
}

func chaosDuration(t *testing.T) time.Duration {
	v := os.Getenv("CHAOS_DURATION")
	if v == "" {
		return 40 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 10*time.Second {
		t.Fatalf("CHAOS_DURATION=%q: want a duration of at least 10s", v)
	}
	return d
}

func TestChaos(t *testing.T) {
	testenv.SkipShort(t)
	duration := chaosDuration(t)
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("CHAOS_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("CHAOS_SEED=%q: %v", v, err)
		}
	}
	t.Logf("chaos: CHAOS_SEED=%d CHAOS_DURATION=%v", seed, duration)
	bin := buildBinary(t)
	e := newSyncEnv(t)
	pg := e.ownPostgres("chaos") // its own, to kill
	common := []string{"DSN=" + e.dsn, "ENCRYPTION_KEY=" + testKey, "TICK_SECONDS=2", "POLL_SECONDS=0.2",
		"CLUSTER_NAME=cluster-a", "NAMESPACES=" + e.ns, "DEBUG=1"}
	leaderAddr, followerAddr := e.config(true).MetricsAddr, e.config(true).MetricsAddr
	leader := supervise(t, "leader", bin, append([]string{"LEADER=1", "KUBECONFIG=" + e.leader.Kubeconfig,
		"POD_NAMESPACE=" + e.sysA, "POD_NAME=leader-0", "METRICS_ADDR=" + leaderAddr}, common...))
	follower := supervise(t, "follower", bin, append([]string{"KUBECONFIG=" + e.follower.Kubeconfig,
		"POD_NAMESPACE=" + e.sysB, "POD_NAME=follower-0", "METRICS_ADDR=" + followerAddr}, common...))
	(&daemon{metrics: followerAddr}).waitMetric(t, "kube_secret_sync_active", 1)

	src := &chaosSource{t: t, e: e, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	var names []string
	for i := range 40 {
		names = append(names, fmt.Sprintf("s-%02d", i))
	}
	for i := range 5 {
		names = append(names, fmt.Sprintf("local-%d", i))
	}
	for _, n := range names {
		src.create(n, !strings.HasPrefix(n, "local-"))
	}

	start := time.Now()
	at := func(share float64) time.Time { return start.Add(time.Duration(share * float64(duration))) }
	faults := []struct {
		at   time.Time
		name string
		do   func()
	}{
		{at(0.1), "a burst of 300 Secrets, the leader SIGKILLed halfway", func() {
			for i := range 300 {
				src.create(fmt.Sprintf("burst-%03d", i), true)
				if i == 150 {
					leader.kill()
				}
			}
		}},
		{at(0.3), "follower SIGKILLed", follower.kill},
		{at(0.45), "PostgreSQL killed and restarted", func() {
			pg.Crash()
			if err := pg.Resume(t.Context()); err != nil {
				t.Fatal(err)
			}
		}},
		{at(0.6), "follower's API server frozen for 8s", func() {
			if err := e.follower.FreezeAPIServer(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(8 * time.Second) // the length of the fault
			if err := e.follower.ThawAPIServer(); err != nil {
				t.Fatal(err)
			}
		}},
		{at(0.95), "leader SIGKILLed", leader.kill},
	}
	for time.Now().Before(start.Add(duration)) {
		if len(faults) > 0 && time.Now().After(faults[0].at) {
			t.Logf("chaos: %v: %s", time.Since(start).Round(time.Second), faults[0].name)
			faults[0].do()
			faults = faults[1:]
			continue
		}
		src.step(names)
		time.Sleep(time.Duration(20+src.rng.IntN(60)) * time.Millisecond) // the pace of changes
	}
	for _, f := range faults {
		f.do()
	}

	quiet := time.Now()
	var last error
	for {
		if last = e.converged(t); last == nil {
			break
		}
		if time.Since(quiet) > chaosConvergence {
			t.Fatalf("chaos: not converged %v after the last change: %v", chaosConvergence, last)
		}
		time.Sleep(200 * time.Millisecond) // polling the two clusters
	}
	t.Logf("chaos: converged %v after the last change and fault (bound %v)", time.Since(quiet).Round(100*time.Millisecond), chaosConvergence)

	leader.stop()
	follower.stop()
	for _, s := range []*supervised{leader, follower} {
		out := s.out.String()
		if strings.Contains(out, "panic:") || strings.Contains(out, "fatal error:") {
			t.Errorf("%s panicked:\n%s", s.name, out)
		}
		if strings.Contains(out, chaosMarker) || strings.Contains(out, testKey) || strings.Contains(out, testPassword) {
			t.Errorf("%s logged a Secret value, the key or the DSN password", s.name)
		}
		t.Logf("chaos: %s restarted %d times: %v", s.name, len(s.exits), s.exits)
	}
	if len(leader.exits) == 0 {
		t.Error("the leader was never killed: the run shows nothing")
	}
}
