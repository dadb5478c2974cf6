package main

import (
	"errors"
	"strings"
	"testing"
)

func TestVerifyRow(t *testing.T) {
	ring := mustKeyring(t, configTestKey, strings.Repeat("o", 32))
	old := mustKeyring(t, strings.Repeat("o", 32))
	key := ObjectKey{"web", "tls"}
	edit := func(f func(r *Row)) *Row {
		r := sealedRow(t, ring, key, 7, applyTestPayload())
		f(r)
		return r
	}
	other := sealedRow(t, ring, ObjectKey{"web", "other"}, 7, &Payload{Data: map[string][]byte{"k": []byte("v")}})
	tests := []struct {
		name string
		row  *Row
		want error
	}{
		{"as written", edit(func(*Row) {}), nil},
		{"as written under the previous key", sealedRow(t, old, key, 7, applyTestPayload()), nil},
		{"tombstone as written", sealedRow(t, ring, key, 8, &Payload{Deleted: true}), nil},
		{"hash column of another content", edit(func(r *Row) { r.Hash = other.Hash }), ErrAuth},
		{"hash column emptied", edit(func(r *Row) { r.Hash = nil }), ErrAuth},
		{"ciphertext flipped", edit(func(r *Row) { r.Ciphertext[20] ^= 1 }), ErrAuth},
		{"version changed", edit(func(r *Row) { r.Version = 1 << 40 }), ErrAuth},
		{"source cluster changed", edit(func(r *Row) { r.SourceCluster = "x" }), ErrAuth},
		{"tombstone column flipped", edit(func(r *Row) { r.Tombstone = true }), ErrAuth},
		{"key id changed", edit(func(r *Row) { r.KeyID = "ffffffffffffffff" }), ErrWrongKey},
		{"truncated", edit(func(r *Row) { r.Ciphertext = r.Ciphertext[:3] }), ErrTruncated},
	}
	for _, tt := range tests {
		err := verifyRow(ring, tt.row)
		if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("verifyRow(%s) = %v; want %v", tt.name, err, tt.want)
		}
	}
}
