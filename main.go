// Command kube-secret-sync keeps labelled Kubernetes Secrets identical
// across clusters through a shared SQL database (CockroachDB or
// PostgreSQL). The leader cluster's daemon encrypts each Secret labelled
// kube-secret-sync=true with AES-256-GCM and upserts it; each follower
// pulls the rows changed since it last looked, decrypts them and applies
// them. See README.md.
//
// The files of this package each hold one concern: main.go wires the
// daemon; config.go reads the environment; crypto.go and hash.go are the
// wire format and its keys (standard library only); db.go, pull.go and
// migrate.go the database; loop.go what both roles share, with leader.go
// (and verify.go, its check of the stored rows) and follower.go one role
// each; apply.go what a follower does with one row (and conflicts.go the
// names it must leave alone); secrets.go what a synced Secret is and
// writer.go the API calls that write it; cache.go the watched Secrets;
// election.go the Lease; rotate.go re-encryption. Tests in *_e2e_test.go
// run against real servers and are skipped by -short.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/sirupsen/logrus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// version is set at build time (-ldflags -X main.version=…).
var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "status" {
		os.Exit(runStatus(os.Args[2:], os.Stdout, os.Stderr))
	}
	subcommand := ""
	for _, arg := range os.Args[1:] {
		switch arg {
		case "-h", "-help", "--help", "help":
			usage()
			return
		case "-version", "--version", "version":
			fmt.Println(version)
			return
		case "keygen", "rotate-key", "migrate":
			if subcommand == "" {
				subcommand = arg
				continue
			}
			fallthrough
		default:
			fmt.Fprintf(os.Stderr, "kube-secret-sync: unknown argument %q (configuration is by environment variables; see --help)\n", arg)
			os.Exit(2)
		}
	}
	if subcommand == "keygen" {
		key, err := generateKey(rand.Reader)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kube-secret-sync: keygen: "+err.Error())
			os.Exit(1)
		}
		fmt.Println(key)
		return
	}
	if subcommand == "migrate" {
		os.Exit(runMigrate())
	}
	cfg, err := loadConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-secret-sync: "+err.Error())
		os.Exit(2)
	}
	log := newLogger(cfg)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first signal asks for a clean stop; from then on the default
	// action applies again, so that a second one exits at once.
	context.AfterFunc(ctx, stop)
	if w := dsnWarning(cfg.DSN); w != "" {
		log.Warn(w)
	}
	daemon := run
	if subcommand == "rotate-key" {
		daemon = runRotateKey
	}
	if err := daemon(ctx, cfg, log); err != nil {
		var bad *badSetting
		if errors.As(err, &bad) {
			fmt.Fprintln(os.Stderr, "kube-secret-sync: "+bad.Error())
			os.Exit(2)
		}
		log.WithError(err).Error("exiting")
		os.Exit(1)
	}
	if subcommand == "" {
		log.Info("stopped")
	}
}

// memoryHeadroom is the part of the container's memory limit that the Go
// runtime's soft limit leaves for what the runtime does not count: mostly
// the binary's own mapped pages (about 35 MiB of the resident set, measured
// by hack/bench), and the kernel's buffers. With a fixed share instead
// (Prometheus's --auto-gomemlimit takes 90%), a daemon with the
// Deployment's 256 MiB limit could fill 230 MiB of Go memory and reach
// 263 MiB of resident set at N = 100,000 Secrets: past its limit, where the
// kernel evicts the binary's pages.
const memoryHeadroom = 64 << 20

// memoryLimitRatio is the share of a container memory limit that the Go
// runtime's soft limit gets: all but memoryHeadroom, and at least half.
func memoryLimitRatio(limit uint64) float64 {
	return max(0.5, 1-float64(memoryHeadroom)/float64(limit))
}

