package main

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes/fake"
)

// TestRowChanges covers the leader's one decision: which rows a pass
// writes, and which it tombstones, given the labelled Secrets and the
// stored rows.
func TestRowChanges(t *testing.T) {
	oldKey, curKey := strings.Repeat("o", 32), strings.Repeat("c", 32)
	ring := mustKeyring(t, curKey, oldKey)
	old := mustKeyring(t, oldKey)
	now := time.Date(2026, 12, 1, 12, 0, 0, 123, time.FixedZone("CET", 3600))
	const cluster = "cluster-a"

	secret := func(name, value string) *corev1.Secret {
		return &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{"kube-secret-sync": "true"}},
			Data:       map[string][]byte{"k": []byte(value)},
		}
	}
	key := func(name string) ObjectKey { return ObjectKey{"ns", name} }
	hashOfSecret := func(r *Keyring, s *corev1.Secret) []byte { return r.Hash(s.Namespace, s.Name, payloadOf(s)) }
	tombstoneHash := func(r *Keyring, name string) []byte { return r.Hash("ns", name, &Payload{Deleted: true}) }
	row := func(hash []byte, tombstone bool, source string, r *Keyring) RowState {
		return RowState{Hash: hash, Tombstone: tombstone, SourceCluster: source, KeyID: r.ID()}
	}

	v1, v2 := secret("s", "v1"), secret("s", "v2")
	type want struct {
		name    string
		deleted bool
	}
	tests := []struct {
		name    string
		keys    []string
		sources []*corev1.Secret
		stored  map[ObjectKey]RowState
		want    []want
	}{
		{name: "nothing", want: nil},
		{"new Secret, no row", []string{"s"}, []*corev1.Secret{v1}, nil, []want{{"s", false}}},
		{"unchanged Secret", []string{"s"}, []*corev1.Secret{v1},
			map[ObjectKey]RowState{key("s"): row(hashOfSecret(ring, v1), false, cluster, ring)}, nil},
		{"changed Secret", []string{"s"}, []*corev1.Secret{v2},
			map[ObjectKey]RowState{key("s"): row(hashOfSecret(ring, v1), false, cluster, ring)}, []want{{"s", false}}},
		{"unchanged Secret whose row another name wrote: taken over", []string{"s"}, []*corev1.Secret{v1},
			map[ObjectKey]RowState{key("s"): row(hashOfSecret(ring, v1), false, "cluster-b", ring)}, []want{{"s", false}}},
		{"damaged row of an unchanged Secret: rewritten", []string{"s"}, []*corev1.Secret{v1},
			map[ObjectKey]RowState{key("s"): {Hash: hashOfSecret(ring, v1), SourceCluster: cluster, KeyID: ring.ID(), Damaged: true}}, []want{{"s", false}}},
		{"damaged tombstone: rewritten", []string{"s"}, nil,
			map[ObjectKey]RowState{key("s"): {Hash: tombstoneHash(ring, "s"), Tombstone: true, SourceCluster: cluster, KeyID: ring.ID(), Damaged: true}}, []want{{"s", true}}},
		{"Secret back after its tombstone", []string{"s"}, []*corev1.Secret{v1},
			map[ObjectKey]RowState{key("s"): row(tombstoneHash(ring, "s"), true, cluster, ring)}, []want{{"s", false}}},
		{"unchanged Secret, row under the previous key: rewritten", []string{"s"}, []*corev1.Secret{v1},
			map[ObjectKey]RowState{key("s"): row(hashOfSecret(old, v1), false, cluster, old)}, []want{{"s", false}}},
		{"Secret gone: tombstone", []string{"s"}, nil,
			map[ObjectKey]RowState{key("s"): row(hashOfSecret(ring, v1), false, cluster, ring)}, []want{{"s", true}}},
		{"managed copy at the row's version, row of the previous writer: taken over", []string{"s"}, []*corev1.Secret{managedCopy(v1, 7)},
			map[ObjectKey]RowState{key("s"): {Hash: hashOfSecret(ring, v1), SourceCluster: "cluster-b", KeyID: ring.ID(), Version: 7}}, []want{{"s", false}}},
		{"managed copy behind the row of the previous writer: never written over it", []string{"s"}, []*corev1.Secret{managedCopy(v1, 6)},
			map[ObjectKey]RowState{key("s"): {Hash: hashOfSecret(ring, v1), SourceCluster: "cluster-b", KeyID: ring.ID(), Version: 7}}, nil},
		{"Secret gone, row of another leader: not ours to delete", []string{"s"}, nil,
			map[ObjectKey]RowState{key("s"): row(hashOfSecret(ring, v1), false, "cluster-b", ring)}, nil},
		{"Secret gone, already a tombstone", []string{"s"}, nil,
			map[ObjectKey]RowState{key("s"): row(tombstoneHash(ring, "s"), true, cluster, ring)}, nil},
		{"Secret gone, tombstone under the previous key: rewritten", []string{"s"}, nil,
			map[ObjectKey]RowState{key("s"): row(tombstoneHash(old, "s"), true, cluster, old)}, []want{{"s", true}}},
		{"Secret gone, never stored", []string{"s"}, nil, nil, nil},
		{"unchanged large Secret", []string{"big"}, []*corev1.Secret{secret("big", strings.Repeat("x", bigData+1))},
			map[ObjectKey]RowState{key("big"): row(hashOfSecret(ring, secret("big", strings.Repeat("x", bigData+1))), false, cluster, ring)}, nil},
		{"changed large Secret", []string{"big"}, []*corev1.Secret{secret("big", strings.Repeat("y", bigData+1))},
			map[ObjectKey]RowState{key("big"): row(hashOfSecret(ring, secret("big", strings.Repeat("x", bigData+1))), false, cluster, ring)}, []want{{"big", false}}},
		{"keys repeated and unordered: sorted, once each",
			[]string{"c", "a", "b", "a", "c"}, []*corev1.Secret{secret("a", "x"), secret("b", "x"), secret("c", "x")}, nil,
			[]want{{"a", false}, {"b", false}, {"c", false}}},
		{"mixed", []string{"gone", "new", "same"}, []*corev1.Secret{secret("new", "x"), secret("same", "x")},
			map[ObjectKey]RowState{
				key("gone"): row(hashOfSecret(ring, secret("gone", "x")), false, cluster, ring),
				key("same"): row(hashOfSecret(ring, secret("same", "x")), false, cluster, ring),
			},
			[]want{{"gone", true}, {"new", false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sources := map[ObjectKey]*corev1.Secret{}
			for _, s := range tt.sources {
				sources[ObjectKey{s.Namespace, s.Name}] = s
			}
			var keys []ObjectKey
			for _, n := range tt.keys {
				keys = append(keys, key(n))
			}
			source := func(k ObjectKey) *cachedSecret {
				if s := sources[k]; s != nil {
					return slim(s.DeepCopy(), ring, []string{ring.ID()})
				}
				return nil
			}
			got := rowChanges(withSource(slices.Values(keys), source), tt.stored, ring, owner{cluster: cluster}, now)
			var names []want
			for _, c := range got {
				names = append(names, want{c.Name, c.Payload.Deleted})
			}
			if fmt.Sprint(names) != fmt.Sprint(tt.want) {
				t.Fatalf("rowChanges = %v; want %v", names, tt.want)
			}
			for _, c := range got {
				if c.Payload.Deleted {
					// Every tombstone carries the current key's hash of what
					// it writes, so that the next pass finds it unchanged.
					if want := ring.Hash(c.Namespace, c.Name, c.Payload); !bytes.Equal(c.Hash, want) {
						t.Errorf("%s: hash is not the current key's hash of its tombstone", c.ObjectKey)
					}
					if !c.Payload.UpdatedAt.Equal(now) || c.Payload.UpdatedAt.Location() != time.UTC {
						t.Errorf("%s: tombstone UpdatedAt = %v; want now (%v) in UTC", c.ObjectKey, c.Payload.UpdatedAt, now.UTC())
					}
					continue
				}
				// A Secret's payload is read when it is written (fetch);
				// its change carries the hash and size the cache kept.
				s := sources[c.ObjectKey]
				if want := hashOfSecret(ring, s); !c.Stripped || !bytes.Equal(c.Hash, want) || c.Size != ApproxSealedSize(payloadOf(s)) {
					t.Errorf("%s: change Stripped %v, Size %d, hash %x; want it marked for fetching with the Secret's hash and size", c.ObjectKey, c.Stripped, c.Size, c.Hash)
				}
			}
		})
	}
}

