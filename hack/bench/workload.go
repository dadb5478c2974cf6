package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// workload is one size N, from a fresh environment to its result.
type workload struct {
	*bench
	n          int
	prefix     string
	latency    bool
	memoryTest bool
	dbDelay    time.Duration // one way, through a delaying proxy (0: none)

	env   *testenv.Env
	a, b  *testenv.Cluster
	fastA kubernetes.Interface // the bench's own writes in cluster-a
	dsn   string               // the bench's own, direct
	// proxies stand between each role's daemons and PostgreSQL, counting
	// the bytes read (and delaying them by dbDelay).
	proxies map[string]*testenv.DelayProxy
	db      *pgx.Conn
	encKey  string

	sources   []*corev1.Secret
	tr        *tracker
	stopWatch context.CancelFunc
	res       *result
	running   []*daemon
}

// run measures the workload. Phase failures are recorded in the result;
// a failed initial sync ends the workload early.
func (w *workload) run(ctx context.Context) *result {
	w.res = &result{N: w.n, Namespaces: w.opts.namespaces, PollS: ptr(w.poll)}
	if w.dbDelay > 0 {
		w.res.DBRTTMs = ptr(float64(2 * w.dbDelay / time.Millisecond))
	}
	fail := func(what string, err error) {
		w.failed = true
		w.res.Errors = append(w.res.Errors, fmt.Sprintf("%s: %v", what, err))
		w.logf("N=%d: %s FAILED: %v", w.n, what, err)
	}
	defer w.close()
	if err := w.setUp(ctx); err != nil {
		fail("set-up", err)
		return w.res
	}
	// The watched writer runs before the sync and after it: the machine's
	// speed drifts over a run of minutes (other tenants), and the mean of
	// the two is the API server's rate around the sync's time. Before, it
	// writes into an etcd holding none of the sync's Secrets; after, into
	// one holding them twice over; the sync writes between.
	w.res.UnthrottledWorkers = ptr(w.opts.createWorkers)
	writerBefore, _, err := w.unthrottledWriter(ctx, "before", true)
	if err != nil {
		fail("unthrottled writer before the sync", err)
	}
	leader, follower, err := w.initialSync(ctx)
	if err != nil {
		fail("initial sync", err)
		w.stopPair(leader, follower)
		return w.res
	}
	if w.latency {
		if err := w.latencyPhase(ctx, "defaults", leader, follower, &w.res.LatencyP50Ms, &w.res.LatencyP99Ms, &w.res.LatencyMaxMs); err != nil {
			fail("latency (defaults)", err)
		}
	}
	if w.memoryTest {
		if err := w.memoryCheck(ctx, leader); err != nil {
			fail("leader memory check", err)
		}
	}
	ls, fs := w.stopPair(leader, follower)
	if ls != nil && fs != nil {
		w.res.LeaderRSSMiB, w.res.FollowerRSSMiB = round(ls.hwmMiB, 1), round(fs.hwmMiB, 1)
		w.res.LeaderCPUS, w.res.FollowerCPUS = round(ls.cpuS, 2), round(fs.cpuS, 2)
	}
	if ctx.Err() != nil {
		return w.res
	}
	// The watched writer again, then the unwatched one: each writer adds N
	// Secrets to cluster-b's etcd.
	if writerAfter, _, err := w.unthrottledWriter(ctx, "unthrottled", true); err != nil {
		fail("unthrottled writer", err)
	} else {
		w.res.UnthrottledWriteAfterS = round(writerAfter.Seconds(), 2)
		if writerBefore > 0 { // the ratio is against both or none
			w.res.UnthrottledWriteBeforeS = round(writerBefore.Seconds(), 2)
			w.res.UnthrottledWriteS = round((writerBefore+writerAfter).Seconds()/2, 2)
			if w.res.InitialSyncS != nil {
				w.res.Ratio = round(*w.res.InitialSyncS / *w.res.UnthrottledWriteS, 2)
			}
		}
	}
	if took, clientCPUS, err := w.unthrottledWriter(ctx, "unwatched", false); err != nil {
		fail("unthrottled writer, no watch", err)
	} else {
		w.res.UnwatchedWriteS = round(took.Seconds(), 2)
		w.res.WriterClientCPUMs = round(clientCPUS*1000/float64(w.n), 3)
		if w.res.InitialSyncS != nil {
			w.res.RatioUnwatched = round(*w.res.InitialSyncS / *w.res.UnwatchedWriteS, 2)
		}
	}
	if err := w.idlePhase(ctx); err != nil {
		fail("idle", err)
	}
	if w.latency && w.hint && ctx.Err() == nil {
		if err := w.noHintPhase(ctx); err != nil {
			fail("latency (PG_NOTIFY=0)", err)
		}
	}
	return w.res
}

