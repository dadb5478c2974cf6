// Command bench measures kube-secret-sync at scale on one machine (issue 5,
// `make bench`). For each workload size N it starts PostgreSQL and two
// Kubernetes API servers (cluster-a, cluster-b), runs the real binary as
// leader against cluster-a and as follower against cluster-b, and measures:
// the initial sync of N labelled Secrets against the API server's own write
// rate (an unthrottled client-go writer), the database and API writes of
// idle full reconciles, the propagation latency of single updates (with
// and without the PostgreSQL wake-up hint), the daemons' peak memory and
// CPU time, and what 10,000 unlabelled Secrets cost the leader's memory.
//
// It prints a markdown table on stdout, progress on stderr, and writes the
// figures as JSON (bench/results.json). It reports targets missed; it does
// not fail on them. Every wait is bounded, and nothing is left running or
// on disk afterwards (unless --keep-logs).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command line.
// deploymentMemoryLimit is the GOMEMLIMIT that the daemon gives itself in
// deploy/base's container: its 256 MiB memory limit less the daemon's
// 64 MiB headroom (memoryLimitRatio), in bytes
// (TestDeploymentMemoryLimit keeps them in step). The daemons here run in
// no cgroup of their own, so the bench sets it.
const deploymentMemoryLimit = "201326592"

type options struct {
	binary         string
	sizes          []int
	namespaces     int
	latencySizes   string // "min", "all" or a list of sizes
	latencyUpdates int
	unlabelled     int
	idleTick       int
	idleTicks      int
	syncTimeout    time.Duration
	updateTimeout  time.Duration
	out            string
	keepLogs       bool
	createWorkers  int
	remoteSizes    []int             // sizes measured again with the database dbRTT away
	dbRTT          time.Duration     // round trip of the delaying proxy
	profile        time.Duration     // CPU profile of the initial sync's start; 0: none
	goMemLimit     string            // GOMEMLIMIT of every daemon, as the Deployment sets it
	env            map[string]string // more environment of every daemon (an experiment's settings)
}