// TestRowChangesAfterTakeover: a writer that took the claim over owns the
// rows whose copies its cluster held at takeover, at the version they had
// then: such a copy deleted is tombstoned, but a row changed since is not
// its to delete.
func TestRowChangesAfterTakeover(t *testing.T) {
	ring := mustKeyring(t, configTestKey)
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	gone := func(ObjectKey) *cachedSecret { return nil }
	o := owner{cluster: "cluster-sb", inherited: map[ObjectKey]int64{{"ns", "held"}: 7, {"ns", "changed"}: 7}}
	stored := map[ObjectKey]RowState{
		{"ns", "held"}:    {SourceCluster: "cluster-a", KeyID: ring.ID(), Version: 7},
		{"ns", "changed"}: {SourceCluster: "cluster-a", KeyID: ring.ID(), Version: 8},
		{"ns", "never"}:   {SourceCluster: "cluster-a", KeyID: ring.ID(), Version: 7},
	}
	got := rowChanges(withSource(maps.Keys(stored), gone), stored, ring, o, now)
	if len(got) != 1 || got[0].Name != "held" || !got[0].Payload.Deleted {
		t.Errorf("rowChanges = %v; want only a tombstone for ns/held", got)
	}
}

// TestRowChangesIdempotent: writing what rowChanges returns and asking
// again gives nothing to write, which is what keeps an idle tick free.
func TestRowChangesIdempotent(t *testing.T) {
	ring := mustKeyring(t, configTestKey)
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	sources := map[ObjectKey]*corev1.Secret{
		{"ns", "a"}: {ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a"}, Data: map[string][]byte{"k": []byte("v")}},
	}
	stored := map[ObjectKey]RowState{{"ns", "gone"}: {SourceCluster: "c", KeyID: ring.ID()}}
	keys := []ObjectKey{{"ns", "a"}, {"ns", "gone"}}
	source := func(k ObjectKey) *cachedSecret {
		if s := sources[k]; s != nil {
			return slim(s.DeepCopy(), ring, []string{ring.ID()})
		}
		return nil
	}
	first := rowChanges(withSource(slices.Values(keys), source), stored, ring, owner{cluster: "c"}, now)
	if len(first) != 2 {
		t.Fatalf("first pass: %d changes; want 2", len(first))
	}
	for _, c := range first {
		stored[c.ObjectKey] = RowState{Hash: c.Hash, Tombstone: c.Payload.Deleted, SourceCluster: "c", KeyID: ring.ID()}
	}
	if again := rowChanges(withSource(slices.Values(keys), source), stored, ring, owner{cluster: "c"}, now.Add(time.Hour)); len(again) != 0 {
		t.Errorf("second pass: %d changes; want none", len(again))
	}
}

func TestDeletesAllowed(t *testing.T) {
	tests := []struct {
		deletes, live, percent int
		want                   bool
	}{
		{0, 0, 50, true},
		{1, 1, 50, true}, // the only Secret, deleted on purpose
		{deleteGuardMin, deleteGuardMin, 50, true}, // a few, whatever the share
		{deleteGuardMin + 1, deleteGuardMin + 1, 50, false},
		{50, 100, 50, true},
		{51, 100, 50, false},
		{100, 100, 50, false}, // a selector that matches nothing
		{100, 100, 99, false},
		{100, 100, 100, true}, // the operator allows it
		{11, 1000, 1, false},
		{10000, 100000, 10, true},
	}
	for _, tt := range tests {
		if got := deletesAllowed(tt.deletes, tt.live, tt.percent); got != tt.want {
			t.Errorf("deletesAllowed(%d of %d, %d%%) = %v; want %v", tt.deletes, tt.live, tt.percent, got, tt.want)
		}
	}
}

// bigData is a data size well above a TLS Secret's.
const bigData = 64 << 10

// managedCopy is s as a follower's (or standby's) copy written from
// version.
func managedCopy(s *corev1.Secret, version int64) *corev1.Secret {
	c := s.DeepCopy()
	if c.Labels == nil {
		c.Labels = map[string]string{}
	}
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	c.Labels[managedLabel] = "true"
	c.Annotations[versionAnnotation] = strconv.FormatInt(version, 10)
	return c
}

// TestReadAheadStopsWithItsContext: once the pass's context ends, the
// next chunk's read returns instead of waiting for ever. (The reading
// goroutine used to return on the context without a word, and a writer
// fenced in the middle of a pass hung in it: TestPausedWriterIsFenced saw
// it under load.)
func TestReadAheadStopsWithItsContext(t *testing.T) {
	for range 50 {
		client := fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s", Labels: map[string]string{"kube-secret-sync": "true"}}})
		ring := mustKeyring(t, configTestKey)
		cfg := &Config{selector: labels.SelectorFromSet(labels.Set{"kube-secret-sync": "true"})}
		l := newLeaderLoop(loopDeps{cfg: cfg, keys: ring, client: client, log: quietLog(), metrics: newMetrics()}, Claim{})
		l.sources = &secretCache{cfg: cfg, counts: map[string]int{}}
		chunk := []Change{{ObjectKey: ObjectKey{"ns", "s"}, Stripped: true}}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		reads := l.readAhead(ctx, [][]Change{chunk, chunk, chunk})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 3 {
				if _, err := reads.next(); err != nil {
					return
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("next() still waits 10s after the context ended")
		}
		reads.stop()
	}
}

// TestCompleteHashesOnlyWhatChanged: complete fills each stripped change
// from its live Secret, keeps the cache's hash when the live Secret is
// still at the resourceVersion that was hashed, and otherwise hashes the
// live content, dropping a change whose content turns out to be stored.
func TestCompleteHashesOnlyWhatChanged(t *testing.T) {
	ring := mustKeyring(t, configTestKey)
	l := newLeaderLoop(loopDeps{cfg: &Config{}, keys: ring, log: quietLog(), metrics: newMetrics()}, Claim{})
	payload := func(v string) *Payload { return &Payload{Type: "Opaque", Data: map[string][]byte{"k": []byte(v)}} }
	key := func(name string) ObjectKey { return ObjectKey{"ns", name} }
	cached := []byte("the cache's hash")
	stored := ring.Hash("ns", "back", payload("stored"))
	l.known.set(key("back"), RowState{Hash: stored, Version: 1})
	l.known.set(key("moved"), RowState{Hash: stored, Version: 1})
	chunk := []Change{
		{ObjectKey: key("same"), Hash: cached, HashedAt: "5", Stripped: true},    // still at 5: the cache's hash
		{ObjectKey: key("moved"), Hash: cached, HashedAt: "5", Stripped: true},   // now at 6, new content
		{ObjectKey: key("back"), Hash: cached, HashedAt: "5", Stripped: true},    // now at 6, what is stored
		{ObjectKey: key("unhashed"), Hash: nil, HashedAt: "", Stripped: true},    // no cached hash
		{ObjectKey: key("gone"), Hash: cached, HashedAt: "5", Stripped: true},    // not live any more
		{ObjectKey: key("tomb"), Hash: cached, Payload: &Payload{Deleted: true}}, // not stripped: as it is
	}
	live := map[ObjectKey]liveSecret{
		key("same"):     {payload("same"), "5"},
		key("moved"):    {payload("moved"), "6"},
		key("back"):     {payload("stored"), "6"},
		key("unhashed"): {payload("unhashed"), "5"},
	}
	got := map[string]Change{}
	for _, c := range l.complete(chunk, live) {
		got[c.Name] = c
	}
	want := map[string][]byte{
		"same":     cached,
		"moved":    ring.Hash("ns", "moved", payload("moved")),
		"unhashed": ring.Hash("ns", "unhashed", payload("unhashed")),
		"tomb":     cached,
	}
	if len(got) != len(want) {
		t.Errorf("complete kept %v; want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
	for name, h := range want {
		c, ok := got[name]
		switch {
		case !ok:
			t.Errorf("%s: dropped", name)
		case !bytes.Equal(c.Hash, h):
			t.Errorf("%s: hash %x; want %x", name, c.Hash, h)
		case c.Stripped || c.Payload == nil || live[c.ObjectKey].payload != nil && c.Payload != live[c.ObjectKey].payload:
			t.Errorf("%s: Stripped %v, payload %v; want the live payload", name, c.Stripped, c.Payload)
		}
	}
	if chunk[0].Payload != nil || !chunk[0].Stripped {
		t.Error("complete changed the chunk it was given, which readAhead reads meanwhile")
	}
}

// TestWithLeadChunk: a pass's first transaction is cut to leadChunk rows
// when it holds more than twice that, and no row is lost, repeated or
// reordered.
func TestWithLeadChunk(t *testing.T) {
	for _, sizes := range [][]int{nil, {1}, {2 * leadChunk}, {2*leadChunk + 1}, {writeChunk, writeChunk, 7}, {leadChunk, writeChunk}} {
		var chunks [][]Change
		var all []Change
		for _, n := range sizes {
			chunk := make([]Change, n)
			for i := range chunk {
				chunk[i].Name = fmt.Sprintf("s-%d", len(all))
				all = append(all, chunk[i])
			}
			chunks = append(chunks, chunk)
		}
		got := withLeadChunk(chunks)
		var flat []Change
		for _, c := range got {
			flat = append(flat, c...)
		}
		if !slices.EqualFunc(flat, all, func(a, b Change) bool { return a.ObjectKey == b.ObjectKey }) {
			t.Errorf("%v: rows changed by the split", sizes)
		}
		split := len(sizes) > 0 && sizes[0] > 2*leadChunk
		switch {
		case split && (len(got) != len(sizes)+1 || len(got[0]) != leadChunk):
			t.Errorf("%v: want a first chunk of %d and %d chunks, got %d chunks, the first of %d", sizes, leadChunk, len(sizes)+1, len(got), len(got[0]))
		case !split && len(got) != len(sizes):
			t.Errorf("%v: split into %d chunks, want them as they were", sizes, len(got))
		}
		if split {
			// The head must not share capacity with the rest: an append
			// to it would overwrite the second chunk.
			if cap(got[0]) != leadChunk {
				t.Errorf("%v: first chunk has capacity %d, want %d", sizes, cap(got[0]), leadChunk)
			}
		}
	}
}
