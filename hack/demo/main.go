// Command demo shows kube-secret-sync's main job on one machine, step by
// step, for a person watching a terminal. It starts PostgreSQL and two
// Kubernetes API servers (cluster-a and cluster-b), runs the real binary as
// leader against cluster-a and as follower against cluster-b, and then
// creates, renews and unlabels a TLS Secret in cluster-a and watches what
// happens in cluster-b and in the database. Every step waits for its
// outcome with a bounded poll and says what it checked and how long it
// took. Run it with `make demo`; it exits 0 only if every check passed,
// and leaves no process or file behind either way (on failure it keeps the
// daemons' logs and says where).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// demoNS exists in cluster-a only: the follower must create it.
const demoNS = "web"

func main() {
	binary := flag.String("binary", "bin/kube-secret-sync", "the kube-secret-sync binary to run as leader and follower")
	timeout := flag.Duration("timeout", 30*time.Second, "how long each step waits for its outcome")
	keepLogs := flag.Bool("keep-logs", false, "keep the daemons' logs after a successful run too")
	flag.Parse()
	os.Exit(run(*binary, *timeout, *keepLogs))
}

// run is the whole demo; it returns the exit code.
func run(binary string, timeout time.Duration, keepLogs bool) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first Ctrl-C the demo cleans up; a second one kills it
		// at once (its children still die with it, by Pdeathsig).
		<-ctx.Done()
		stop()
	}()
	d := &demo{out: newPrinter(os.Stdout), binary: binary, timeout: timeout}
	start := time.Now()
	err := d.run(ctx)
	switch {
	case err == nil:
		d.close(keepLogs)
		if keepLogs {
			d.out.info("daemon logs kept in %s", d.logDir)
		}
		fmt.Fprintf(d.out.w, "\n%s in %s: nothing left running.\n", d.out.paint(sgrGreen+";"+sgrBold, "Demo passed"), secs(time.Since(start)))
		return 0
	case ctx.Err() != nil:
		fmt.Fprintln(d.out.w)
		d.out.warn("interrupted: cleaning up")
		d.close(false)
		return 130
	default:
		d.out.fail("%v", err)
		d.showLogs()
		d.close(true)
		if d.logDir != "" {
			d.out.warn("daemon logs kept in %s", d.logDir)
		}
		fmt.Fprintf(d.out.w, "\n%s\n", d.out.paint(sgrRed+";"+sgrBold, "Demo FAILED"))
		return 1
	}
}

// demo holds what the steps share.
type demo struct {
	out     *printer
	binary  string
	timeout time.Duration

	env    *testenv.Env
	a, b   kubernetes.Interface
	dsn    string
	db     *pgx.Conn
	logDir string

	leader, follower *daemon
	results          []result
}

// result is one line of the summary.
type result struct{ what, outcome string }

func (d *demo) record(what, outcome string) { d.results = append(d.results, result{what, outcome}) }

func (d *demo) run(ctx context.Context) error {
	steps := []struct {
		title string
		fn    func(context.Context) error
	}{
		{"Start PostgreSQL and two Kubernetes clusters", d.startEnvironment},
		{"Start kube-secret-sync: leader in cluster-a, follower in cluster-b", d.startDaemons},
		{"A labelled TLS Secret in cluster-a is copied to cluster-b", d.stepCreate},
		{"What the database holds", d.stepDatabase},
		{"A renewed certificate reaches cluster-b", d.stepRenew},
		{"An unmanaged Secret in cluster-b is never overwritten", d.stepUnmanaged},
		{"Unlabelling in cluster-a removes the copy from cluster-b", d.stepUnlabel},
	}
	total := len(steps) + 1
	d.out.title("kube-secret-sync demo: one leader cluster, one follower cluster, one database between them")
	for i, s := range steps {
		d.out.headline(i+1, total, s.title)
		if err := s.fn(ctx); err != nil {
			return err
		}
	}
	d.summary()
	d.out.headline(total, total, "Shut down")
	return d.shutdown(ctx)
}