// setUp starts the environment and creates the N labelled Secrets in
// cluster-a (not timed).
func (w *workload) setUp(ctx context.Context) error {
	w.logf("N=%d: starting PostgreSQL, %s and %s", w.n, testenv.ClusterA, testenv.ClusterB)
	env, err := testenv.Start(ctx, testenv.ClusterA, testenv.ClusterB)
	if err != nil {
		return err
	}
	w.env, w.a, w.b = env, env.Clusters[0], env.Clusters[1]
	if w.dsn, err = env.Postgres.CreateDatabase(ctx, fmt.Sprintf("kss_bench_%d", w.n)); err != nil {
		return err
	}
	if w.db, err = pgx.Connect(ctx, w.dsn); err != nil {
		return fmt.Errorf("connect to the bench database: %w", err)
	}
	// The schema first, as an installation does (kube-secret-sync migrate
	// as the database's owner), not timed.
	migrate := exec.CommandContext(ctx, w.binary, "migrate")
	migrate.Env = []string{"DSN=" + w.dsn, "PATH=" + os.Getenv("PATH")}
	if out, err := migrate.CombinedOutput(); err != nil {
		return fmt.Errorf("kube-secret-sync migrate: %w\n%s", err, out)
	}
	pg := w.db.Config().Host + ":" + strconv.Itoa(int(w.db.Config().Port))
	w.proxies = map[string]*testenv.DelayProxy{}
	for _, role := range []string{"leader", "follower"} {
		if w.proxies[role], err = testenv.StartDelayProxy(pg, w.dbDelay); err != nil {
			return err
		}
	}
	if w.dbDelay > 0 {
		w.logf("N=%d: the daemons reach PostgreSQL through a proxy that adds %v per round trip", w.n, 2*w.dbDelay)
	}
	if w.encKey, err = testenv.EncryptionKey(); err != nil {
		return err
	}
	for _, c := range env.Clusters {
		if _, err := c.Clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testenv.SystemNamespace}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("%s: create namespace %s: %w", c.Name, testenv.SystemNamespace, err)
		}
	}
	if w.fastA, err = newClient(w.a.Config, 5000, 10000, "kss-bench-setup"); err != nil {
		return err
	}
	namespaces := namespaceNames(w.prefix+"-src", w.opts.namespaces)
	start := time.Now()
	if w.sources, err = newSecrets(w.n, namespaces, map[string]string{syncLabel: "true"}); err != nil {
		return err
	}
	w.logf("N=%d: set-up: made %d TLS key pairs and certificates in %s", w.n, w.n, secs(time.Since(start)))
	w.res.SecretDataBytes = *round(avgDataBytes(w.sources), 0)
	start = time.Now()
	if err := createAll(ctx, w.fastA, w.opts.createWorkers, namespaces, w.sources, func(done int) {
		w.logf("N=%d: set-up: %d/%d labelled Secrets created in %s", w.n, done, w.n, testenv.ClusterA)
	}); err != nil {
		return fmt.Errorf("%s: %w", testenv.ClusterA, err)
	}
	w.logf("N=%d: set-up: %d labelled Secrets (%.0f bytes of data each) in %d namespaces of %s in %s (not timed)",
		w.n, w.n, w.res.SecretDataBytes, len(namespaces), testenv.ClusterA, secs(time.Since(start)))
	// The watch ends before the clusters do (close), not with ctx.
	wctx, cancel := context.WithCancel(ctx)
	w.stopWatch = cancel
	if w.tr, err = startTracker(wctx, w.b.Config, managedLabel+"=true"); err != nil {
		return err
	}
	return nil
}

// sourceCopies returns the workload's Secrets spread over a fresh set of
// namespaces named after writer, for a writer that is not the follower. They
// carry not the selection label but benchLabel=writer: nothing should
// mistake them for sources or copies.
func (w *workload) sourceCopies(writer string) ([]string, []*corev1.Secret) {
	namespaces := namespaceNames(w.prefix+"-"+writer, w.opts.namespaces)
	secrets := make([]*corev1.Secret, len(w.sources))
	for i, s := range w.sources {
		s = s.DeepCopy()
		s.Namespace = namespaces[i%len(namespaces)]
		s.Labels = map[string]string{benchLabel: writer}
		secrets[i] = s
	}
	return namespaces, secrets
}

// unthrottledWriter creates the same Secrets in fresh namespaces of
// cluster-b, named after name, with as many concurrent calls as the set-up
// uses and no client rate limit: the API server's own write rate on this
// machine, the real limit of the initial sync. It runs while no daemon does. Watched, it is
// timed as the sync is: until a watch like the sync's has seen every
// Secret it wrote, with that watch running meanwhile, so whatever the watch
// costs the API server is in both figures. Unwatched, it is timed until its
// calls return, with no watch running.
// It returns its time and the CPU that the bench's process (the writer's
// client, and the watch) used meanwhile.
func (w *workload) unthrottledWriter(ctx context.Context, name string, watched bool) (took time.Duration, clientCPUS float64, err error) {
	if ctx.Err() != nil {
		return 0, 0, ctx.Err()
	}
	phase := "unthrottled writer (" + name + ")"
	if !watched {
		phase += ", no watch"
	}
	c, err := newClient(w.b.Config, 1e6, 1e6, "kss-bench-"+name+"-writer")
	if err != nil {
		return 0, 0, err
	}
	namespaces, secrets := w.sourceCopies(name)
	var tr *tracker
	var seen <-chan struct{} // closed once the watch has seen every Secret
	if watched {
		tctx, stopTracker := context.WithCancel(ctx)
		defer stopTracker()
		if tr, err = startTracker(tctx, w.b.Config, benchLabel+"="+name); err != nil {
			return 0, 0, err
		}
		seen = tr.expectAll(secrets)
	}
	w.logf("N=%d: %s: %d Secrets + %d namespaces into %s, %d workers, no client rate limit",
		w.n, phase, w.n, len(namespaces), testenv.ClusterB, w.opts.createWorkers)
	requestsBefore := w.requestCounts(ctx)
	cpuBefore := takeCPUSnapshot()
	start := time.Now()
	if err := createAll(ctx, c, w.opts.createWorkers, namespaces, secrets, nil); err != nil {
		return 0, 0, err
	}
	calls := time.Since(start)
	if tr != nil {
		select {
		case <-seen:
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(w.opts.syncTimeout):
			m, n, present := tr.progress()
			return 0, 0, fmt.Errorf("%w: the watch saw %d of %d Secrets (%d present) after %s", errTimeout, m, n, present, w.opts.syncTimeout)
		}
	}
	took = time.Since(start)
	uses := cpuSince(cpuBefore, takeCPUSnapshot(), w.cpuNames())
	w.logf("N=%d: %s: CPU by process, %s", w.n, phase, formatCPUUse(uses))
	for _, u := range uses {
		if u.name == "bench" {
			clientCPUS = u.cpuS
		}
	}
	w.logRequestsSince(ctx, phase, requestsBefore)
	w.logf("N=%d: %s: done in %s (%.0f Secrets/s; its calls had returned after %s)", w.n, phase, secs(took), float64(w.n)/took.Seconds(), secs(calls))
	return took, clientCPUS, nil
}

