package main

// A randomized fault test of the real binaries on three real clusters and
// PostgreSQL: two leaders (a writer and a standby, LEADER=1 in both) and a
// follower. Random creates, updates, deletes, unlabels and relabels are
// made in the writer's cluster while the writer and the follower are
// SIGKILLed (the writer once in the middle of a burst of a few hundred
// Secrets), the writer's region is lost twice at random moments (SIGKILLed
// and kept down, or paused with SIGSTOP, past its claim: the standby takes
// over, and the changes go on in its cluster), PostgreSQL is killed and
// restarted, and the follower's API server hangs for a while (SIGSTOP,
// then SIGCONT). Afterwards the follower's managed copies must be exactly
// the writer cluster's labelled Secrets, the standby's copies must agree
// with them, and no two leaders may have written in one epoch, within a
// stated bound.
//
// CHAOS_DURATION sets how long the faults and changes go on (default 40s,
// the short run of make test); make soak runs it longer. CHAOS_SEED
// replays a run. CHAOS_LOGS, a directory, receives
// the daemons' logs of a run that does not converge.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
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
	running  bool // cmd has started and not yet exited
	stopping bool
	exits    []string  // how each run ended, but the last
	downTill time.Time // no restart before then (down)
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
		s.cmd, s.running = cmd, err == nil
		s.mu.Unlock()
		if err != nil {
			s.t.Errorf("%s: start: %v", s.name, err)
			return
		}
		err = cmd.Wait()
		s.mu.Lock()
		s.running = false
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
		// A region lost during the backoff keeps the process down, so
		// the time left is read after it.
		for {
			s.mu.Lock()
			left := time.Until(s.downTill)
			s.mu.Unlock()
			if left <= 0 {
				break
			}
			time.Sleep(left) // the lost region's time, not a synchronisation
		}
	}
}

// down SIGKILLs the running process and starts the next one only after d:
// its region is lost for that long.
func (s *supervised) down(d time.Duration) {
	s.mu.Lock()
	s.downTill = time.Now().Add(d)
	s.mu.Unlock()
	s.kill()
}

// pause stops the running process (SIGSTOP) for d, then lets it go on.
// A process between restarts stays down for d instead: either way it
// does nothing for that long.
func (s *supervised) pause(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		s.downTill = time.Now().Add(d)
		return
	}
	p := s.cmd.Process
	_ = p.Signal(syscall.SIGSTOP)
	time.AfterFunc(d, func() { _ = p.Signal(syscall.SIGCONT) })
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
		_ = s.cmd.Process.Signal(syscall.SIGCONT)
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

// chaosSource is the writer cluster's side of the run: random changes to
// Secrets, some of them never labelled, in cluster (the cluster of the
// leader that holds the writer claim).
type chaosSource struct {
	t       *testing.T
	e       *syncEnv
	rng     *rand.Rand
	serial  int
	cluster *testenv.Cluster
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
	_, err := c.e.secrets(c.cluster).Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		c.t.Errorf("create %s: %v", name, err)
	}
}

