package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// sealedRow is a row as a leader with ring writes it for p at version.
func sealedRow(tb testing.TB, ring *Keyring, key ObjectKey, version int64, p *Payload) *Row {
	tb.Helper()
	r := &Row{ObjectKey: key, KeyID: ring.ID(), Hash: ring.Hash(key.Namespace, key.Name, p), Tombstone: p.Deleted, Version: version, SourceCluster: "cluster-a"}
	ct, err := ring.Seal(rand.Reader, r.Binding(), p)
	if err != nil {
		tb.Fatal(err)
	}
	r.Ciphertext = ct
	return r
}

func applyTestPayload() *Payload {
	return &Payload{
		Type:        string(corev1.SecretTypeTLS),
		Data:        map[string][]byte{"tls.crt": []byte("crt"), "tls.key": []byte("key")},
		Labels:      map[string]string{"app": "web"},
		Annotations: map[string]string{"cert-manager.io/common-name": "example.com"},
		UpdatedAt:   time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC),
	}
}

// TestInSync: the full pass decrypts a row only when its copy is not
// already what the row says.
func TestInSync(t *testing.T) {
	oldKey, curKey := strings.Repeat("o", 32), strings.Repeat("c", 32)
	ring := mustKeyring(t, curKey, oldKey)
	old := mustKeyring(t, oldKey)
	key := ObjectKey{"web", "tls"}
	p := applyTestPayload()
	row := sealedRow(t, ring, key, 7, p)
	oldRow := sealedRow(t, old, key, 7, p)
	tombstone := sealedRow(t, ring, key, 8, &Payload{Deleted: true})
	copyOf := func(r *Row) *corev1.Secret { return desiredCopy(key, p, r.Version, r.SourceCluster) }
	edited := copyOf(row)
	edited.Data = map[string][]byte{"tls.crt": []byte("edited by hand"), "tls.key": []byte("key")}
	relabelled := copyOf(row)
	relabelled.Labels["extra"] = "added by hand"
	unversioned := copyOf(row)
	delete(unversioned.Annotations, versionAnnotation)
	unknownKey := *row
	unknownKey.KeyID = "0000000000000000"

	tests := []struct {
		name     string
		row      *Row
		existing *corev1.Secret
		want     bool
	}{
		{"tombstone, no copy", tombstone, nil, true},
		{"row, no copy", row, nil, false},
		{"tombstone, copy still there", tombstone, copyOf(row), false},
		{"copy written from this version", row, copyOf(row), true},
		{"copy written from an older version", row, copyOf(sealedRow(t, ring, key, 6, p)), false},
		{"copy written from a newer version of the same content", row, copyOf(sealedRow(t, ring, key, 9, p)), true},
		{"copy written from a newer version of other content", row, func() *corev1.Secret {
			c := copyOf(sealedRow(t, ring, key, 9, p))
			c.Data = map[string][]byte{"tls.crt": []byte("newer"), "tls.key": []byte("key")}
			return c
		}(), false},
		{"copy without a version", row, unversioned, false},
		{"copy's data edited by hand", row, edited, false},
		{"copy's labels edited by hand", row, relabelled, false},
		{"row under the previous key, copy from it", oldRow, copyOf(oldRow), true},
		{"row under a key not in the ring", &unknownKey, copyOf(row), false},
	}
	for _, tt := range tests {
		var cached *cachedSecret
		if tt.existing != nil {
			cached = slim(tt.existing.DeepCopy(), ring, ring.IDs())
		}
		if got := inSync(tt.row, cached); got != tt.want {
			t.Errorf("inSync(%s) = %v; want %v", tt.name, got, tt.want)
		}
	}
}

