package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// rotatedKey replaces testKey in the rotation test.
const rotatedKey = "second-key-for-rotation-test-32b"

// keyedConfig is e.config with the given current and previous keys.
func (e *syncEnv) keyedConfig(leader bool, current string, previous ...string) *Config {
	e.t.Helper()
	c := e.config(leader)
	c.EncryptionKey, c.PreviousKeys = current, strings.Join(previous, ",")
	if err := c.validate(); err != nil {
		e.t.Fatal(err)
	}
	return c
}

// writeRowAs stores a correctly sealed row as another leader cluster would.
func (e *syncEnv) writeRowAs(keys *Keys, cluster, name string, p *Payload) {
	e.t.Helper()
	ctx := e.t.Context()
	conn := e.dbConn()
	r := Row{ObjectKey: ObjectKey{e.ns, name}, KeyID: keys.ID(), SourceCluster: cluster, Hash: keys.Hash(e.ns, name, p)}
	if err := conn.QueryRow(ctx, `UPDATE kss_version SET version = version + 1 WHERE id = 1 RETURNING version`).Scan(&r.Version); err != nil {
		e.t.Fatal(err)
	}
	var err error
	if r.Ciphertext, err = keys.Seal(rand.Reader, r.Binding(), p); err != nil {
		e.t.Fatal(err)
	}
	_, err = conn.Exec(ctx, `INSERT INTO kss_secrets (namespace, name, ciphertext, key_id, hash, tombstone, version, source_cluster) VALUES ($1, $2, $3, $4, $5, false, $6, $7)`,
		r.Namespace, r.Name, r.Ciphertext, r.KeyID, r.Hash, r.Version, r.SourceCluster)
	if err != nil {
		e.t.Fatal(err)
	}
}

// rowsUnder counts the test's rows by key id.
func (e *syncEnv) rowsByKey() map[string]int {
	e.t.Helper()
	rows, err := e.dbConn().Query(e.t.Context(), `SELECT key_id, count(*) FROM kss_secrets GROUP BY key_id`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			e.t.Fatal(err)
		}
		out[id] = n
	}
	return out
}

// copyWatcher checks the follower's copies over and over while a rotation
// runs: every expected copy must exist with the expected data at every
// look, and every gone one must stay gone.
type copyWatcher struct {
	stop   context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	looks  int
	errors []string
}

func (e *syncEnv) watchCopies(want map[string]map[string][]byte, gone []string) *copyWatcher {
	ctx, cancel := context.WithCancel(e.t.Context())
	w := &copyWatcher{stop: cancel, done: make(chan struct{})}
	dst := e.secrets(e.follower)
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			var errs []string
			for name, data := range want {
				s, err := dst.Get(ctx, name, metav1.GetOptions{})
				switch {
				case ctx.Err() != nil:
					return
				case err != nil:
					errs = append(errs, fmt.Sprintf("copy %s: %v", name, err))
				case !maps.EqualFunc(s.Data, data, bytes.Equal):
					errs = append(errs, fmt.Sprintf("copy %s has other data (keys %v)", name, keysOf(s.Data)))
				}
			}
			for _, name := range gone {
				if _, err := dst.Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) && ctx.Err() == nil {
					errs = append(errs, fmt.Sprintf("copy %s came back (err %v)", name, err))
				}
			}
			w.mu.Lock()
			w.looks++
			w.errors = append(w.errors, errs...)
			w.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return w
}

// lookedAgain waits until the watcher has completed a look that started
// after this call, so that every step of the rotation is watched.
func (w *copyWatcher) lookedAgain(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	n := w.looks
	w.mu.Unlock()
	eventually(t, syncTimeout, func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.looks < n+2 {
			return fmt.Errorf("watcher looked %d times; waiting for %d", w.looks, n+2)
		}
		return nil
	})
}

func (w *copyWatcher) finish(t *testing.T) {
	t.Helper()
	w.stop()
	<-w.done
	for i, err := range w.errors {
		if i == 10 {
			t.Errorf("... and %d more", len(w.errors)-10)
			break
		}
		t.Error("during the rotation: " + err)
	}
}

