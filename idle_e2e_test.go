package main

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// TestIdlePassesReadDigestsOnly: once the leader has verified every row,
// an idle full pass of either daemon reads a few KiB from the database
// (bucket digests), not every row's header: counted by a TCP proxy between
// each daemon and PostgreSQL, over several passes, with enough rows that
// reading their headers would take many times as much.
func TestIdlePassesReadDigestsOnly(t *testing.T) {
	const n = 1500
	e := newSyncEnv(t)
	proxied := func(cfg *Config) *testenv.DelayProxy {
		var p *testenv.DelayProxy
		cfg.DSN, p = proxiedDSN(t, cfg.DSN)
		cfg.PollSeconds = 1 // one poll per pass: the polls are not what is measured
		return p
	}
	src := e.secrets(e.leader)
	var wg sync.WaitGroup
	names := make(chan string)
	for range 16 {
		wg.Go(func() {
			for name := range names {
				mustCreate(t, src, labelled(name, map[string]string{"k": secretValue}))
			}
		})
	}
	for i := range n {
		names <- fmt.Sprintf("s-%04d", i)
	}
	close(names)
	wg.Wait()

	lc, fc := e.config(true), e.config(false)
	lp, fp := proxied(lc), proxied(fc)
	leader, follower := e.start(lc), e.start(fc)
	e.waitSynced(fmt.Sprintf("s-%04d", n-1))
	e.waitSynced("s-0000")
	const full = `kube_secret_sync_reconciles_total{kind="full",result="ok"}`
	eventually(t, syncTimeout, func() error {
		if v := leader.metric(t, "kube_secret_sync_rows_unverified"); v != 0 || leader.metric(t, full) < 3 || follower.metric(t, full) < 3 {
			return fmt.Errorf("leader: %v rows unverified", v)
		}
		return nil
	})
	// The size of every row's header, as the full pass read them before.
	var headers int64
	if err := e.dbConn().QueryRow(t.Context(), `SELECT sum(octet_length(namespace) + octet_length(name) + octet_length(hash) + octet_length(key_id) + octet_length(source_cluster) + 8) FROM kss_secrets`).Scan(&headers); err != nil {
		t.Fatal(err)
	}
	type mark struct {
		bytes  int64
		passes float64
	}
	at := func() [2]mark {
		return [2]mark{{lp.BytesFromServer(), leader.metric(t, full)}, {fp.BytesFromServer(), follower.metric(t, full)}}
	}
	before := at()
	eventually(t, 30*time.Second, func() error {
		if now := at(); now[0].passes < before[0].passes+4 || now[1].passes < before[1].passes+4 {
			return fmt.Errorf("passes: leader %v, follower %v", now[0].passes-before[0].passes, now[1].passes-before[1].passes)
		}
		return nil
	})
	after := at()
	for i, role := range []string{"leader", "follower"} {
		perPass := float64(after[i].bytes-before[i].bytes) / (after[i].passes - before[i].passes)
		t.Logf("%s: %.0f bytes per idle full pass; the %d rows' headers are %d bytes", role, perPass, n, headers)
		if perPass > 8<<10 || perPass > float64(headers)/10 {
			t.Errorf("%s reads %.0f bytes per idle full pass; want at most 8 KiB, a tenth of the rows' headers (%d bytes)", role, perPass, headers)
		}
	}
}