// TestOpenRowAndRejectReason: what a follower does with a row it cannot
// trust, and the reason it reports (metric label and Event).
func TestOpenRowAndRejectReason(t *testing.T) {
	ring := mustKeyring(t, configTestKey)
	key := ObjectKey{"web", "tls"}
	p := applyTestPayload()
	edit := func(f func(r *Row)) *Row {
		r := sealedRow(t, ring, key, 7, p)
		f(r)
		return r
	}
	tests := []struct {
		name   string
		row    *Row
		err    error // nil: opens
		reason string
	}{
		{"intact", edit(func(*Row) {}), nil, ""},
		{"intact tombstone", sealedRow(t, ring, key, 8, &Payload{Deleted: true}), nil, ""},
		{"tombstone column set on a Secret's row", edit(func(r *Row) { r.Tombstone = true }), ErrAuth, "tampered"},
		{"tombstone column cleared on a tombstone", func() *Row {
			r := sealedRow(t, ring, key, 8, &Payload{Deleted: true})
			r.Tombstone = false
			return r
		}(), ErrAuth, "tampered"},
		{"ciphertext byte flipped", edit(func(r *Row) { r.Ciphertext[len(r.Ciphertext)-1] ^= 1 }), ErrAuth, "tampered"},
		{"version raised", edit(func(r *Row) { r.Version++ }), ErrAuth, "tampered"},
		{"moved to another name", edit(func(r *Row) { r.Name = "other" }), ErrAuth, "tampered"},
		{"source cluster changed", edit(func(r *Row) { r.SourceCluster = "cluster-b" }), ErrAuth, "tampered"},
		{"key id not in the ring", edit(func(r *Row) { r.KeyID = "0000000000000000" }), ErrWrongKey, "wrong_key"},
		{"truncated", edit(func(r *Row) { r.Ciphertext = r.Ciphertext[:10] }), ErrTruncated, "invalid"},
		{"empty", edit(func(r *Row) { r.Ciphertext = nil }), ErrTruncated, "invalid"},
		{"unknown format", edit(func(r *Row) { r.Ciphertext[0] = 2 }), ErrUnsupportedFormat, "invalid"},
		{"too large", edit(func(r *Row) { r.Ciphertext = make([]byte, MaxCiphertextSize+1) }), ErrTooLarge, "invalid"},
	}
	for _, tt := range tests {
		got, err := openRow(ring, tt.row)
		if tt.err == nil {
			want := p.Data["tls.crt"]
			if tt.row.Tombstone {
				want = nil
			}
			if err != nil {
				t.Errorf("openRow(%s) error = %v; want nil", tt.name, err)
			} else if got.Deleted != tt.row.Tombstone || !bytes.Equal(got.Data["tls.crt"], want) {
				t.Errorf("openRow(%s) = %+v; want the sealed payload", tt.name, got)
			}
			continue
		}
		if !errors.Is(err, tt.err) {
			t.Errorf("openRow(%s) error = %v; want %v", tt.name, err, tt.err)
		}
		if got != nil {
			t.Errorf("openRow(%s) returned a payload with error %v", tt.name, err)
		}
		if r := rejectReason(err); r != tt.reason {
			t.Errorf("rejectReason(openRow(%s)) = %q; want %q", tt.name, r, tt.reason)
		}
	}
}