// TestKeyRotationEndToEnd follows the README's zero-downtime procedure on
// two clusters with the follower running throughout: add the new key as a
// previous key everywhere, switch, rotate, drop the old key. Every copy
// stays correct at every moment, and every row ends under the new key,
// including a tombstone and a row written by another leader cluster.
func TestKeyRotationEndToEnd(t *testing.T) {
	e := newSyncEnv(t)
	t.Cleanup(func() {
		if strings.Contains(e.logs.String(), rotatedKey) {
			t.Error("logs contain the rotated key")
		}
	})
	oldKeys, newKeys := mustKeys(t, testKey), mustKeys(t, rotatedKey)
	leader := e.start(e.keyedConfig(true, testKey))
	follower := e.start(e.keyedConfig(false, testKey))
	src := e.secrets(e.leader)
	want := map[string]map[string][]byte{}
	for i := range 5 {
		name := fmt.Sprintf("s-%d", i)
		data := map[string]string{"k": fmt.Sprintf("%s-%d", secretValue, i)}
		mustCreate(t, src, labelled(name, data))
		want[name] = map[string][]byte{"k": []byte(data["k"])}
	}
	mustCreate(t, src, labelled("gone", map[string]string{"k": "v"}))
	e.waitSynced("gone")
	if err := src.Delete(t.Context(), "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("gone")
	// A row of another leader cluster: this leader never rewrites it.
	e.writeRowAs(oldKeys, "cluster-c", "from-c", &Payload{Type: "Opaque", Data: map[string][]byte{"c": []byte("from c")}, UpdatedAt: time.Now().UTC()})
	want["from-c"] = map[string][]byte{"c": []byte("from c")}
	for name := range want {
		if name != "from-c" {
			e.waitSynced(name)
		}
	}
	eventually(t, syncTimeout, func() error {
		_, err := e.secrets(e.follower).Get(t.Context(), "from-c", metav1.GetOptions{})
		return err
	})

	w := e.watchCopies(want, []string{"gone"})
	restart := func(d **daemon, cfg *Config) {
		(*d).stop(t)
		*d = e.start(cfg)
		w.lookedAgain(t)
	}
	// 1. The new key becomes a previous key everywhere.
	restart(&follower, e.keyedConfig(false, testKey, rotatedKey))
	restart(&leader, e.keyedConfig(true, testKey, rotatedKey))
	// 2. Switch, followers first. The leader's first full pass rewrites
	// its own rows, the tombstone included.
	restart(&follower, e.keyedConfig(false, rotatedKey, testKey))
	restart(&leader, e.keyedConfig(true, rotatedKey, testKey))
	eventually(t, syncTimeout, func() error {
		if got := e.rowsByKey(); got[oldKeys.ID()] != 1 || got[newKeys.ID()] != 6 {
			return fmt.Errorf("rows by key id %v; want 6 under the new key and from-c under the old", got)
		}
		return nil
	})
	// 3. Rotate the rest.
	if err := runRotateKey(t.Context(), e.keyedConfig(true, rotatedKey, testKey), e.logger("rotate-key")); err != nil {
		t.Fatalf("rotate-key: %v", err)
	}
	w.lookedAgain(t)
	if got := e.rowsByKey(); len(got) != 1 || got[newKeys.ID()] != 7 {
		t.Fatalf("after rotate-key, rows by key id %v; want all 7 under %s", got, newKeys.ID())
	}
	// The follower applies the rewritten rows (only the version marks
	// change).
	eventually(t, syncTimeout, func() error {
		for name := range want {
			s, err := e.secrets(e.follower).Get(t.Context(), name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if v := e.readRow(name).Version; appliedVersion(s) != v {
				return fmt.Errorf("copy %s applied from version %d; the row is at %d", name, appliedVersion(s), v)
			}
		}
		return nil
	})
	// 4. Drop the old key everywhere; everything still syncs.
	restart(&follower, e.keyedConfig(false, rotatedKey))
	restart(&leader, e.keyedConfig(true, rotatedKey))
	w.finish(t)
	mustModify(t, src, "s-0", func(s *corev1.Secret) { s.Data["k"] = []byte("after rotation") })
	e.waitSynced("s-0")
	n := follower.metric(t, fullOK)
	follower.waitMetric(t, fullOK, n+1)
	for _, reason := range []string{"wrong_key", "tampered", "invalid"} {
		if v := follower.metric(t, `kube_secret_sync_row_errors_total{reason="`+reason+`"}`); v != 0 {
			t.Errorf("follower row errors %s = %v after the rotation; want 0", reason, v)
		}
	}
}

// TestRotateKeyLeavesUnreadableRowsAlone: a row under a key that
// rotate-key was not given is reported and kept, never deleted, and
// rotate-key fails so that the old key is not dropped too early.
func TestRotateKeyLeavesUnreadableRowsAlone(t *testing.T) {
	e := newSyncEnv(t)
	strange := mustKeys(t, "a-key-nobody-gave-to-rotate-key!")
	p := &Payload{Type: "Opaque", Data: map[string][]byte{"k": []byte(secretValue)}, UpdatedAt: time.Now().UTC()}
	store, err := OpenStore(t.Context(), e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := store.Migrate(t.Context(), "test"); err != nil {
		t.Fatal(err)
	}
	e.writeRowAs(strange, "cluster-a", "unknown-key", p)
	e.writeRowAs(mustKeys(t, testKey), "cluster-a", "old-key", p)
	before := e.readRow("unknown-key")

	err = runRotateKey(t.Context(), e.keyedConfig(true, rotatedKey, testKey), e.logger("rotate-key"))
	if err == nil || !strings.Contains(err.Error(), "unknown-key") {
		t.Errorf("rotate-key with an unreadable row = %v; want an error naming it", err)
	}
	if got := e.readRow("old-key"); got.KeyID != mustKeys(t, rotatedKey).ID() {
		t.Errorf("row old-key is under %s; want the current key", got.KeyID)
	}
	after := e.readRow("unknown-key")
	if after.Version != before.Version || !bytes.Equal(after.Ciphertext, before.Ciphertext) || after.KeyID != before.KeyID {
		t.Error("rotate-key changed a row it could not open")
	}
	if !strings.Contains(e.logs.String(), `"reason":"wrong_key"`) {
		t.Error("rotate-key did not report the row under an unknown key")
	}
}