func main() {
	var o options
	sizes := flag.String("sizes", "1000,10000", "comma-separated workload sizes N (Secrets)")
	flag.StringVar(&o.binary, "binary", "bin/kube-secret-sync", "the kube-secret-sync binary to run as leader and follower")
	flag.IntVar(&o.namespaces, "namespaces", 100, "namespaces the Secrets of a workload are spread over")
	flag.StringVar(&o.latencySizes, "latency-sizes", "all", `sizes that get the latency phases: "all", "min" (the smallest of --sizes), "none", or a list`)
	flag.IntVar(&o.latencyUpdates, "latency-updates", 200, "single-Secret updates per latency phase")
	flag.IntVar(&o.unlabelled, "unlabelled", 10000, "unlabelled Secrets created for the leader memory check at the largest size (0: skip)")
	flag.IntVar(&o.idleTick, "idle-tick", 2, "TICK_SECONDS of the daemons in the idle phase")
	flag.IntVar(&o.idleTicks, "idle-ticks", 5, "full reconcile intervals the idle phase watches")
	flag.DurationVar(&o.syncTimeout, "sync-timeout", 15*time.Minute, "longest wait for an initial sync")
	flag.DurationVar(&o.updateTimeout, "update-timeout", 30*time.Second, "longest wait for one update to reach cluster-b")
	flag.StringVar(&o.out, "out", "bench/results.json", `JSON output file ("" for none)`)
	flag.BoolVar(&o.keepLogs, "keep-logs", false, "keep the daemons' logs (always kept after a failure)")
	flag.IntVar(&o.createWorkers, "create-workers", 32, "concurrent creates of the (untimed) set-up in cluster-a and of the unthrottled writer")
	remote := flag.String("remote-db-sizes", "10000", `sizes measured again with a delaying TCP proxy between each daemon and PostgreSQL (--db-rtt), as if the database were in another region ("" for none)`)
	flag.DurationVar(&o.dbRTT, "db-rtt", 100*time.Millisecond, "round trip the proxy adds for --remote-db-sizes")
	flag.StringVar(&o.goMemLimit, "gomemlimit", deploymentMemoryLimit, `GOMEMLIMIT of every daemon: in the Deployment's container the daemon sets its memory limit less 64 MiB ("" for none)`)
	flag.DurationVar(&o.profile, "profile", 0, "profile the daemons of each initial sync (PPROF_ADDR): CPU over its first this long, and the heap after 10 s, halfway and when it completes, into the log directory, which is then kept (0: none)")
	flag.Func("env", "NAME=value added to every daemon's environment, for an experiment (repeat the flag for more); the method notes list them", func(v string) error {
		name, value, ok := strings.Cut(v, "=")
		if !ok || name == "" {
			return fmt.Errorf("want NAME=value, got %q", v)
		}
		if o.env == nil {
			o.env = map[string]string{}
		}
		o.env[name] = value
		return nil
	})
	smoke := flag.Bool("smoke", false, "a quick check that everything works: N = 200, 20 updates, 500 unlabelled, 2 idle ticks; writes no JSON unless --out is given")
	flag.Parse()
	if *smoke {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		defaults := map[string]func(){
			"sizes":           func() { *sizes = "200" },
			"remote-db-sizes": func() { *remote = "" },
			"latency-updates": func() { o.latencyUpdates = 20 },
			"unlabelled":      func() { o.unlabelled = 500 },
			"idle-ticks":      func() { o.idleTicks = 2 },
			"out":             func() { o.out = "" },
			"sync-timeout":    func() { o.syncTimeout = 3 * time.Minute },
		}
		for name, apply := range defaults {
			if !set[name] {
				apply()
			}
		}
	}
	o.sizes = parseSizes("sizes", *sizes, false)
	o.remoteSizes = parseSizes("remote-db-sizes", *remote, true)
	if o.dbRTT <= 0 && len(o.remoteSizes) > 0 {
		fmt.Fprintln(os.Stderr, "bench: --db-rtt must be positive")
		os.Exit(2)
	}
	if o.namespaces < 1 || o.latencyUpdates < 1 || o.idleTick < 1 || o.idleTicks < 1 || o.createWorkers < 1 {
		fmt.Fprintln(os.Stderr, "bench: --namespaces, --latency-updates, --idle-tick, --idle-ticks and --create-workers must be at least 1")
		os.Exit(2)
	}
	os.Exit(run(o))
}

// parseSizes reads the comma-separated sizes of flag name, exiting with 2
// on anything but positive integers; emptyOK allows "" (none) and empty
// entries.
func parseSizes(name, v string, emptyOK bool) []int {
	var out []int
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s == "" && emptyOK {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "bench: invalid --%s %q\n", name, v)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}

// bench holds what every workload shares.
type bench struct {
	opts     options
	binary   string // absolute path
	settings settings
	hint     bool    // the binary has PG_NOTIFY
	poll     float64 // POLL_SECONDS default
	tick     int     // TICK_SECONDS default
	logDir   string
	start    time.Time
	failed   bool            // a daemon misbehaved: keep the logs
	ports    map[string]bool // metrics addresses handed out
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

func run(o options) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first Ctrl-C the bench cleans up; a second one kills
		// it at once (its children still die with it, by Pdeathsig).
		<-ctx.Done()
		stop()
	}()
	// The profiles are written into the log directory, which is then kept.
	o.keepLogs = o.keepLogs || o.profile > 0
	b := &bench{opts: o, start: time.Now(), ports: map[string]bool{}}
	rep, err := b.run(ctx)
	if b.logDir != "" {
		if o.keepLogs || b.failed || err != nil {
			b.logf("daemon logs kept in %s", b.logDir)
		} else {
			_ = os.RemoveAll(b.logDir)
		}
	}
	if err != nil {
		b.logf("FAILED: %v", err)
		if ctx.Err() != nil {
			return 130
		}
		return 1
	}
	rep.writeTable(os.Stdout)
	if o.out != "" {
		if err := rep.writeJSON(o.out); err != nil {
			b.logf("write %s: %v", o.out, err)
			return 1
		}
		b.logf("wrote %s", o.out)
	}
	b.logf("done in %s; nothing left running", secs(time.Since(b.start)))
	return 0
}

