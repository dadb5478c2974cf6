package main

// Failover between leaders (LEADER=1 in more than one cluster). The
// database's writer claim (claim.go) decides the one that writes; every
// other leader is a standby: it follows the writer's rows as a follower
// does, so that its cluster holds current copies, and takes the claim over
// once it is released or has expired. Taking over, it first brings its
// copies to the database's version, and only then writes.

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// runLeader runs the leader role until ctx ends: standby until this
// cluster holds the writer claim, then the leader loop until the claim is
// lost, and so on.
func runLeader(ctx context.Context, d loopDeps) error {
	// At start a claim that this cluster still holds (a restart, or the
	// next replica after a Lease handover) is taken again at once.
	retake := true
	for {
		var held *heldClaim
		var err error
		if retake {
			// At start, a free claim is taken before anything else: a sole
			// leader writes at once, and needs no follower permissions.
			if _, c, ok, _ := tryTake(ctx, d, true); ok {
				held = holdClaim(ctx, d, c)
			}
		}
		if held == nil {
			if held, err = standBy(ctx, d, retake); held == nil {
				return err
			}
		}
		retake = false
		d.metrics.writer.Set(1)
		d.log.WithField("epoch", held.claim.Epoch).Info("holding the writer claim: writing")
		l := newLeaderLoop(d, held.claim)
		l.inherited = held.inherited
		err = l.run(held.ctx)
		held.stop()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, errFenced) {
			return err
		}
		d.log.WithField("epoch", held.claim.Epoch).Warn("lost the writer claim to another leader: on standby, following its rows")
	}
}

// standBy runs this cluster as a standby, the follower loop with
// standby's rules, until it takes the writer claim; it then lets the
// follower loop finish one full pass (the catch-up) and returns the held
// claim. It returns nil when ctx ends first.
func standBy(ctx context.Context, d loopDeps, retake bool) (*heldClaim, error) {
	d.metrics.writer.Set(0)
	f := newFollowerLoop(d)
	f.standby = true
	promoted := make(chan struct{})
	f.promoted = promoted
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var held *heldClaim
	var wg sync.WaitGroup
	wg.Go(func() {
		if c, ok := waitForClaim(fctx, d, retake); ok {
			// Renewed from now on, through the catch-up and the writing,
			// for as long as the daemon runs (ctx, not fctx).
			held = holdClaim(ctx, d, c)
			close(promoted)
		}
	})
	err := f.run(fctx)
	cancel()
	wg.Wait()
	if held != nil && ctx.Err() != nil {
		held.stop()
		return nil, nil
	}
	if held == nil {
		return nil, err
	}
	held.inherited = f.inherited
	return held, nil
}

// tryTake reads the claim and takes it if it is free (or, with retake,
// this cluster's). It returns the claim as read, for the caller's report.
func tryTake(ctx context.Context, d loopDeps, retake bool) (ClaimState, Claim, bool, error) {
	me := d.cfg.ClusterName
	st, err := d.store.ReadClaim(ctx)
	if err != nil || !(st.Free() || (retake && st.Holder == me)) {
		return st, Claim{}, false, err
	}
	c, ok, err := d.store.TakeClaim(ctx, me, d.cfg.ClaimTTL(), retake)
	return st, c, ok, err
}

// claimPoll is how often a standby reads the claim: a tenth of its
// lifetime, between 100 ms and 1 s.
func claimPoll(ttl time.Duration) time.Duration {
	return min(max(ttl/10, 100*time.Millisecond), time.Second)
}