// cpuNames names the processes of the bench's machine for cpuSince: the
// clusters' servers, the bench itself (with the delaying proxy, when the
// database is remote) and the daemons ds.
func (w *workload) cpuNames(ds ...*daemon) map[int]string {
	names := map[int]string{os.Getpid(): "bench"}
	for _, c := range []*testenv.Cluster{w.a, w.b} {
		apiserver, etcd := c.Pids()
		names[apiserver], names[etcd] = "kube-apiserver-"+c.Name, "etcd-"+c.Name
	}
	for _, d := range ds {
		names[d.Pid()] = d.role
	}
	return names
}

// requestCounts is apiRequests of each cluster, by name; a cluster whose
// metrics cannot be read is left out.
func (w *workload) requestCounts(ctx context.Context) map[string]map[string]float64 {
	out := map[string]map[string]float64{}
	for _, c := range []*testenv.Cluster{w.a, w.b} {
		if r, err := apiRequests(ctx, c); err == nil {
			out[c.Name] = r
		}
	}
	return out
}

// logRequestsSince logs what each API server served in a phase, and the
// watches it closed because their client read too slowly.
func (w *workload) logRequestsSince(ctx context.Context, phase string, before map[string]map[string]float64) {
	counts := w.requestCounts(ctx)
	for _, c := range []*testenv.Cluster{w.a, w.b} {
		b, ok := before[c.Name]
		if !ok || counts[c.Name] == nil {
			continue
		}
		w.logf("N=%d: %s: %s served %s", w.n, phase, c.Name, formatRequestsSince(b, counts[c.Name]))
		if counts[c.Name]["terminated-watch secrets"] > b["terminated-watch secrets"] {
			for _, line := range slowWatchers(c.APIServerLog(), 3) {
				w.logf("N=%d: %s: %s log: %s", w.n, phase, c.Name, line)
			}
		}
	}
}

// slowWatchers are the last lines (up to last) of an API server's log that say it
// closed a watch on an unresponsive client.
func slowWatchers(log string, last int) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "unresponsive") {
			out = append(out, line)
		}
	}
	return out[max(0, len(out)-last):]
}

// daemonVars is a daemon's environment: the binary's defaults plus extra.
func (w *workload) daemonVars(d *daemon, extra map[string]string) map[string]string {
	cluster := w.a
	if d.role == "follower" {
		cluster = w.b
	}
	vars := map[string]string{
		"DSN":            w.daemonDSN(d.role),
		"ENCRYPTION_KEY": w.encKey,
		"KUBECONFIG":     cluster.Kubeconfig,
		"CLUSTER_NAME":   cluster.Name,
		"POD_NAMESPACE":  testenv.SystemNamespace,
		"POD_NAME":       d.podName,
		"METRICS_ADDR":   d.metrics,
	}
	if d.role == "leader" {
		vars["LEADER"] = "1"
	}
	if w.opts.goMemLimit != "" {
		vars["GOMEMLIMIT"] = w.opts.goMemLimit
	}
	maps.Copy(vars, w.opts.env)
	maps.Copy(vars, extra)
	return vars
}

// startPair starts a leader and a follower for phase, both with extra on
// top of the binary's defaults.
func (w *workload) startPair(phase string, extra map[string]string) (leader, follower *daemon, err error) {
	leader = &daemon{role: "leader", phase: phase, n: w.n, podName: "leader-" + phase}
	follower = &daemon{role: "follower", phase: phase, n: w.n, podName: "follower-" + phase}
	for _, d := range []*daemon{leader, follower} {
		if d.metrics, err = w.freeAddr(); err != nil {
			return leader, follower, err
		}
		vars := w.daemonVars(d, extra)
		if vars["PPROF_ADDR"] == "auto" {
			if d.pprof, err = w.freeAddr(); err != nil {
				return leader, follower, err
			}
			vars["PPROF_ADDR"] = d.pprof
		}
		if err := d.start(w.binary, w.logDir, vars); err != nil {
			return leader, follower, err
		}
		w.running = append(w.running, d)
	}
	return leader, follower, nil
}

// startReadyPair is startPair followed by waitReady for both, with other
// ports if a metrics address was taken.
func (w *workload) startReadyPair(ctx context.Context, phase string, extra map[string]string) (leader, follower *daemon, err error) {
	for attempt := 1; ; attempt++ {
		leader, follower, err = w.startPair(phase, extra)
		if err == nil {
			if err = w.waitReady(ctx, leader); err == nil {
				err = w.waitReady(ctx, follower)
			}
		}
		if err == nil || attempt == 3 || !errors.Is(err, errPortTaken) {
			return leader, follower, err
		}
		w.logf("N=%d: %v; restarting the %s daemons on other ports", w.n, err, phase)
		w.stopPair(leader, follower)
	}
}

// waitReady waits until d answers /readyz and holds its Lease.
func (w *workload) waitReady(ctx context.Context, d *daemon) error {
	client := w.a.Clientset
	if d.role == "follower" {
		client = w.b.Clientset
	}
	return poll(ctx, 90*time.Second, 100*time.Millisecond, []*daemon{d}, func(ctx context.Context) error {
		if err := d.ownsMetricsAddr(); err != nil {
			return err
		}
		if code, _, err := d.get(ctx, "/readyz"); err != nil || code != 200 {
			return fmt.Errorf("%s /readyz: %d %v", d.role, code, err)
		}
		lease, err := client.CoordinationV1().Leases(testenv.SystemNamespace).Get(ctx, testenv.LeaseName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if h := lease.Spec.HolderIdentity; h == nil || *h != d.podName {
			return fmt.Errorf("lease not held by %s", d.podName)
		}
		return nil
	})
}

// poll calls cond every interval until it returns nil, timeout passes, ctx
// ends or one of the daemons exits.
func poll(ctx context.Context, timeout, interval time.Duration, alive []*daemon, cond func(context.Context) error) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	var last error
	for {
		for _, d := range alive {
			if err := d.Exited(); err != nil {
				return err
			}
		}
		err := cond(wctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, errPortTaken) {
			return err // waiting will not change it
		}
		if wctx.Err() == nil || last == nil {
			last = err
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w after %s: %v", errTimeout, timeout, last)
		case <-t.C:
		}
	}
}

