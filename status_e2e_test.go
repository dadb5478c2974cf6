package main

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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

// TestStatusSecrets: status counts a stopped follower's Secrets by state,
// names each one that needs attention with what to do, and with --diff
// lists what the follower would create, update and delete, changing
// nothing.
func TestStatusSecrets(t *testing.T) {
	testenv.SkipShort(t)
	bin := buildBinary(t)
	e := newSyncEnv(t)
	leaderCfg, followerCfg := e.config(true), e.config(false)
	leader, follower := e.start(leaderCfg), e.start(followerCfg)
	src := e.secrets(e.leader)
	for _, name := range []string{"kept", "upd", "gone", "bad"} {
		mustCreate(t, src, labelled(name, map[string]string{"k": "v1"}))
	}
	for _, name := range []string{"kept", "upd", "gone", "bad"} {
		e.waitSynced(name)
	}
	follower.stop(t)
	// What the follower has not applied yet.
	for _, name := range []string{"upd", "bad"} {
		s, err := src.Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Data["k"] = []byte("v2")
		if _, err := src.Update(t.Context(), s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.Delete(t.Context(), "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, src, labelled("new", nil))
	mustCreate(t, src, labelled("taken", nil))
	mustCreate(t, e.secrets(e.follower), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "taken"}, Data: map[string][]byte{"own": []byte("x")}})
	leader.waitMetric(t, "kube_secret_sync_rows_written_total", 9)
	// The leader stops before it could heal the row damaged now.
	leader.stop(t)
	store := e.mustStore(followerCfg)
	if _, err := store.pool.Exec(t.Context(), `UPDATE kss_secrets SET ciphertext = ciphertext || '\x00'::bytea WHERE namespace = $1 AND name = 'bad'`, e.ns); err != nil {
		t.Fatal(err)
	}
	before := mustMaxVersion(t, store)

	stdout, stderr, code := runBinary(t, bin, followerCfg.env(), "status", "--diff", "-o", "json")
	var r statusReport
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("status --diff -o json: %v\n%s\n%s", err, stdout, stderr)
	}
	want := secretCounts{InSync: 1, Pending: 3, Rejected: map[string]int{"tampered": 1}, Unmanaged: 1}
	if r.Secrets == nil || !reflect.DeepEqual(*r.Secrets, want) {
		t.Errorf("secrets = %+v; want %+v", r.Secrets, want)
	}
	var diff []string
	for _, d := range r.Diff {
		diff = append(diff, d.Action+" "+d.Name)
	}
	if want := []string{"delete gone", "create new", "update upd"}; !slices.Equal(diff, want) {
		t.Errorf("diff = %q; want %q", diff, want)
	}
	if code != statusAttention || !slices.ContainsFunc(r.Attention, func(a string) bool {
		return strings.Contains(a, "/bad (row version") && strings.Contains(a, "tampered")
	}) ||
		!slices.ContainsFunc(r.Attention, func(a string) bool { return strings.Contains(a, "/taken") && strings.Contains(a, "managed=true label") }) {
		t.Errorf("exit %d, attention %q; want 1, naming bad (tampered) and taken (unmanaged) with what to do", code, r.Attention)
	}
	text, _, _ := runBinary(t, bin, followerCfg.env(), "status", "--diff")
	for _, line := range []string{"secrets:", "1 in sync, 3 pending, 1 rejected (tampered 1), 1 unmanaged, 0 retained", "would change 3 Secrets:", "create " + e.ns + "/new"} {
		if !strings.Contains(text, line) {
			t.Errorf("status --diff lacks %q:\n%s", line, text)
		}
	}
	// It changed nothing.
	if _, err := e.secrets(e.follower).Get(t.Context(), "new", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after status, copy new: %v; want not found", err)
	}
	if v := mustMaxVersion(t, store); v != before {
		t.Errorf("after status, database version %d; want %d", v, before)
	}
}