func (d *demo) startEnvironment(ctx context.Context) error {
	d.out.info("kube-apiserver and etcd from %s", os.Getenv("KSS_KUBE_ASSETS"))
	start := time.Now()
	env, err := testenv.Start(ctx, testenv.ClusterA, testenv.ClusterB)
	if err != nil {
		return err
	}
	d.env = env
	d.a, d.b = env.Clusters[0].Clientset, env.Clusters[1].Clientset
	if d.dsn, err = env.Postgres.CreateDatabase(ctx, "kss_demo"); err != nil {
		return err
	}
	if d.db, err = pgx.Connect(ctx, d.dsn); err != nil {
		return fmt.Errorf("connect to the demo database: %w", err)
	}
	d.out.ok("ready after %s", secs(time.Since(start)))
	d.out.block(fmt.Sprintf("PostgreSQL  %s\n%s   %s\n%s   %s",
		strings.TrimPrefix(d.dsn, "postgres://postgres@"),
		testenv.ClusterA, env.Clusters[0].Config.Host, testenv.ClusterB, env.Clusters[1].Config.Host))

	for _, c := range env.Clusters {
		if err := createNamespace(ctx, c.Clientset, testenv.SystemNamespace); err != nil {
			return fmt.Errorf("%s: %w", c.Name, err)
		}
	}
	if err := createNamespace(ctx, d.a, demoNS); err != nil {
		return fmt.Errorf("%s: %w", testenv.ClusterA, err)
	}
	d.out.ok("namespace %s in both clusters (Lease, cursor); namespace %s in %s only", testenv.SystemNamespace, demoNS, testenv.ClusterA)
	return nil
}