// sleep waits d, or less if ctx ends or a daemon exits.
func sleep(ctx context.Context, d time.Duration, alive ...*daemon) error {
	deadline := time.Now().Add(d)
	for {
		for _, dm := range alive {
			if err := dm.Exited(); err != nil {
				return err
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(left, 250*time.Millisecond)):
		}
	}
}

// stopPair reads the daemons' /proc figures, stops them with SIGTERM and
// reports on their logs. The figures are nil if a daemon was not running.
func (w *workload) stopPair(leader, follower *daemon) (ls, fs *procStats) {
	pair := []*daemon{leader, follower}
	stats := make([]*procStats, 2)
	for i, d := range pair {
		if d == nil || d.Daemon == nil || d.Exited() != nil {
			continue
		}
		if p, err := readProc(d.Pid()); err == nil {
			stats[i] = &p
			if d.phase == "probe" {
				continue
			}
			peak := &w.res.LeaderRSSAllRunsMiB
			if d.role == "follower" {
				peak = &w.res.FollowerRSSAllRunsMiB
			}
			if *peak == nil || p.hwmMiB > **peak {
				*peak = round(p.hwmMiB, 1)
			}
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, d := range pair {
		wg.Go(func() { errs[i] = d.stop(20 * time.Second) })
	}
	wg.Wait()
	for i, d := range pair {
		if d == nil || d.Daemon == nil {
			continue
		}
		w.running = slices.DeleteFunc(w.running, func(x *daemon) bool { return x == d })
		if errs[i] != nil {
			w.failed = true
			w.logf("N=%d: %v", w.n, errs[i])
		}
		figures := ""
		if s := stats[i]; s != nil {
			figures = fmt.Sprintf("peak RSS %.1f MiB, RSS %.1f MiB, CPU %.2fs; ", s.hwmMiB, s.rssMiB, s.cpuS)
		}
		if sum, err := summarizeLog(d.LogPath); err == nil {
			w.logf("N=%d: %s %s stopped: %slog %s", w.n, d.phase, d.role, figures, sum)
		}
	}
	return stats[0], stats[1]
}

// close stops whatever still runs and the environment; it must work on
// every path, with the root context possibly cancelled.
func (w *workload) close() {
	for _, d := range slices.Clone(w.running) {
		if err := d.stop(20 * time.Second); err != nil {
			w.failed = true
			w.logf("N=%d: %v", w.n, err)
		}
	}
	w.running = nil
	if w.stopWatch != nil {
		w.stopWatch()
	}
	for _, p := range w.proxies {
		_ = p.Close()
	}
	if w.db != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = w.db.Close(ctx)
		cancel()
	}
	if w.env != nil {
		w.env.Stop()
		w.logf("N=%d: stopped PostgreSQL and both clusters, removed their files", w.n)
	}
}

// initialSync starts the daemons with the binary's defaults and times them
// until every copy in cluster-b equals its source. It returns the running
// daemons, which later phases measure further.
func (w *workload) initialSync(ctx context.Context) (leader, follower *daemon, err error) {
	all := w.tr.expectAll(w.sources)
	before429, err := w.count429s(ctx)
	if err != nil {
		return nil, nil, err
	}
	w.logf("N=%d: initial sync: starting leader and follower (binary defaults)", w.n)
	requestsBefore := w.requestCounts(ctx)
	cpuBefore := takeCPUSnapshot()
	start := time.Now()
	var profiled sync.WaitGroup
	defer profiled.Wait()
	if leader, follower, err = w.startPair("main", w.profileVars()); err != nil {
		return leader, follower, err
	}
	if w.opts.profile > 0 {
		for _, d := range []*daemon{leader, follower} {
			profiled.Go(func() {
				w.saveProfile(ctx, d, "cpu", fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(w.opts.profile.Seconds())))
			})
		}
	}
	deadline := time.After(w.opts.syncTimeout)
	halfway := false // heap profiles taken halfway (--profile)
	early := false   // and after the first 10 s
	peakProfiled := map[*daemon]float64{}
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	alive := time.NewTicker(200 * time.Millisecond)
	defer alive.Stop()
	for done := false; !done; {
		select {
		case <-all:
			done = true
		case <-ctx.Done():
			return leader, follower, ctx.Err()
		case <-deadline:
			m, n, present := w.tr.progress()
			return leader, follower, fmt.Errorf("%w: %d of %d copies equal (%d present) after %s", errTimeout, m, n, present, w.opts.syncTimeout)
		case <-progress.C:
			m, n, _ := w.tr.progress()
			// The resident sets as the sync goes, to tell when a peak comes.
			var rss []string
			for _, d := range []*daemon{leader, follower} {
				if p, err := readProc(d.Pid()); err == nil {
					rss = append(rss, fmt.Sprintf("%s RSS %.0f MiB (peak %.0f; file pages %.0f%s)", d.role, p.rssMiB, p.hwmMiB, p.fileMiB, heapOf(ctx, d)))
				}
			}
			w.logf("N=%d: initial sync: %d/%d copies equal after %s; %s", w.n, m, n, secs(time.Since(start)), strings.Join(rss, ", "))
			// The leader's resident set peaks early, while its cache fills
			// and its first transactions are written: a heap profile then.
			if w.opts.profile > 0 && !early {
				early = true
				for _, d := range []*daemon{leader, follower} {
					w.saveProfile(ctx, d, "early.heap", "/debug/pprof/heap")
				}
			}
			if w.opts.profile > 0 && !halfway && 2*m >= n {
				halfway = true
				for _, d := range []*daemon{leader, follower} {
					w.saveProfile(ctx, d, "halfway.heap", "/debug/pprof/heap")
				}
			}
		case <-alive.C:
			for _, d := range []*daemon{leader, follower} {
				if err := d.Exited(); err != nil {
					return leader, follower, err
				}
				// A heap profile each time the peak rises by 8 MiB or
				// more: the last one is the nearest to the peak.
				if p, err := readProc(d.Pid()); err == nil && w.opts.profile > 0 && p.hwmMiB >= peakProfiled[d]+8 {
					peakProfiled[d] = p.hwmMiB
					w.saveProfile(ctx, d, "peak.heap", "/debug/pprof/heap")
				}
			}
		}
	}
	took := time.Since(start)
	w.logf("N=%d: initial sync: CPU by process, %s", w.n, formatCPUUse(cpuSince(cpuBefore, takeCPUSnapshot(), w.cpuNames(leader, follower))))
	w.logRequestsSince(ctx, "initial sync", requestsBefore)
	w.res.InitialSyncS = round(took.Seconds(), 2)
	if after, err := w.count429s(ctx); err == nil {
		w.res.InitialSync429s = ptr(int64(after - before429))
	} else {
		w.logf("N=%d: initial sync: 429s not counted: %v", w.n, err)
	}
	var errorLines int64
	for _, d := range []*daemon{leader, follower} {
		if s, err := summarizeLog(d.logPath); err == nil {
			errorLines += int64(s.levels["error"] + s.levels["fatal"] + s.levels["panic"])
		}
	}
	w.res.InitialSyncErrors = ptr(errorLines)
	w.logf("N=%d: initial sync: all %d copies equal after %s (%.0f Secrets/s)", w.n, w.n, secs(took), float64(w.n)/took.Seconds())
	if err := w.verifyCopies(ctx, "initial sync"); err != nil {
		return leader, follower, err
	}
	if w.opts.profile > 0 {
		for _, d := range []*daemon{leader, follower} {
			w.saveProfile(ctx, d, "heap", "/debug/pprof/heap")
		}
	}
	for i, d := range []*daemon{leader, follower} {
		if p, err := readProc(d.Pid()); err == nil {
			if i == 0 {
				w.res.LeaderCPUSyncS = round(p.cpuS, 2)
			} else {
				w.res.FollowerCPUSyncS = round(p.cpuS, 2)
			}
			w.logf("N=%d: initial sync: %s peak RSS %.1f MiB, CPU %.2fs", w.n, d.role, p.hwmMiB, p.cpuS)
		}
	}
	// Not checked earlier, so as not to slow the start; a daemon that
	// lost its metrics address still syncs, but its counters are not its
	// own.
	for _, d := range []*daemon{leader, follower} {
		if err := d.ownsMetricsAddr(); err != nil {
			w.res.Errors = append(w.res.Errors, fmt.Sprintf("initial sync: %v: its counters are not available", err))
			w.logf("N=%d: %v", w.n, err)
			d.metrics = ""
		}
	}
	w.logDaemonCounters(ctx, leader, follower)
	return leader, follower, nil
}

