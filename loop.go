package main

// What the two loops share: the choice of role, what each loop is given,
// and the one way a reconcile pass runs (passRunner). The leader's loop is
// in leader.go, the follower's in follower.go, and what the follower does
// with one row in apply.go.

import (
	"context"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/kubernetes"
)

// loopDeps is what a loop is given: the configuration, the keyring, and
// the clients of this cluster and of the database.
type loopDeps struct {
	cfg    *Config
	keys   *Keyring
	log    *logrus.Entry
	store  *Store
	client kubernetes.Interface
	// watchClient is the client of the Secret caches' watches (watchConfig);
	// nil: client.
	watchClient kubernetes.Interface
	metrics     *metrics
	recorder    *eventRecorder
}

// runRole runs this cluster's role, leader or follower (LEADER), until ctx
// ends.
func runRole(ctx context.Context, d loopDeps) error {
	d.metrics.setRunning(true)
	defer d.metrics.setRunning(false)
	// For this term: the namespace watch ends with ctx.
	cfg, err := d.cfg.withNamespaceWatch(ctx, d.client)
	if err != nil {
		return shutdownOr(ctx, err)
	}
	d.cfg = cfg
	if d.cfg.IsLeader() {
		return runLeader(ctx, d)
	}
	return newFollowerLoop(d).run(ctx)
}

// passRunner runs one loop's reconcile passes. Every pass goes through
// run, which bounds it by the pass timeout, times it and counts it in the
// metrics, and is the one place where a failed pass is logged: a pass
// returns its error and logs nothing about it.
type passRunner struct {
	log     *logrus.Entry
	metrics *metrics
	timeout time.Duration
}

func newPassRunner(d loopDeps) passRunner {
	return passRunner{log: d.log, metrics: d.metrics, timeout: d.cfg.passTimeout()}
}

// passFunc is one reconcile pass. idle reports that it found nothing to do
// (no new rows, no dirty Secrets): such a pass only marks the loop alive,
// so that the duration metrics and the reconcile counts describe work.
type passFunc func(ctx context.Context) (idle bool, err error)

// run runs pass and returns its error. An error caused by ctx ending is a
// shutdown, not a failure: it is neither logged nor counted.
func (p passRunner) run(ctx context.Context, kind string, pass passFunc) error {
	start := time.Now()
	passCtx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	idle, err := pass(passCtx)
	switch {
	case err != nil && ctx.Err() != nil:
		p.log.WithField("kind", kind).Debug("reconcile pass abandoned: shutting down")
	case err != nil:
		p.log.WithError(err).WithField("kind", kind).Error("reconcile pass failed; will retry")
		p.metrics.observe(kind, start, err)
	case idle:
		p.metrics.beat()
	default:
		p.metrics.observe(kind, start, nil)
	}
	return err
}

// shutdownOr returns err, or nil when it is only the consequence of ctx
// ending (a shutdown while the watches were still filling).
func shutdownOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// watches is the client for the Secret caches' lists and watches.
func (d loopDeps) watches() kubernetes.Interface {
	if d.watchClient != nil {
		return d.watchClient
	}
	return d.client
}