func (b *bench) run(ctx context.Context) (*report, error) {
	var err error
	if b.binary, err = filepath.Abs(b.opts.binary); err != nil {
		return nil, err
	}
	if b.settings, err = readSettings(ctx, b.binary); err != nil {
		return nil, err
	}
	if b.poll, err = b.settings.float("POLL_SECONDS"); err != nil {
		return nil, err
	}
	if b.tick, err = b.settings.int("TICK_SECONDS"); err != nil {
		return nil, err
	}
	b.hint = b.settings.hasHint()
	defaults := map[string]string{}
	for _, k := range []string{"KUBE_QPS", "KUBE_BURST", "APPLY_WORKERS", "TICK_SECONDS", "POLL_SECONDS", "PG_NOTIFY"} {
		if v, ok := b.settings.defaults[k]; ok {
			defaults[k] = v
		}
	}
	b.logf("binary %s (version %s); its defaults: %v", b.opts.binary, b.settings.version, defaults)
	if b.logDir, err = os.MkdirTemp("", "kss-bench-"); err != nil {
		return nil, err
	}

	rep := &report{
		Date:     time.Now().UTC().Format(time.RFC3339),
		Cores:    runtime.NumCPU(),
		Machine:  machine(),
		Go:       runtime.Version(),
		Command:  strings.Join(append([]string{"go run ./hack/bench"}, os.Args[1:]...), " "),
		Binary:   b.settings.version,
		Settings: defaults,
	}
	rep.Method = b.method()
	rep.Notes = append(rep.Notes, fmt.Sprintf("%d cores shared by PostgreSQL, two etcd + kube-apiserver pairs, both daemons and the bench itself; other work may run on this machine too: load average %s at the start", runtime.NumCPU(), loadavg()))
	if !b.hint {
		rep.Notes = append(rep.Notes, "the binary lists no PG_NOTIFY: its default latency is already the latency without a hint, so the PG_NOTIFY=0 phase was skipped")
	}

	largest := slices.Max(b.opts.sizes)
	var workloads []*workload
	for _, n := range b.opts.sizes {
		workloads = append(workloads, &workload{bench: b, n: n, prefix: fmt.Sprintf("w%d", n),
			latency:    b.latencyAt(n),
			memoryTest: n == largest && b.opts.unlabelled > 0,
		})
	}
	for _, n := range b.opts.remoteSizes {
		workloads = append(workloads, &workload{bench: b, n: n, prefix: fmt.Sprintf("r%d", n), latency: true, dbDelay: b.opts.dbRTT / 2})
	}
	for _, w := range workloads {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		res := w.run(ctx)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		rep.Results = append(rep.Results, *res)
	}
	rep.Notes[0] += fmt.Sprintf(", %s at the end", loadavg())
	return rep, nil
}

// latencyAt reports whether workload n gets the latency phases.
func (b *bench) latencyAt(n int) bool {
	switch b.opts.latencySizes {
	case "all":
		return true
	case "min", "":
		return n == slices.Min(b.opts.sizes)
	case "none":
		return false
	}
	for _, s := range strings.Split(b.opts.latencySizes, ",") {
		if v, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && v == n {
			return true
		}
	}
	return false
}