// logDaemonCounters prints the daemons' own counts of work done.
func (w *workload) logDaemonCounters(ctx context.Context, ds ...*daemon) {
	for _, d := range ds {
		ss, err := d.samples(ctx)
		if err != nil {
			w.logf("N=%d: %s /metrics: %v", w.n, d.role, err)
			continue
		}
		var parts []string
		for _, s := range ss {
			switch s.name {
			case "kube_secret_sync_rows_written_total", "kube_secret_sync_rows_applied_total",
				"kube_secret_sync_row_errors_total", "kube_secret_sync_reconciles_total", "kube_secret_sync_unmanaged_conflicts_total":
				if s.value == 0 {
					continue
				}
				l := ""
				for _, k := range slices.Sorted(maps.Keys(s.labels)) {
					l += k + "=" + s.labels[k] + ","
				}
				if l != "" {
					l = "{" + l[:len(l)-1] + "}"
				}
				parts = append(parts, fmt.Sprintf("%s%s %g", s.name[len("kube_secret_sync_"):], l, s.value))
			}
		}
		w.logf("N=%d: %s %s counters: %v", w.n, d.phase, d.role, parts)
	}
}

// fullPasses is the daemon's count of full reconcile passes, and whether
// it reports one.
func fullPasses(ctx context.Context, d *daemon) (int64, bool) {
	ss, err := d.samples(ctx)
	if err != nil {
		return 0, false
	}
	found := false
	n := sumSamples(ss, "kube_secret_sync_reconciles_total", func(l map[string]string) bool {
		found = found || l["kind"] == "full"
		return l["kind"] == "full"
	})
	return int64(n), found
}