func createNamespace(ctx context.Context, c kubernetes.Interface, name string) error {
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

func (d *demo) startDaemons(ctx context.Context) error {
	binary, err := filepath.Abs(d.binary)
	if err != nil {
		return err
	}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	version, err := exec.CommandContext(vctx, binary, "--version").Output()
	if err != nil {
		return fmt.Errorf("%s --version: %w (build it with make build)", d.binary, err)
	}
	d.out.info("binary %s, version %s", d.binary, strings.TrimSpace(string(version)))

	key, err := testenv.EncryptionKey()
	if err != nil {
		return err
	}
	d.out.info("ENCRYPTION_KEY: 32 random characters, the same for both (not shown)")
	if d.logDir, err = os.MkdirTemp("", "kss-demo-"); err != nil {
		return err
	}
	d.leader = &daemon{role: "leader", cluster: testenv.ClusterA, podName: "leader-0"}
	d.follower = &daemon{role: "follower", cluster: testenv.ClusterB, podName: "follower-0"}
	kubeconfigs := map[string]string{testenv.ClusterA: d.env.Clusters[0].Kubeconfig, testenv.ClusterB: d.env.Clusters[1].Kubeconfig}
	for _, dm := range []*daemon{d.leader, d.follower} {
		if dm.metrics, err = testenv.FreeAddr(); err != nil {
			return err
		}
		vars := map[string]string{
			"DSN":            d.dsn,
			"ENCRYPTION_KEY": key,
			"KUBECONFIG":     kubeconfigs[dm.cluster],
			"CLUSTER_NAME":   dm.cluster,
			"POD_NAMESPACE":  testenv.SystemNamespace,
			"POD_NAME":       dm.podName,
			"TICK_SECONDS":   "5",
			"PRETTY":         "1",
			"METRICS_ADDR":   dm.metrics,
		}
		if dm == d.leader {
			vars["LEADER"] = "1"
		} else {
			vars["POLL_SECONDS"] = "0.5"
		}
		if err := dm.start(binary, d.logDir, vars); err != nil {
			return err
		}
	}
	d.out.info("their logs (tail -f to follow):")
	d.out.block(d.leader.LogPath + "\n" + d.follower.LogPath)

	start := time.Now()
	clients := map[string]kubernetes.Interface{testenv.ClusterA: d.a, testenv.ClusterB: d.b}
	for _, dm := range d.daemons() {
		took, err := d.waitFor(ctx, start, func(ctx context.Context) error {
			if code, _, err := dm.get(ctx, "/readyz"); err != nil || code != 200 {
				return fmt.Errorf("/readyz: %d %v", code, err)
			}
			lease, err := clients[dm.cluster].CoordinationV1().Leases(testenv.SystemNamespace).Get(ctx, testenv.LeaseName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if h := lease.Spec.HolderIdentity; h == nil || *h != dm.podName {
				return fmt.Errorf("lease %s/%s not held by %s", testenv.SystemNamespace, testenv.LeaseName, dm.podName)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s not ready: %w", dm.role, err)
		}
		d.out.ok("%-8s pid %d on %s: /readyz 200 and holds the Lease in %s after %s",
			dm.role, dm.Pid(), dm.metrics, dm.cluster, secs(took))
	}
	return nil
}

// daemons are the daemons started so far.
func (d *demo) daemons() []*daemon {
	var out []*daemon
	for _, dm := range []*daemon{d.leader, d.follower} {
		if dm != nil && dm.Daemon != nil {
			out = append(out, dm)
		}
	}
	return out
}

// waitFor polls cond every 50ms until it returns nil, the step's time is
// up, ctx ends or a daemon dies. cond's error says why it is not there
// yet; the last one is reported on timeout. The duration is measured from
// since, the moment the awaited change was caused.
func (d *demo) waitFor(ctx context.Context, since time.Time, cond func(context.Context) error) (time.Duration, error) {
	wctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	var last error
	for {
		for _, dm := range d.daemons() {
			if err := dm.Exited(); err != nil {
				return 0, err
			}
		}
		err := cond(wctx)
		if err == nil {
			return time.Since(since), nil
		}
		if wctx.Err() == nil || last == nil {
			// Not the error of a call cut short by the deadline.
			last = err
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			return 0, fmt.Errorf("not within %s: %w", d.timeout, last)
		case <-t.C:
		}
	}
}

func (d *demo) summary() {
	fmt.Fprintf(d.out.w, "\n%s\n", d.out.paint(sgrBold, "Summary"))
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 4, 3, ' ', 0)
	for _, r := range d.results {
		fmt.Fprintf(tw, "%s\t%s\n", r.what, r.outcome)
	}
	tw.Flush()
	for _, line := range strings.Split(strings.TrimRight(sb.String(), "\n"), "\n") {
		d.out.ok("%s", line)
	}
}

// shutdown stops both daemons the way Kubernetes does (SIGTERM) and checks
// that they exit 0 and release their Leases.
func (d *demo) shutdown(ctx context.Context) error {
	type outcome struct {
		took time.Duration
		err  error
	}
	ds := d.daemons()
	outcomes := make([]outcome, len(ds))
	var wg sync.WaitGroup
	for i, dm := range ds {
		wg.Go(func() {
			outcomes[i].took, outcomes[i].err = dm.Stop(15 * time.Second)
		})
	}
	wg.Wait()
	clients := map[string]kubernetes.Interface{testenv.ClusterA: d.a, testenv.ClusterB: d.b}
	var errs []error
	for i, dm := range ds {
		if err := outcomes[i].err; err != nil {
			errs = append(errs, err)
			continue
		}
		lease, err := clients[dm.cluster].CoordinationV1().Leases(testenv.SystemNamespace).Get(ctx, testenv.LeaseName, metav1.GetOptions{})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: read its Lease: %w", dm.role, err))
			continue
		}
		if h := lease.Spec.HolderIdentity; h != nil && *h != "" {
			errs = append(errs, fmt.Errorf("%s exited 0 but the Lease in %s is still held by %q", dm.role, dm.cluster, *h))
			continue
		}
		d.out.ok("%-8s exited 0 %s after SIGTERM and released its Lease", dm.role, secs(outcomes[i].took))
	}
	return errors.Join(errs...)
}

// showLogs prints the end of each daemon's log, after a failure.
func (d *demo) showLogs() {
	for _, dm := range d.daemons() {
		d.out.info("last lines of the %s's log %s:", dm.role, dm.LogPath)
		d.out.dim("│", dm.tail(20))
	}
}

// close stops everything still running and removes the temporary files;
// it runs on every exit path and must not depend on the (possibly
// cancelled) root context.
func (d *demo) close(keepLogs bool) {
	start := time.Now()
	for _, dm := range d.daemons() {
		_, _ = dm.Stop(10 * time.Second)
	}
	if d.db != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = d.db.Close(ctx)
		cancel()
	}
	if d.env == nil && d.logDir == "" {
		return
	}
	if d.env != nil {
		d.env.Stop()
	}
	if d.logDir != "" && !keepLogs {
		_ = os.RemoveAll(d.logDir)
	}
	d.out.ok("stopped PostgreSQL and both clusters, removed temporary files (%s)", secs(time.Since(start)))
}