// step makes one random change to one of the names.
func (c *chaosSource) step(names []string) {
	ctx := context.Background()
	secrets := c.e.secrets(c.cluster)
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

// converged reports how the managed copies in cluster to differ from the
// labelled Secrets of cluster from, whose leader writes (nil when they are
// equal), and fails the test outright if a never labelled Secret has
// crossed. Two differences are what failover promises: in a standby's
// cluster (standby), a Secret of the standby's own, which it never
// overwrites (a conflict, reported as such), may stand in for a copy; and a copy may
// stand for a live row of the previous writer that the writer has no
// labelled Secret for (a foreign row, kept and reported by the writer:
// reported says whether it was).
func (e *syncEnv) converged(t *testing.T, from, to *testenv.Cluster, standby bool, writer string, reported func(name string) bool) error {
	ctx := context.Background()
	src, err := from.Clientset.CoreV1().Secrets(e.ns).List(ctx, metav1.ListOptions{LabelSelector: "kube-secret-sync=true"})
	if err != nil {
		return err
	}
	dst, err := to.Clientset.CoreV1().Secrets(e.ns).List(ctx, metav1.ListOptions{})
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
		if strings.HasPrefix(d.Name, "local-") && (isManaged(d) || !standby) {
			t.Fatalf("the never labelled Secret %s crossed to %s", d.Name, to.Name)
		}
		// A standby's own Secrets include its former copies that were
		// unlabelled there, which keep the managed mark.
		if !isManaged(d) || (standby && d.Labels["kube-secret-sync"] != "true") {
			seen[d.Name] = seen[d.Name] || standby
			continue
		}
		seen[d.Name] = true
		s, ok := want[d.Name]
		switch {
		case !ok:
			if row := e.readRow(d.Name); row.Tombstone || row.SourceCluster == writer || appliedVersion(d) != row.Version {
				diffs = append(diffs, d.Name+": copy without a labelled source")
			} else if !reported(d.Name) {
				diffs = append(diffs, fmt.Sprintf("%s: copy of a row of %s that the writer %s has no Secret for, not reported by the writer", d.Name, row.SourceCluster, writer))
			}
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
		return fmt.Errorf("%s: %d differences, e.g. %s", to.Name, len(diffs), strings.Join(diffs[:min(5, len(diffs))], "; "))
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
	sb := testenv.Clusters(t, 3)[2]
	mustCreateNamespace(t, sb, e.ns)
	t.Cleanup(func() { testenv.DeleteNamespace(t, sb, e.ns) })
	fe := &failoverEnv{syncEnv: e, sb: sb, db: mustOpenStore(t, e.dsn)}
	const claimTTL = 3 * time.Second
	common := []string{"DSN=" + e.dsn, "ENCRYPTION_KEY=" + testKey, "TICK_SECONDS=2", "POLL_SECONDS=0.2",
		fmt.Sprintf("WRITER_CLAIM_SECONDS=%g", claimTTL.Seconds()), "NAMESPACES=" + e.ns, "DEBUG=1"}
	daemonOn := func(c *testenv.Cluster, name, podNamespace string, more ...string) *supervised {
		return supervise(t, name, bin, slices.Concat(more, common, []string{"CLUSTER_NAME=" + name,
			"KUBECONFIG=" + c.Kubeconfig, "POD_NAMESPACE=" + podNamespace, "POD_NAME=" + name + "-0",
			"METRICS_ADDR=" + e.config(true).MetricsAddr}))
	}
	// The writer starts first, so that it is cluster-a.
	leaders := map[string]*supervised{"cluster-a": daemonOn(e.leader, "cluster-a", e.sysA, "LEADER=1")}
	fe.waitWriter("cluster-a", syncTimeout)
	leaders["cluster-sb"] = daemonOn(sb, "cluster-sb", testenv.Namespace(t, sb), "LEADER=1")
	followerAddr := e.config(false).MetricsAddr
	follower := supervise(t, "follower", bin, slices.Concat(common, []string{"CLUSTER_NAME=cluster-b",
		"KUBECONFIG=" + e.follower.Kubeconfig, "POD_NAMESPACE=" + e.sysB, "POD_NAME=follower-0", "METRICS_ADDR=" + followerAddr}))
	(&daemon{metrics: followerAddr}).waitMetric(t, "kube_secret_sync_active", 1)
	clusters := map[string]*testenv.Cluster{"cluster-a": e.leader, "cluster-sb": sb}

	src := &chaosSource{t: t, e: e, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), cluster: e.leader}
	writer := "cluster-a"
	// holder reads the writer claim, through a PostgreSQL that may be
	// restarting.
	holder := func(timeout time.Duration) string {
		var h string
		eventually(t, timeout, func() error {
			c, err := fe.db.ReadClaim(t.Context())
			if err != nil {
				return err
			}
			h = c.Holder
			if h == "" {
				return errors.New("no writer")
			}
			return nil
		})
		return h
	}
	// follow makes the changes in the cluster of the leader that writes.
	follow := func() {
		if h := holder(chaosConvergence); h != writer {
			t.Logf("chaos: the writer is now %s", h)
			writer, src.cluster = h, clusters[h]
		}
	}
	// regionLost takes the writer away, SIGKILLed and kept down or paused,
	// for long enough that its claim expires (twice its lifetime, as a
	// restarted writer takes its own claim back at once), and waits for
	// the standby to take over.
	regionLost := func() {
		from, to := writer, map[string]string{"cluster-a": "cluster-sb", "cluster-sb": "cluster-a"}[writer]
		how, lose := "SIGKILLed and kept down", leaders[from].down
		if src.rng.IntN(2) == 0 {
			how, lose = "paused (SIGSTOP)", leaders[from].pause
		}
		t.Logf("chaos: the writer %s %s for %v", from, how, 2*claimTTL+2*time.Second)
		lost := time.Now()
		lose(2*claimTTL + 2*time.Second)
		eventually(t, 30*time.Second, func() error {
			if h := holder(chaosConvergence); h != to {
				return fmt.Errorf("writer claim held by %s; want the standby %s to take over", h, to)
			}
			return nil
		})
		t.Logf("chaos: %s took the writer claim over %v after %s was lost", to, time.Since(lost).Round(100*time.Millisecond), from)
		writer, src.cluster = to, clusters[to]
	}
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
	type fault struct {
		at   time.Time
		name string
		do   func()
	}
	faults := []fault{
		{at(0.1), "a burst of 300 Secrets, the writer SIGKILLed halfway", func() {
			for i := range 300 {
				src.create(fmt.Sprintf("burst-%03d", i), true)
				if i == 150 {
					leaders[writer].kill()
				}
			}
		}},
		{at(0.15 + 0.15*src.rng.Float64()), "the writer's region lost", regionLost},
		{at(0.65 + 0.2*src.rng.Float64()), "the writer's region lost", regionLost},
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
		{at(0.95), "writer SIGKILLed", func() { leaders[writer].kill() }},
	}
	slices.SortFunc(faults, func(a, b fault) int { return a.at.Compare(b.at) })
	for time.Now().Before(start.Add(duration)) {
		if len(faults) > 0 && time.Now().After(faults[0].at) {
			t.Logf("chaos: %v: %s", time.Since(start).Round(time.Second), faults[0].name)
			faults[0].do()
			faults = faults[1:]
			// A writer that was slow to come back may have lost its claim.
			follow()
			continue
		}
		src.step(names)
		time.Sleep(time.Duration(20+src.rng.IntN(60)) * time.Millisecond) // the pace of changes
	}
	for _, f := range faults {
		f.do()
	}
	follow()

	quiet := time.Now()
	var last error
	standby := map[string]*testenv.Cluster{"cluster-a": sb, "cluster-sb": e.leader}[writer]
	for {
		reported := func(name string) bool {
			for line := range strings.Lines(leaders[writer].out.String()) {
				if strings.Contains(line, "row of another cluster kept as it is") && strings.Contains(line, `"name":"`+name+`"`) {
					return true
				}
			}
			return false
		}
		if last = e.converged(t, src.cluster, e.follower, false, writer, reported); last == nil {
			last = e.converged(t, src.cluster, standby, true, writer, reported)
		}
		if last == nil {
			break
		}
		if time.Since(quiet) > chaosConvergence {
			if dir := os.Getenv("CHAOS_LOGS"); dir != "" {
				for _, s := range []*supervised{leaders["cluster-a"], leaders["cluster-sb"], follower} {
					_ = os.WriteFile(filepath.Join(dir, s.name+".log"), []byte(s.out.String()), 0o600)
				}
			}
			t.Fatalf("chaos: not converged %v after the last change: %v", chaosConvergence, last)
		}
		time.Sleep(200 * time.Millisecond) // polling the two clusters
	}
	t.Logf("chaos: converged %v after the last change and fault (bound %v)", time.Since(quiet).Round(100*time.Millisecond), chaosConvergence)

	if h := holder(syncTimeout); h != writer {
		t.Errorf("the writer claim moved to %s while converging; no region was lost then", h)
	}
	fe.checkEpochs()
	if c := fe.claimHolder(); c.Epoch < 3 {
		t.Errorf("writer epoch %d; want at least 3 (two takeovers)", c.Epoch)
	}
	all := []*supervised{leaders["cluster-a"], leaders["cluster-sb"], follower}
	for _, s := range all {
		s.stop()
	}
	restarts := 0
	for _, s := range all {
		out := s.out.String()
		if strings.Contains(out, "panic:") || strings.Contains(out, "fatal error:") {
			t.Errorf("%s panicked:\n%s", s.name, out)
		}
		if strings.Contains(out, chaosMarker) || strings.Contains(out, testKey) || strings.Contains(out, testPassword) {
			t.Errorf("%s logged a Secret value, the key or the DSN password", s.name)
		}
		t.Logf("chaos: %s restarted %d times: %v", s.name, len(s.exits), s.exits)
		restarts += len(s.exits)
	}
	if restarts == 0 {
		t.Error("no daemon was ever killed: the run shows nothing")
	}
}

// TestSupervisedStaysDown checks the chaos test's supervisor: a region lost
// while the process is between restarts (killed a moment before) keeps it
// down for the whole time, whether the loss is a kill or a pause.
func TestSupervisedStaysDown(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "daemon.sh")
	script := "#!/bin/sh\ntrap 'exit 0' TERM\necho started\nwhile :; do sleep 0.1; done\n"
	if err := os.WriteFile(bin, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	const lost = 3 * time.Second
	for _, how := range []string{"down", "pause"} {
		t.Run(how, func(t *testing.T) {
			s := supervise(t, how, bin, nil)
			exits := func() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.exits) }
			// started waits until the script has run n times, each with
			// its SIGTERM trap set (so that the test's stop ends it with 0).
			started := func(n int) {
				eventually(t, 10*time.Second, func() error {
					if got := strings.Count(s.out.String(), "started\n"); got < n {
						return fmt.Errorf("started %d times; want %d", got, n)
					}
					return nil
				})
			}
			started(1)
			s.kill()
			eventually(t, 10*time.Second, func() error {
				if exits() == 0 {
					return errors.New("not exited after SIGKILL")
				}
				return nil
			})
			from := time.Now()
			map[string]func(time.Duration){"down": s.down, "pause": s.pause}[how](lost)
			started(2)
			if took := time.Since(from); took < lost {
				t.Errorf("restarted %v after the region was lost for %v", took.Round(10*time.Millisecond), lost)
			}
		})
	}
}
