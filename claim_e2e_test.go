package main

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestWriterClaim: the claim is taken when free, refused while another
// holder has it, taken over once it expired by the database's clock or
// was released; a holder fenced out can neither renew nor write, and a
// retake by the same holder fences its previous epoch.
func TestWriterClaim(t *testing.T) {
	s := mustMigratedStore(t)
	ctx := t.Context()
	take := func(holder string, ttl time.Duration, retake bool) (Claim, bool) {
		t.Helper()
		c, ok, err := s.TakeClaim(ctx, holder, ttl, retake)
		if err != nil {
			t.Fatal(err)
		}
		return c, ok
	}
	a, ok := take("a", time.Hour, false)
	if !ok || a.Epoch != 1 {
		t.Fatalf("TakeClaim(free) = %+v, %v; want epoch 1", a, ok)
	}
	if _, ok := take("b", time.Hour, true); ok {
		t.Fatal("b took a claim that a holds")
	}
	if _, ok := take("a", time.Hour, false); ok {
		t.Fatal("a took its own claim again without retake")
	}
	if _, err := s.Write(ctx, a, "kid", []Change{change("ns", "x", 1)}, labelSeal); err != nil {
		t.Fatalf("the holder's write: %v", err)
	}

	// A retake by the same holder (its restart) fences the old epoch.
	a2, ok := take("a", time.Hour, true)
	if !ok || a2.Epoch != 2 {
		t.Fatalf("retake = %+v, %v; want epoch 2", a2, ok)
	}
	if _, err := s.Write(ctx, a, "kid", []Change{change("ns", "x", 2)}, labelSeal); !errors.Is(err, errFenced) {
		t.Errorf("write in the old epoch = %v; want errFenced", err)
	}
	if err := s.RenewClaim(ctx, a, time.Hour); !errors.Is(err, errFenced) {
		t.Errorf("renew of the old epoch = %v; want errFenced", err)
	}

	// Released: taken at once.
	if err := s.ReleaseClaim(ctx, a2); err != nil {
		t.Fatal(err)
	}
	b, ok := take("b", time.Second, false)
	if !ok || b.Epoch != 3 {
		t.Fatalf("TakeClaim after release = %+v, %v; want epoch 3", b, ok)
	}
	if err := s.ReleaseClaim(ctx, a2); err != nil {
		t.Errorf("releasing a claim no longer held = %v; want nil (nothing happens)", err)
	}
	if st, err := s.ReadClaim(ctx); err != nil || st.Holder != "b" || st.Free() {
		t.Fatalf("after a stale release the claim is %+v, %v; want b's", st, err)
	}

	// Expired by the database's clock: taken over, and the expired holder
	// is fenced. Renewing in time keeps it.
	if err := s.RenewClaim(ctx, b, time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		st, err := s.ReadClaim(ctx)
		if err != nil {
			return err
		}
		if !st.Free() {
			return errors.New("not expired yet")
		}
		return nil
	})
	c, ok := take("c", time.Hour, false)
	if !ok || c.Epoch != 4 {
		t.Fatalf("TakeClaim(expired) = %+v, %v; want epoch 4", c, ok)
	}
	if _, err := s.Write(ctx, b, "kid", []Change{change("ns", "x", 3)}, labelSeal); !errors.Is(err, errFenced) {
		t.Errorf("write by the expired holder = %v; want errFenced", err)
	}
	if rows := mustPullAll(t, s, Cursor{}, 10); len(rows) != 1 || rows[0].SourceCluster != "a" {
		t.Errorf("rows = %+v; want only a's first write", rows)
	}
}

// TestWriterClaimRace: many leaders take a free claim at the same instant,
// each with its own connection: exactly one gets it, and the epoch moves
// by one, round after round.
func TestWriterClaimRace(t *testing.T) {
	s := mustMigratedStore(t)
	ctx := t.Context()
	const leaders = 16
	for round := range 5 {
		start := make(chan struct{})
		won := make(chan Claim, leaders)
		var wg sync.WaitGroup
		for i := range leaders {
			wg.Go(func() {
				<-start
				c, ok, err := s.TakeClaim(ctx, fmt.Sprintf("leader-%d", i), time.Hour, false)
				if err != nil {
					t.Error(err)
				}
				if ok {
					won <- c
				}
			})
		}
		close(start)
		wg.Wait()
		close(won)
		var winners []Claim
		for c := range won {
			winners = append(winners, c)
		}
		if len(winners) != 1 || winners[0].Epoch != int64(round+1) {
			t.Fatalf("round %d: winners %+v; want exactly one, at epoch %d", round, winners, round+1)
		}
		if err := s.ReleaseClaim(ctx, winners[0]); err != nil {
			t.Fatal(err)
		}
	}
}
