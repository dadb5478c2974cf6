package main

// One active replica per cluster: the sync loop runs only in the replica
// that holds a coordination.k8s.io Lease.

import (
	"context"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

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
