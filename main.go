// Command kube-secret-sync keeps labelled Kubernetes Secrets identical
// across clusters through a shared SQL database (CockroachDB or
// PostgreSQL). The leader cluster's daemon encrypts each Secret labelled
// kube-secret-sync=true with AES-256-GCM and upserts it; each follower
// pulls the rows changed since it last looked, decrypts them and applies
// them. See README.md.
package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
)

// version is set at build time (-ldflags -X main.version=…).
var version = "dev"

func main() {
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
	if w := dsnWarning(cfg.DSN); w != "" {
		log.Warn(w)
	}
	daemon := run
	if subcommand == "rotate-key" {
		daemon = runRotateKey
	}
	if err := daemon(ctx, cfg, log); err != nil {
		log.WithError(err).Error("exiting")
		os.Exit(1)
	}
	if subcommand == "" {
		log.Info("stopped")
	}
}

// runMigrate is the migrate subcommand: it applies the pending migrations
// with the role DSN names and exits. It needs only DSN (and DEBUG,
// PRETTY), so that a schema owner can run it without the encryption key.
func runMigrate() int {
	cfg := &Config{DSN: os.Getenv("DSN"), Debug: os.Getenv("DEBUG"), Pretty: os.Getenv("PRETTY"), ClusterName: os.Getenv("CLUSTER_NAME")}
	if cfg.DSN == "" {
		fmt.Fprintln(os.Stderr, "kube-secret-sync: DSN is required")
		return 2
	}
	log := newLogger(cfg).WithField("cmd", "migrate")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	store, err := OpenStore(ctx, cfg.DSN)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-secret-sync: "+dsnError)
		return 2
	}
	defer store.Close()
	host, _ := os.Hostname()
	if err := store.Migrate(ctx, "migrate@"+host); err != nil {
		log.WithError(err).Error("migrations not applied")
		return 1
	}
	log.Info("the database schema is up to date")
	return 0
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
	rc.QPS, rc.Burst = cfg.KubeQPS, cfg.KubeBurst
	rc.UserAgent = "kube-secret-sync/" + version
	// Protobuf is several times cheaper to decode than JSON for the large
	// Secret lists of informers and full passes.
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	if cfg.wrapTransport != nil {
		rc.Wrap(cfg.wrapTransport)
	}
	return rc, nil
}

// run is the daemon: it returns when ctx ends (nil) or on a fatal error.
func run(ctx context.Context, cfg *Config, log *logrus.Entry) error {
	rc, err := restConfig(cfg)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	m := newMetrics()
	if cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("METRICS_ADDR: %w", err)
		}
		go func() {
			if err := m.serve(ctx, ln, 3*cfg.Tick()+time.Minute); err != nil {
				log.WithError(err).Error("metrics server failed")
			}
		}()
	}
	store, err := openMigrated(ctx, cfg, log)
	if err != nil || store == nil {
		return err
	}
	defer store.Close()
	m.ready.Store(true)

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kube-secret-sync"})

	work := func(ctx context.Context) error {
		m.setRunning(true)
		defer m.setRunning(false)
		if cfg.IsLeader() {
			return newLeaderLoop(cfg, log, store, client, m).run(ctx)
		}
		return newFollowerLoop(cfg, log, store, client, m, recorder).run(ctx)
	}
	if !cfg.LeaderElection {
		return work(ctx)
	}
	return runElected(ctx, cfg, log, client, work)
}

// openMigrated connects to the database and applies migrations, retrying
// while the database is unreachable: a daemon that starts before its
// database must wait, not crash-loop. It returns nil, nil if ctx ends.
func openMigrated(ctx context.Context, cfg *Config, log *logrus.Entry) (*Store, error) {
	backoff := time.Second
	for {
		store, err := OpenStore(ctx, cfg.DSN)
		if err == nil {
			if err = store.Migrate(ctx, cfg.PodName); err == nil {
				return store, nil
			}
			store.Close()
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		log.WithError(err).WithField("retry_in", backoff.String()).Error("database not ready")
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// runElected runs work only while this replica holds the Lease, so that
// several replicas per cluster are safe. The Lease is released on shutdown
// so that a standby takes over at once; a Lease lost while running (the API
// server unreachable for longer than the renew deadline) is an error, and
// the restarted process queues up for the Lease again.
func runElected(ctx context.Context, cfg *Config, log *logrus.Entry, client kubernetes.Interface, work func(context.Context) error) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.PodNamespace, Name: cfg.LeaseName},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.PodName},
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	workDone := make(chan error, 1)
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		ReleaseOnCancel: true,
		Name:            cfg.LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				log.WithField("lease", cfg.PodNamespace+"/"+cfg.LeaseName).Info("holding the Lease: syncing")
				workDone <- work(ctx)
				cancel()
			},
			OnStoppedLeading: func() {},
			OnNewLeader: func(identity string) {
				if identity != cfg.PodName {
					log.WithField("holder", identity).Info("standing by: another replica holds the Lease")
				}
			},
		},
	})
	if err != nil {
		return err
	}
	elector.Run(ctx)
	if parent.Err() == nil {
		// Run returned on its own: the work ended (it cancelled ctx), or
		// the Lease was lost and the work's context cancelled. Either way
		// the work ran and reports on workDone.
		if err := <-workDone; err != nil {
			return err
		}
		return fmt.Errorf("lost the Lease %s/%s", cfg.PodNamespace, cfg.LeaseName)
	}
	// Shutting down. If the work was running it stops promptly on the
	// cancelled context; if this replica was standing by there is none.
	select {
	case err := <-workDone:
		return err
	case <-time.After(5 * time.Second):
		return nil
	}
}