// waitForClaim polls the claim until it is free (or, with retake, held
// under this cluster's name) and takes it. ok is false when ctx ends.
func waitForClaim(ctx context.Context, d loopDeps, retake bool) (c Claim, ok bool) {
	t := time.NewTicker(claimPoll(d.cfg.ClaimTTL()))
	defer t.Stop()
	var seen Claim
	failing := false
	for {
		st, c, ok, err := tryTake(ctx, d, retake)
		if ok {
			return c, true
		}
		switch {
		case ctx.Err() != nil:
			return Claim{}, false
		case err != nil:
			if !failing {
				d.log.WithError(err).Error("cannot read the writer claim; retrying")
			}
			failing = true
		default:
			failing = false
			retake = false
			d.metrics.claimLeft.WithLabelValues().Set(st.ExpiresAt.Sub(st.Now).Seconds())
			if st.Claim != seen && st.Holder != "" {
				seen = st.Claim
				d.metrics.writerEpoch.Set(float64(st.Epoch))
				d.log.WithFields(logrus.Fields{"writer": st.Holder, "epoch": st.Epoch, "expires_in": st.ExpiresAt.Sub(st.Now).Round(time.Millisecond).String()}).
					Info("standby: another leader holds the writer claim; following its rows")
			}
		}
		select {
		case <-ctx.Done():
			return Claim{}, false
		case <-t.C:
		}
	}
}

// heldClaim is a claim this cluster holds, renewed in the background.
// ctx ends when the claim is lost (or the parent ends); stop ends the
// renewals and releases the claim if it is still held.
type heldClaim struct {
	claim Claim
	ctx   context.Context
	stop  func()
	// inherited: the copies a standby held when it took the claim
	// (followerLoop.inherited), nil for a claim taken at start.
	inherited map[ObjectKey]int64
}

// holdClaim renews c every third of its lifetime until ctx ends or the
// claim turns out lost. A renewal that fails for another reason (the
// database unreachable) is retried; meanwhile every write is fenced by
// the database, so a claim taken over behind this leader's back costs
// nothing but the writes it refuses.
func holdClaim(ctx context.Context, d loopDeps, c Claim) *heldClaim {
	d.metrics.writerEpoch.Set(float64(c.Epoch))
	ttl := d.cfg.ClaimTTL()
	// By this replica's clock, from the last renewal: the database's is
	// not read again while renewals fail.
	claimLeft := d.metrics.claimLeft.WithLabelValues()
	renewed := time.Now()
	claimLeft.Set(ttl.Seconds())
	hctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		next := ttl / 3
		for {
			select {
			case <-hctx.Done():
				return
			case <-time.After(next):
			}
			err := d.store.RenewClaim(hctx, c, ttl)
			switch {
			case hctx.Err() != nil:
				return
			case errors.Is(err, errFenced):
				cancel()
				return
			case err != nil:
				d.log.WithError(err).Warn("writer claim not renewed; retrying")
				claimLeft.Set(time.Until(renewed.Add(ttl)).Seconds())
				next = claimPoll(ttl)
			default:
				d.metrics.claimRenewals.Inc()
				renewed = time.Now()
				claimLeft.Set(ttl.Seconds())
				next = ttl / 3
			}
		}
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			lost := hctx.Err() != nil && ctx.Err() == nil
			cancel()
			<-done
			if lost {
				return
			}
			// A graceful stop: hand the claim to a standby at once.
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer rcancel()
			if err := d.store.ReleaseClaim(rctx, c); err != nil {
				d.log.WithError(err).Warn("writer claim not released: a standby takes over when it expires")
			} else {
				d.log.WithField("epoch", c.Epoch).Info("writer claim released")
			}
		})
	}
	return &heldClaim{claim: c, ctx: hctx, stop: stop}
}

// standbyAdopts is a standby's rule for a Secret of its cluster that is
// labelled for syncing but is no managed copy: its own source from when
// it wrote, or one created here. The writer's row (desired, a tombstone
// when its Data is nil) replaces or deletes it when the content is the
// same (only the marks change) or the row changed after the Secret did
// (the newest change wins); otherwise it is reported as a conflict, as a
// follower reports any unmanaged Secret, and is written as this cluster's
// once it holds the claim.
func standbyAdopts(cfg *Config) func(existing, desired *corev1.Secret) bool {
	return func(existing, desired *corev1.Secret) bool {
		if !cfg.selector.Matches(labels.Set(existing.Labels)) {
			return false
		}
		same := desired.Data != nil && orOpaque(existing.Type) == orOpaque(desired.Type) && dataEqual(existing.Data, desired.Data)
		return same || lastChange(existing).Before(lastChange(desired))
	}
}