// latencyPhase times single updates in cluster-a until a watch on
// cluster-b sees them.
func (w *workload) latencyPhase(ctx context.Context, label string, leader, follower *daemon, p50, p99, pmax **float64) error {
	updates := w.opts.latencyUpdates
	order := mrand.Perm(w.n)
	var lat []time.Duration
	timeouts := 0
	start := time.Now()
	w.logf("N=%d: latency (%s): %d updates, one at a time", w.n, label, updates)
	passesBefore := map[*daemon]passTimes{leader: passTimesOf(ctx, leader), follower: passTimesOf(ctx, follower)}
	for i := range updates {
		for _, d := range []*daemon{leader, follower} {
			if err := d.Exited(); err != nil {
				return err
			}
		}
		s := w.sources[order[i%len(order)]]
		crt, err := renewedCert(s.Namespace, s.Data)
		if err != nil {
			return err
		}
		renewed := s.DeepCopy()
		renewed.Data[corev1.TLSCertKey] = crt
		digestAnnotated(renewed)
		seen := w.tr.expect(key{s.Namespace, s.Name}, digestOf(renewed.Type, renewed.Data))
		patch, err := json.Marshal(map[string]any{
			"metadata": map[string]any{"annotations": map[string]string{digestAnnotation: renewed.Annotations[digestAnnotation]}},
			"data":     map[string][]byte{corev1.TLSCertKey: crt},
		})
		if err != nil {
			return err
		}
		t0 := time.Now()
		if _, err := w.fastA.CoreV1().Secrets(s.Namespace).Patch(ctx, s.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("update %s/%s: %w", s.Namespace, s.Name, err)
		}
		s.Data, s.Annotations = renewed.Data, renewed.Annotations
		select {
		case <-seen:
			lat = append(lat, time.Since(t0))
		case <-time.After(w.opts.updateTimeout):
			timeouts++
			// Counted as the timeout, so that percentiles cannot hide it.
			lat = append(lat, w.opts.updateTimeout)
			w.logf("N=%d: latency (%s): update %d of %s/%s not seen in %s within %s", w.n, label, i+1, s.Namespace, s.Name, testenv.ClusterB, w.opts.updateTimeout)
			if timeouts >= 3 {
				return fmt.Errorf("%w: %d updates not seen within %s each", errTimeout, timeouts, w.opts.updateTimeout)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		if (i+1)%50 == 0 {
			w.logf("N=%d: latency (%s): %d/%d, last %s", w.n, label, i+1, updates, lat[len(lat)-1].Round(time.Millisecond))
		}
		// A random pause spreads the updates uniformly over the
		// follower's poll cycle: updates sent right after the previous
		// one landed would always arrive just after a poll.
		if err := sleep(ctx, time.Duration(mrand.Float64()*w.poll*float64(time.Second))); err != nil {
			return err
		}
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	*p50, *p99, *pmax = round(ms(percentile(lat, 50)), 1), round(ms(percentile(lat, 99)), 1), round(ms(lat[len(lat)-1]), 1)
	w.res.LatencyUpdates = ptr(len(lat))
	w.logf("N=%d: latency (%s): p50 %.1f ms, p99 %.1f ms, max %.1f ms, min %.1f ms over %d updates (%s)",
		w.n, label, **p50, **p99, **pmax, ms(lat[0]), len(lat), secs(time.Since(start)))
	// What the loops spent meanwhile: an update that arrives during a
	// pass waits for it, which is where a tail comes from.
	for _, d := range []*daemon{leader, follower} {
		w.logf("N=%d: latency (%s): %s passes meanwhile: %s", w.n, label, d.role, passTimesOf(ctx, d).since(passesBefore[d]))
	}
	if timeouts > 0 {
		return fmt.Errorf("%d updates not seen within %s (counted as %s)", timeouts, w.opts.updateTimeout, w.opts.updateTimeout)
	}
	return w.verifyCopies(ctx, "latency ("+label+")")
}

// verifyCopies checks, after a timed phase, that every copy's data is what
// the tracker saw announced by its digest annotation.
func (w *workload) verifyCopies(ctx context.Context, phase string) error {
	bad, some, err := w.tr.verifyCopies(ctx, w.b.Clientset)
	if err != nil {
		return err
	}
	if bad > 0 {
		return fmt.Errorf("%s: %d copies in %s do not hold their source's data: %s", phase, bad, testenv.ClusterB, strings.Join(some, ", "))
	}
	w.logf("N=%d: %s: every copy's data checked against its source", w.n, phase)
	return nil
}

// passTimes are a daemon's reconcile passes so far, by kind: how many, and
// their total duration in seconds (reconcile_duration_seconds).
type passTimes map[string][2]float64

// passTimesOf scrapes d's passes; nil if it cannot.
func passTimesOf(ctx context.Context, d *daemon) passTimes {
	ss, err := d.samples(ctx)
	if err != nil {
		return nil
	}
	out := passTimes{}
	field := map[string]int{"kube_secret_sync_reconcile_duration_seconds_count": 0, "kube_secret_sync_reconcile_duration_seconds_sum": 1}
	for _, s := range ss {
		if n, ok := field[s.name]; ok {
			v := out[s.labels["kind"]]
			v[n] += s.value
			out[s.labels["kind"]] = v
		}
	}
	return out
}

// since describes the passes after before: count and mean duration by kind.
func (p passTimes) since(before passTimes) string {
	if p == nil || before == nil {
		return "not scraped"
	}
	var parts []string
	for _, kind := range slices.Sorted(maps.Keys(p)) {
		n, sum := p[kind][0]-before[kind][0], p[kind][1]-before[kind][1]
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f, mean %.1f ms", kind, n, sum/n*1000))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "; ")
}

// memoryCheck shows what unlabelled Secrets cost the running leader, next
// to what the labelled ones cost.
func (w *workload) memoryCheck(ctx context.Context, leader *daemon) error {
	// A leader that selects nothing, in the same cluster, with its own
	// database and no Lease: the baseline.
	dsn, err := w.env.Postgres.CreateDatabase(ctx, "kss_bench_probe")
	if err != nil {
		return err
	}
	probe := &daemon{role: "leader", phase: "probe", n: w.n, podName: "leader-probe"}
	if probe.metrics, err = w.freeAddr(); err != nil {
		return err
	}
	vars := w.daemonVars(probe, map[string]string{"DSN": dsn, "LABEL_SELECTOR": benchLabel + "=none", "LEADER_ELECTION": "false"})
	if err := probe.start(w.binary, w.logDir, vars); err != nil {
		return err
	}
	w.running = append(w.running, probe)
	err = poll(ctx, 60*time.Second, 200*time.Millisecond, []*daemon{probe}, func(ctx context.Context) error {
		if err := probe.ownsMetricsAddr(); err != nil {
			return err
		}
		if n, ok := fullPasses(ctx, probe); !ok || n < 1 {
			return fmt.Errorf("no full pass yet")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("leader selecting nothing: %w", err)
	}
	if err := sleep(ctx, 2*time.Second, probe); err != nil {
		return err
	}
	none, err := readProc(probe.Pid())
	if err != nil {
		return err
	}
	w.stopPair(probe, nil)

	before, err := readProc(leader.Pid())
	if err != nil {
		return err
	}
	namespaces := namespaceNames(w.prefix+"-unlabelled", w.opts.namespaces)
	unlabelled, err := newSecrets(w.opts.unlabelled, namespaces, map[string]string{benchLabel: "unlabelled"})
	if err != nil {
		return err
	}
	start := time.Now()
	if err := createAll(ctx, w.fastA, w.opts.createWorkers, namespaces, unlabelled, nil); err != nil {
		return err
	}
	w.logf("N=%d: memory: %d unlabelled Secrets created in %s in %s; waiting for the leader's next full pass", w.n, len(unlabelled), testenv.ClusterA, secs(time.Since(start)))
	// Wait for the leader's next full pass, which lists its whole cache,
	passes, ok := fullPasses(ctx, leader)
	if !ok {
		return fmt.Errorf("the leader reports no full passes (kube_secret_sync_reconciles_total{kind=\"full\"})")
	}
	err = poll(ctx, time.Duration(2*w.tick+30)*time.Second, 500*time.Millisecond, []*daemon{leader}, func(ctx context.Context) error {
		if n, _ := fullPasses(ctx, leader); n <= passes {
			return fmt.Errorf("no full pass yet")
		}
		return nil
	})
	if err != nil {
		return err
	}
	// and give a watch that did receive them a moment more.
	if err := sleep(ctx, 2*time.Second, leader); err != nil {
		return err
	}
	after, err := readProc(leader.Pid())
	if err != nil {
		return err
	}
	w.res.UnlabelledSecrets = ptr(len(unlabelled))
	w.res.LeaderRSSNoneMiB = round(none.rssMiB, 1)
	w.res.LeaderRSSLabelled = round(before.rssMiB-none.rssMiB, 1)
	w.res.LeaderRSSUnlabelled = round(after.rssMiB-before.rssMiB, 1)
	w.logf("N=%d: memory: leader VmRSS %.1f MiB selecting nothing, %.1f MiB with %d labelled, %.1f MiB after %d unlabelled were added (%+.1f MiB)",
		w.n, none.rssMiB, before.rssMiB, w.n, after.rssMiB, len(unlabelled), after.rssMiB-before.rssMiB)
	return nil
}

// idlePhase restarts the daemons with a short tick and counts the writes
// of full passes over unchanged Secrets.
func (w *workload) idlePhase(ctx context.Context) error {
	tick := w.opts.idleTick
	extra := map[string]string{"TICK_SECONDS": strconv.Itoa(tick)}
	if w.poll > float64(tick) {
		extra["POLL_SECONDS"] = strconv.Itoa(tick) // it may not exceed TICK_SECONDS
	}
	w.logf("N=%d: idle: restarting the daemons with %v", w.n, extra)
	leader, follower, err := w.startReadyPair(ctx, "idle", extra)
	defer w.stopPair(leader, follower)
	if err != nil {
		return err
	}
	pair := []*daemon{leader, follower}
	// Let both finish two full passes first: a restart may legitimately
	// write (the follower's first pass, a cursor).
	for _, d := range pair {
		err := poll(ctx, time.Duration(4*tick+60)*time.Second, 200*time.Millisecond, pair, func(ctx context.Context) error {
			if n, ok := fullPasses(ctx, d); !ok || n < 2 {
				return fmt.Errorf("%s: %d full passes (kube_secret_sync_reconciles_total{kind=\"full\"})", d.role, n)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	// A leader opens every row it answers for once after a start, a slice
	// per pass (verify.go); the idle figures are those of the steady state
	// after that, whose time is reported.
	warm := time.Now()
	err = poll(ctx, time.Duration(4*tick+60)*time.Second+time.Duration(w.n/1000)*time.Duration(tick)*time.Second, 200*time.Millisecond, pair, func(ctx context.Context) error {
		ss, err := leader.samples(ctx)
		if err != nil {
			return err
		}
		if n := sumSamples(ss, "kube_secret_sync_rows_unverified", nil); n != 0 {
			return fmt.Errorf("leader: %v rows not verified yet (kube_secret_sync_rows_unverified)", n)
		}
		return nil
	})
	if err != nil {
		return err
	}
	passes, _ := fullPasses(ctx, leader)
	w.res.IdleVerifiedAfterPasses = ptr(passes)
	w.logf("N=%d: idle: the leader had verified every row after %d full passes (%s after both had made 2)", w.n, passes, secs(time.Since(warm)))
	if err := sleep(ctx, 2*time.Second, pair...); err != nil {
		return err
	}
	var read [2]int64 // bytes from the database, by daemon, at the last snap
	snap := func() (dbSnapshot, apiWrites, apiWrites, [2]int64, error) {
		var passes [2]int64
		db, err := takeDBSnapshot(ctx, w.db)
		if err != nil {
			return db, nil, nil, passes, err
		}
		a, err := scrapeAPIWrites(ctx, w.a.Clientset)
		if err != nil {
			return db, nil, nil, passes, err
		}
		b, err := scrapeAPIWrites(ctx, w.b.Clientset)
		if err != nil {
			return db, nil, nil, passes, err
		}
		for i, d := range pair {
			passes[i], _ = fullPasses(ctx, d)
			read[i] = w.proxies[d.role].BytesFromServer()
		}
		return db, a, b, passes, nil
	}
	db0, a0, b0, p0, err := snap()
	if err != nil {
		return err
	}
	read0 := read
	t0 := time.Now()
	w.logf("N=%d: idle: watching %d ticks of %ds", w.n, w.opts.idleTicks, tick)
	if err := sleep(ctx, time.Duration(w.opts.idleTicks*tick)*time.Second+2*time.Second, pair...); err != nil {
		return err
	}
	db1, a1, b1, p1, err := snap()
	if err != nil {
		return err
	}
	window := time.Since(t0)
	dbc := db1.diff(db0)
	da, dbw := a1.diff(a0), b1.diff(b0)
	w.res.IdleTickS = ptr(tick)
	w.res.IdleWindowS = round(window.Seconds(), 1)
	w.res.IdleDBRowWrites = ptr(dbc.writes())
	w.res.IdleClaimRenewals = ptr(dbc.claimWrites)
	w.res.IdleDBRowsChanged = ptr(int64(dbc.rowsChanged))
	w.res.IdleAPIWrites = ptr(int64(da.sync() + dbw.sync()))
	w.res.IdleFullPassesLeader = ptr(p1[0] - p0[0])
	w.res.IdleFullPassesFollow = ptr(p1[1] - p0[1])
	if p1[0] > p0[0] && p1[1] > p0[1] {
		w.res.IdleDBBytesPerPassLeader = ptr((read[0] - read0[0]) / (p1[0] - p0[0]))
		w.res.IdleDBBytesPerPassFollow = ptr((read[1] - read0[1]) / (p1[1] - p0[1]))
		w.logf("N=%d: idle: bytes read from the database per full pass (with the polls between): leader %d, follower %d", w.n, *w.res.IdleDBBytesPerPassLeader, *w.res.IdleDBBytesPerPassFollow)
	}
	w.logf("N=%d: idle: %s window, full passes: leader %d, follower %d", w.n, secs(window), p1[0]-p0[0], p1[1]-p0[1])
	w.logf("N=%d: idle: database: %s", w.n, dbc)
	w.logf("N=%d: idle: %s writes (all resources): %s", w.n, testenv.ClusterA, da)
	w.logf("N=%d: idle: %s writes (all resources): %s", w.n, testenv.ClusterB, dbw)
	if p1[0]-p0[0] < int64(w.opts.idleTicks)-1 || p1[1]-p0[1] < int64(w.opts.idleTicks)-1 {
		return fmt.Errorf("fewer full passes than ticks in the window (leader %d, follower %d, ticks %d): the idle figures cover less than intended", p1[0]-p0[0], p1[1]-p0[1], w.opts.idleTicks)
	}
	return nil
}

// noHintPhase restarts the daemons with PG_NOTIFY=0 and times updates.
func (w *workload) noHintPhase(ctx context.Context) error {
	w.logf("N=%d: latency without the hint: restarting the daemons with PG_NOTIFY=0", w.n)
	leader, follower, err := w.startReadyPair(ctx, "nohint", map[string]string{"PG_NOTIFY": "0"})
	defer w.stopPair(leader, follower)
	if err != nil {
		return err
	}
	// Each daemon's first full pass after a start reads every row's header
	// and compares every Secret (seconds at N = 100,000), and a change
	// waits for it: the latency is that of a running pair, so it starts
	// once both made one, and that wait is reported.
	started := time.Now()
	pair := []*daemon{leader, follower}
	for _, d := range pair {
		err := poll(ctx, w.opts.syncTimeout, 200*time.Millisecond, pair, func(ctx context.Context) error {
			if n, ok := fullPasses(ctx, d); !ok || n < 1 {
				return fmt.Errorf("%s: no full pass yet (kube_secret_sync_reconciles_total{kind=\"full\"})", d.role)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	w.logf("N=%d: latency without the hint: both daemons made their first full pass %s after they were ready", w.n, secs(time.Since(started)))
	// The follower resumes from its cursor; one poll later it is current.
	if err := sleep(ctx, time.Duration((w.poll+1)*float64(time.Second)), leader, follower); err != nil {
		return err
	}
	return w.latencyPhase(ctx, "PG_NOTIFY=0", leader, follower, &w.res.LatencyNohintP50, &w.res.LatencyNohintP99, &w.res.LatencyNohintMaxMs)
}

// count429s sums the requests that both API servers answered with 429 Too
// Many Requests (API Priority and Fairness).
func (w *workload) count429s(ctx context.Context) (float64, error) {
	var n float64
	for _, c := range []*testenv.Cluster{w.a, w.b} {
		b, err := c.Clientset.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
		if err != nil {
			return 0, fmt.Errorf("%s /metrics: %w", c.Name, err)
		}
		n += sumSamples(parseSamples(string(b)), "apiserver_request_total", func(l map[string]string) bool { return l["code"] == "429" })
	}
	return n, nil
}

// daemonDSN is the bench database's DSN through the proxy of role.
func (w *workload) daemonDSN(role string) string {
	u, err := url.Parse(w.dsn)
	if err != nil || u.Host == "" {
		return w.dsn
	}
	u.Host = w.proxies[role].Addr
	return u.String()
}

// heapOf describes d's Go heap (go_memstats): in use, and the size at
// which the next collection starts; "" if it cannot be scraped.
func heapOf(ctx context.Context, d *daemon) string {
	ss, err := d.samples(ctx)
	if err != nil {
		return ""
	}
	mib := func(name string) float64 { return sumSamples(ss, name, nil) / (1 << 20) }
	return fmt.Sprintf("; heap in use %.0f, next GC at %.0f", mib("go_memstats_heap_inuse_bytes"), mib("go_memstats_next_gc_bytes"))
}

// profileVars gives each daemon of the next pair a PPROF_ADDR, when the
// bench profiles (--profile).
func (w *workload) profileVars() map[string]string {
	if w.opts.profile <= 0 {
		return nil
	}
	return map[string]string{"PPROF_ADDR": "auto"}
}

// saveProfile fetches the profile at path from d's PPROF_ADDR into the log
// directory; a failure is only logged.
func (w *workload) saveProfile(ctx context.Context, d *daemon, kind, path string) {
	file := filepath.Join(w.logDir, fmt.Sprintf("n%d-%s-%s.%s.pprof", d.n, d.phase, d.role, kind))
	err := func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.pprof+path, nil)
		if err != nil {
			return err
		}
		// The daemon may not listen yet.
		var resp *http.Response
		for try := 0; ; try++ {
			if resp, err = http.DefaultClient.Do(req); err == nil || try == 50 || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		f, err := os.Create(file)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(f, resp.Body)
		return err
	}()
	if err != nil {
		w.logf("N=%d: %s %s profile not saved: %v", w.n, d.role, kind, err)
		return
	}
	w.logf("N=%d: %s %s profile: %s", w.n, d.role, kind, file)
}
