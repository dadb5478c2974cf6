package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/kube-secret-sync/kube-secret-sync/internal/testenv"
)

// TestStatus runs the real binary's status subcommand with each daemon's
// environment, while they run and after they stop: the role, the Lease
// holder, the writer claim, the database's version against the cursor,
// what needs attention, and the exit code that says so.
func TestStatus(t *testing.T) {
	testenv.SkipShort(t)
	bin := buildBinary(t)
	e := newSyncEnv(t)
	leaderCfg, followerCfg := e.config(true), e.config(false)
	leader, follower := e.start(leaderCfg), e.start(followerCfg)
	mustCreate(t, e.secrets(e.leader), labelled("s1", map[string]string{"k": "v"}))
	e.waitSynced("s1")

	status := func(cfg *Config, args ...string) (statusReport, string, int) {
		t.Helper()
		stdout, stderr, code := runBinary(t, bin, cfg.env(), append([]string{"status"}, args...)...)
		var r statusReport
		if slices.Contains(args, "json") {
			if err := json.Unmarshal([]byte(stdout), &r); err != nil {
				t.Fatalf("status -o json: %v\n%s\n%s", err, stdout, stderr)
			}
		}
		if strings.Contains(stdout+stderr, testPassword) || strings.Contains(stdout+stderr, testKey) {
			t.Error("status printed the DSN password or the key")
		}
		return r, stdout + stderr, code
	}
	wantAttention := func(r statusReport, code int, about ...string) {
		t.Helper()
		want := statusOK
		if len(about) > 0 {
			want = statusAttention
		}
		if code != want || len(r.Attention) != len(about) {
			t.Errorf("%s: exit %d, attention %q; want exit %d and %d items", r.Cluster, code, r.Attention, want, len(about))
			return
		}
		for i, a := range about {
			if !strings.Contains(r.Attention[i], a) {
				t.Errorf("%s: attention %q; want it about %q", r.Cluster, r.Attention[i], a)
			}
		}
	}

	// Both running and in step.
	var version int64
	eventually(t, syncTimeout, func() error {
		r, _, _ := status(followerCfg, "-o", "json")
		if r.Cursor == nil || r.Cursor.Version != r.DatabaseVersion || r.DatabaseVersion == 0 {
			return fmt.Errorf("follower: cursor %+v, database version %d; want the cursor at the database's version", r.Cursor, r.DatabaseVersion)
		}
		version = r.DatabaseVersion
		return nil
	})
	r, _, code := status(leaderCfg, "-o", "json")
	wantAttention(r, code)
	if r.Role != "leader (writer)" || r.Writer.Holder != "cluster-a" || r.Writer.ExpiresIn <= 0 || r.Lease == nil || r.Lease.Holder != "leader-0" || r.Cursor != nil || r.DatabaseVersion != version {
		t.Errorf("leader: %+v (writer %+v, lease %+v); want the writer cluster-a, holding its Lease, at version %d", r, r.Writer, r.Lease, version)
	}
	r, _, code = status(followerCfg, "-o", "json")
	wantAttention(r, code)
	if r.Role != "follower" || r.Lease == nil || r.Lease.Holder != "follower-0" || r.Cursor.RowsBehind != 0 {
		t.Errorf("follower: %+v (lease %+v, cursor %+v); want a follower holding its Lease, no row behind", r, r.Lease, r.Cursor)
	}
	_, text, code := status(followerCfg)
	for _, line := range []string{"role:", "follower", "writer claim:", "cluster-a, epoch 1", "cursor:", "in step", "nothing needs attention"} {
		if !strings.Contains(text, line) || code != statusOK {
			t.Errorf("status (text), exit %d, lacks %q:\n%s", code, line, text)
		}
	}

	// The follower stopped while two Secrets change: two rows behind,
	// and nobody holds its Lease.
	follower.stop(t)
	mustCreate(t, e.secrets(e.leader), labelled("s2", map[string]string{"k": "v"}))
	mustCreate(t, e.secrets(e.leader), labelled("s3", map[string]string{"k": "v"}))
	eventually(t, syncTimeout, func() error {
		if r, _, code = status(followerCfg, "-o", "json"); r.Cursor == nil || r.Cursor.RowsBehind != 2 {
			return fmt.Errorf("follower: cursor %+v; want 2 rows behind", r.Cursor)
		}
		return nil
	})
	wantAttention(r, code, "holds the Lease")

	// The leader stopped too: its claim is released, so nothing writes.
	leader.stop(t)
	r, _, code = status(leaderCfg, "-o", "json")
	wantAttention(r, code, "holds the Lease", "writer claim")
	if r.Role != "leader (standby)" || r.Writer.Holder != "" {
		t.Errorf("stopped leader: role %q, writer %+v; want a standby and a free claim", r.Role, r.Writer)
	}

	// Bad arguments and configuration: exit 2, and 3 when the database
	// cannot be reached.
	if _, _, code := status(leaderCfg, "--diff-everything"); code != statusUsage {
		t.Errorf("status with an unknown argument: exit %d; want %d", code, statusUsage)
	}
	bad := *leaderCfg
	bad.EncryptionKey = "short"
	if _, text, code := status(&bad); code != statusUsage || !strings.Contains(text, "ENCRYPTION_KEY") {
		t.Errorf("status with a bad ENCRYPTION_KEY: exit %d, %q; want %d naming the variable", code, text, statusUsage)
	}
	down := *leaderCfg
	down.DSN = "postgresql://kss:" + testPassword + "@127.0.0.1:1/kss?connect_timeout=2"
	if _, _, code := status(&down); code != statusUnreachable {
		t.Errorf("status with an unreachable database: exit %d; want %d", code, statusUnreachable)
	}
}
