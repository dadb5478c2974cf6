package main

// One active replica per cluster: the sync loop runs only in the replica
// that holds a coordination.k8s.io Lease.

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// runElected runs work only while this replica holds the Lease, so that
// several replicas per cluster are safe. On shutdown the work stops first
// (it finishes or abandons its step) and only then is the Lease released,
// so that a standby takes over at once but never while this replica is
// mid-step (between the delete and the create of a recreate, say). A Lease
// lost while running (the API server unreachable for longer than the renew
// deadline) is an error, and the restarted process queues up again.
func runElected(ctx context.Context, cfg *Config, log *logrus.Entry, client kubernetes.Interface, work func(context.Context) error) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.PodNamespace, Name: cfg.LeaseName},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.PodName},
	}
	// The elector has a context of its own: with ReleaseOnCancel it
	// releases the Lease as soon as that context ends, so it must end only
	// once the work has stopped, not with the daemon's.
	electing, stopElecting := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElecting()
	workDone := make(chan error, 1)
	var started atomic.Bool
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		ReleaseOnCancel: true,
		Name:            cfg.LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(leading context.Context) {
				started.Store(true)
				// The work ends with the daemon or with the Lease.
				workCtx, cancel := context.WithCancel(leading)
				defer context.AfterFunc(ctx, cancel)()
				defer cancel()
				log.WithField("lease", cfg.PodNamespace+"/"+cfg.LeaseName).Info("holding the Lease: syncing")
				workDone <- work(workCtx)
				stopElecting() // now the Lease may go
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
	// A standby has no work to wait for: it stops electing at once.
	defer context.AfterFunc(ctx, func() {
		if !elector.IsLeader() {
			stopElecting()
		}
	})()
	elector.Run(electing)
	if ctx.Err() == nil {
		// Run returned on its own: the work ended (it stopped the
		// election), or the Lease was lost and the work's context
		// cancelled. Either way the work ran and reports on workDone.
		if err := <-workDone; err != nil {
			return err
		}
		return fmt.Errorf("lost the Lease %s/%s", cfg.PodNamespace, cfg.LeaseName)
	}
	// Shutting down: if this replica was leading, its work returns (Run
	// returned after stopElecting, or the work was about to start when
	// the shutdown came); a standby has none.
	if started.Load() {
		return <-workDone
	}
	return nil
}