// setMemoryLimit sets the Go runtime's soft memory limit from the cgroup's
// (the container's) memory limit (memoryLimitRatio), so that the runtime
// collects garbage harder near it instead of the kernel OOM-killing the
// process. A GOMEMLIMIT in the environment wins, and AUTOMEMLIMIT sets
// another ratio or "off" (as automemlimit reads them).
func setMemoryLimit(log *logrus.Entry) {
	cgroup, err := memlimit.FromCgroup()
	if err != nil {
		log.WithError(err).Debug("no container memory limit found: the Go runtime's memory limit is not set")
		return
	}
	limit, err := memlimit.Set(memlimit.WithRatio(memoryLimitRatio(cgroup)), memlimit.WithProvider(memlimit.Limit(cgroup)))
	if err != nil {
		log.WithError(err).Debug("the Go runtime's memory limit is not set")
		return
	}
	if limit != math.MaxInt64 {
		log.WithField("GOMEMLIMIT", limit).Debug("Go runtime memory limit set")
	}
}

// badSetting is a setting found invalid only once it is used (an address
// that cannot be bound): the process stops as for an invalid value, with
// exit code 2 and one line that names the variable.
type badSetting struct {
	name string
	err  error
}

func (b *badSetting) Error() string { return "invalid " + b.name + ": " + printableError(b.err) }
func (b *badSetting) Unwrap() error { return b.err }

// watchConfig is rc for the Secret caches' watches, on an HTTP/2
// connection of their own. On one shared connection, an initial sync's
// creates and their answers queue with the watch's events, and the API
// server closed the follower's watch as unresponsive (its buffer holds
// a few dozen events) 8 to 27 times in a 10,000-Secret sync, each time
// followed by a new watch that resends what was missed. client-go caches
// transports by TLS settings and shares one for equal configurations; a
// dial function of its own makes the configuration uncacheable, so the
// watches get their own transport.
func watchConfig(rc *rest.Config) *rest.Config {
	w := rest.CopyConfig(rc)
	if w.Dial == nil {
		w.Dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	return w
}

// restConfig uses KUBECONFIG when set, else the in-cluster configuration.
func restConfig(cfg *Config) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if cfg.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	rc.UserAgent = "kube-secret-sync/" + version
	// Protobuf is several times cheaper to decode than JSON for the large
	// Secret lists of informers and full passes.
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	// No gzip: the daemon talks to its own cluster's API server, where
	// compressing every list of Secrets (random bytes in base64, which
	// hardly compress) costs both sides CPU and saves no time. Like
	// kube-controller-manager and kube-scheduler (kubernetes#80919).
	rc.DisableCompression = true
	if cfg.wrapTransport != nil {
		rc.Wrap(cfg.wrapTransport)
	}
	return rc, nil
}

// run is the daemon: it returns when ctx ends (nil) or on a fatal error.
func run(ctx context.Context, cfg *Config, log *logrus.Entry) error {
	setMemoryLimit(log)
	keys, err := cfg.keyring()
	if err != nil {
		return err
	}
	rc, err := restConfig(cfg)
	if err != nil {
		return err
	}
	m := newMetrics()
	m.describe(cfg)
	if cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return &badSetting{"METRICS_ADDR", err}
		}
		go func() {
			if err := m.serve(ctx, ln, 3*cfg.Tick()+time.Minute); err != nil {
				log.WithError(err).Error("metrics server failed")
			}
		}()
	}
	if cfg.PprofAddr != "" {
		ln, err := net.Listen("tcp", cfg.PprofAddr)
		if err != nil {
			return &badSetting{"PPROF_ADDR", err}
		}
		go func() {
			if err := servePprof(ctx, ln); err != nil {
				log.WithError(err).Error("pprof server failed")
			}
		}()
	}
	setClientLimits(ctx, rc, cfg, log)
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	watchClient, err := kubernetes.NewForConfig(watchConfig(rc))
	if err != nil {
		return err
	}
	store, err := openMigrated(ctx, cfg, log)
	if err != nil || store == nil {
		return err
	}
	defer store.Close()
	m.ready.Store(true)

	recorder, stopEvents := startEvents(ctx, client, m)
	defer stopEvents()

	d := loopDeps{cfg: cfg, keys: keys, log: log, store: store, client: client, watchClient: watchClient, metrics: m, recorder: recorder}
	work := func(ctx context.Context) error { return runRole(ctx, d) }
	if !cfg.LeaderElection {
		return work(ctx)
	}
	return runElected(ctx, cfg, log, client, work)
}