// method says how each figure was measured, for the output.
func (b *bench) method() []string {
	o := b.opts
	m := []string{
		fmt.Sprintf("Workload: N TLS-like Secrets (tls.crt with ten DNS names, tls.key, ca.crt: a valid ECDSA P-256 key pair and issuer, all fresh; about 2 KiB each) over %d namespaces; a fresh PostgreSQL, fresh clusters, namespaces and daemon processes per N.", o.namespaces),
		"initial sync: the N labelled Secrets exist in cluster-a, and the database schema (kube-secret-sync migrate, as an installation runs it), before the daemons start (binary defaults); timed from starting the leader and follower processes until a watch on cluster-b's copies (metadata only: each Secret carries the digest of its type and data in an annotation, which is synced with them) has seen all N copies with their source's digest; then, outside the timed window, every copy's data is listed and checked against its source.",
		fmt.Sprintf("unthrottled writer: the bench itself creates the same N Secrets and %d namespaces in fresh namespaces of cluster-b, with no daemon running, with %d concurrent calls through one client without a client-side rate limit, protobuf like the daemon: the API server's own write rate here, the real limit. It is timed as the initial sync is, until a metadata watch of its Secrets like the initial sync's, running meanwhile, has seen every one: that watch costs the API server the same in both. It runs once just before the initial sync and once just after it, and its time is the mean of the two: the machine's speed drifts over minutes, and the mean is the rate around the sync's time (before, cluster-b's etcd holds none of the sync's Secrets; after, twice as many as during the sync). ratio = initial sync / unthrottled writer. Then the same writer again, into other fresh namespaces with no watch running, timed until its calls return: ratio_unwatched = initial sync / that writer, and the bench's own CPU meanwhile (the writer's client alone) per Secret.", o.namespaces, o.createWorkers),
		"429s and errors in the initial sync: apiserver_request_total with code 429 on both API servers (API Priority and Fairness rejecting a request; client-go retries it after Retry-After), and the daemons' error-level log lines, from their start until the sync completed.",
		fmt.Sprintf("idle: daemons restarted with TICK_SECONDS=%d (set for this phase only); after each finished 2 full passes and the leader had verified every row after its start (kube_secret_sync_rows_unverified 0; the passes that took are reported), %d ticks without change (+2 s for PostgreSQL's statistics flush). DB row writes: n_tup_ins+n_tup_upd+n_tup_del of every table but kss_writer (pg_stat_user_tables), cross-checked against the kss_secrets rows and kss_version; the writer claim's renewals (kss_writer) are counted apart; API writes: apiserver_request_total with verb POST/PUT/PATCH/DELETE/APPLY on secrets, configmaps and namespaces, both API servers (Lease renewals and Events are not sync work and not counted). Bytes read per full pass: what each daemon read from PostgreSQL in the window, counted by a TCP proxy of its own (no delay unless the database is made remote), divided by its full passes (the polls between passes included).", o.idleTick, o.idleTicks),
		fmt.Sprintf("latency: %d single-Secret updates (merge patch of tls.crt and the digest annotation in cluster-a), one at a time, each timed from just before the call until the watch on cluster-b sees the new digest (the data is checked after the phase); a random pause of 0–POLL_SECONDS (%gs) between updates; binary defaults; then the same with both daemons restarted with PG_NOTIFY=0.", o.latencyUpdates, b.poll),
		fmt.Sprintf("GOMEMLIMIT=%s for every daemon: what the daemon sets in deploy/base's container, its memory limit less 64 MiB for the binary's own pages and the kernel's buffers (the Go runtime collects harder near it).", o.goMemLimit),
		"RSS = VmHWM (peak) and CPU = utime+stime of the daemon processes that ran the initial sync, the default-settings latency phase and the memory check, read just before their SIGTERM; *_all_runs_mib is the peak over every process of that role in the workload.",
	}
	if len(o.env) > 0 {
		var vars []string
		for _, k := range slices.Sorted(maps.Keys(o.env)) {
			vars = append(vars, k+"="+o.env[k])
		}
		m = append(m, "EXPERIMENT: every daemon had "+strings.Join(vars, " ")+" (--env) on top of its defaults, so these are not the defaults' figures.")
	}
	if o.unlabelled > 0 {
		m = append(m, fmt.Sprintf("leader memory at the largest N: VmRSS of the running leader before and after %s unlabelled Secrets (same size) were created in cluster-a and its next full pass ran; 'N labelled vs none' is its VmRSS minus that of a fresh leader whose LABEL_SELECTOR matches nothing, in the same cluster.", thousands(o.unlabelled)))
	}
	return m
}

// errTimeout marks a bounded wait that ran out.
var errTimeout = errors.New("timed out")