// TestSettled: a settled row version is skipped by full passes until the
// row changes; a conflict only until a managed copy appears or its
// unmanaged Secret changes.
func TestSettled(t *testing.T) {
	a := &rowApplier{settled: map[ObjectKey]settlement{}, conflicts: newConflictWatches(fake.NewClientset())}
	a.conflicts.start(t.Context())
	key := ObjectKey{"web", "tls"}
	v5, v6 := &Row{ObjectKey: key, Version: 5}, &Row{ObjectKey: key, Version: 6}
	copyOf := &cachedSecret{managed: true}

	if a.isSettled(v5, nil) {
		t.Fatal("a row never settled is settled")
	}
	a.settle(v5, false)
	if !a.isSettled(v5, nil) || !a.isSettled(v5, copyOf) {
		t.Error("a settled version is not skipped")
	}
	a.unsettleConflict(key)
	if !a.isSettled(v5, nil) {
		t.Error("a change of an unmanaged Secret ended a settlement that is no conflict")
	}
	if a.isSettled(v6, nil) {
		t.Error("a new version of a settled row is skipped")
	}
	if a.isSettled(v5, nil) {
		t.Error("the old version is still settled after a new one was seen")
	}

	a.settle(v5, true)
	if !a.isSettled(v5, nil) || !a.isSettled(v5, nil) {
		t.Error("a conflict is not settled")
	}
	if a.conflicts.watched() != 1 {
		t.Errorf("%d names watched; want the conflict's", a.conflicts.watched())
	}
	if !a.isSettled(v5, &cachedSecret{}) {
		t.Error("a conflict is not settled while its unmanaged Secret (a standby caches them) stays")
	}
	if a.isSettled(v5, copyOf) {
		t.Error("a conflict is still settled although a managed copy appeared")
	}
	a.settle(v5, true)
	a.unsettleConflict(key)
	if a.isSettled(v5, nil) {
		t.Error("a conflict is still settled after its unmanaged Secret changed")
	}
	a.conflicts.stop(key)
	if a.conflicts.watched() != 0 {
		t.Errorf("%d names watched after stop", a.conflicts.watched())
	}
}

// TestStreamRows: rows of later batches are applied while earlier ones
// are (no pause between batches); each batch's done runs once it and every
// earlier batch are applied, in order; two rows of one Secret are applied
// one after the other, in the order they came.
func TestStreamRows(t *testing.T) {
	const workers = 4
	var mu sync.Mutex
	applied := map[*Row]bool{}
	var order []int64 // versions of "same", in the order applied
	inFlight, most := 0, 0
	gate := make(chan struct{})
	apply := func(r *Row) {
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		mu.Unlock()
		if r.Name == "slow" {
			<-gate // held until the later batches are applied
		}
		mu.Lock()
		inFlight--
		applied[r] = true
		if r.Name == "same" {
			order = append(order, r.Version)
		}
		mu.Unlock()
	}
	row := func(name string, version int64) *Row {
		return &Row{ObjectKey: ObjectKey{"ns", name}, Version: version, Ciphertext: []byte("ct")}
	}
	var done []int
	batch := func(i int, rows ...*Row) applyBatch {
		return applyBatch{rows: rows, done: func() {
			mu.Lock()
			defer mu.Unlock()
			for _, r := range rows {
				if !applied[r] {
					t.Errorf("batch %d done before its row %s was applied", i, r.Name)
				}
			}
			done = append(done, i)
		}}
	}
	slow := row("slow", 1)
	later := []*Row{row("a", 2), row("same", 3), row("b", 4), row("same", 5), row("c", 6)}
	batches := make(chan applyBatch, 4)
	batches <- batch(0, slow, row("x", 1))
	batches <- batch(1, later[:3]...)
	batches <- batch(2)
	batches <- batch(3, later[3:]...)
	close(batches)
	finished := make(chan struct{})
	go func() { streamRows(workers, batches, apply); close(finished) }()

	eventually(t, 5*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range later {
			if !applied[r] {
				return fmt.Errorf("%s (v%d) not applied while an earlier batch's slow row is", r.Name, r.Version)
			}
		}
		if len(done) != 0 {
			return fmt.Errorf("done ran for batches %v before batch 0 was applied", done)
		}
		return nil
	})
	close(gate)
	<-finished
	if fmt.Sprint(done) != "[0 1 2 3]" {
		t.Errorf("done ran for batches %v; want [0 1 2 3]", done)
	}
	if fmt.Sprint(order) != "[3 5]" {
		t.Errorf("rows of one Secret applied in version order %v; want [3 5]", order)
	}
	if most > workers {
		t.Errorf("%d rows applied at once; want at most %d", most, workers)
	}
	for r := range applied {
		if r.Ciphertext != nil {
			t.Errorf("%s: ciphertext kept after it was applied", r.Name)
		}
	}
}
