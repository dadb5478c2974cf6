package main

import "testing"

// TestWakeUpHint: with PG_NOTIFY, a follower whose poll is a minute away
// still applies a change within seconds, woken by the leader's NOTIFY. The
// other end-to-end tests run without the hint, on the portable poll.
func TestWakeUpHint(t *testing.T) {
	e := newSyncEnv(t)
	lc, fc := e.config(true), e.config(false)
	for _, c := range []*Config{lc, fc} {
		c.PgNotify = true
		c.TickSeconds, c.PollSeconds = 120, 120
	}
	e.start(lc)
	follower := e.start(fc)
	// The follower's first full pass is done: from now on only a pull
	// (in two minutes) or the hint brings rows.
	follower.waitMetric(t, fullOK, 1)
	src := e.secrets(e.leader)
	// waitSynced gives up after syncTimeout (30 s), far below the poll
	// interval: each copy that appears was brought by the hint.
	for _, name := range []string{"first", "second"} {
		mustCreate(t, src, labelled(name, map[string]string{"k": secretValue}))
		e.waitSynced(name)
	}
}
