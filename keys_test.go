package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"
)

// Tests of key rotation's building blocks: the keyring, the previous-keys
// list and keygen.

func TestSplitKeys(t *testing.T) {
	a := strings.Repeat("a", 32)
	comma := "key,with,commas-inside-it-is-ok!" // a key may contain commas
	if len(comma) != 32 {
		t.Fatalf("test key is %d bytes", len(comma))
	}
	tests := []struct {
		in   string
		want []string
		err  bool
	}{
		{"", nil, false},
		{a, []string{a}, false},
		{a + "," + comma, []string{a, comma}, false},
		{comma + "," + a + "," + comma, []string{comma, a, comma}, false},
		{a[:31], nil, true},
		{a + ",", nil, true},
		{a + "," + a[:10], nil, true},
		{a + ";" + a, nil, true},
		{a + a, nil, true}, // no separator: refused, not read as two keys
		{"é" + a[:30], nil, true},
	}
	for _, tt := range tests {
		got, err := splitKeys(tt.in)
		if (err != nil) != tt.err {
			t.Errorf("splitKeys(%d bytes) error = %v; want error %v", len(tt.in), err, tt.err)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrKeyLength) {
				t.Errorf("splitKeys(%d bytes) error = %v; want ErrKeyLength", len(tt.in), err)
			}
			if strings.Contains(err.Error(), a[:8]) || strings.Contains(err.Error(), "commas") {
				t.Errorf("splitKeys error %q quotes key material", err)
			}
			continue
		}
		if strings.Join(got, "|") != strings.Join(tt.want, "|") {
			t.Errorf("splitKeys = %q; want %q", got, tt.want)
		}
	}
}

func TestKeyringOpensRowsOfPreviousKeys(t *testing.T) {
	oldKey, newKey, otherKey := strings.Repeat("o", 32), strings.Repeat("n", 32), strings.Repeat("x", 32)
	before := mustKeyring(t, oldKey)
	during := mustKeyring(t, newKey, oldKey)
	after := mustKeyring(t, newKey)
	b := Binding{Namespace: "ns", Name: "tls", Version: 7, SourceCluster: "a"}
	p := &Payload{Type: "Opaque", Data: map[string][]byte{"k": []byte("v")}, UpdatedAt: time.Unix(1, 0).UTC()}

	oldRow, err := before.Seal(rand.Reader, b, p)
	if err != nil {
		t.Fatal(err)
	}
	if during.ID() != after.ID() || during.ID() == before.ID() {
		t.Fatalf("ids: before %s, during %s, after %s; want the current key's", before.ID(), during.ID(), after.ID())
	}
	if got := during.IDs(); len(got) != 2 || got[0] != after.ID() || got[1] != before.ID() {
		t.Errorf("IDs() = %q; want current first, then the previous key", got)
	}
	// During the rotation, a row under the old key opens and hashes with
	// the old key; the current hash is the new key's.
	got, err := during.Open(b, before.ID(), oldRow)
	if err != nil || string(got.Data["k"]) != "v" {
		t.Fatalf("Open(old row) with the old key as previous = %v, %v", got, err)
	}
	h, ok := during.HashFor(before.ID(), b.Namespace, b.Name, p)
	if !ok || !bytes.Equal(h, before.Hash(b.Namespace, b.Name, p)) {
		t.Errorf("HashFor(old id) = %x, %v; want the old key's hash", h, ok)
	}
	if bytes.Equal(during.Hash(b.Namespace, b.Name, p), h) {
		t.Error("Hash is the old key's; want the current key's")
	}
	// A row claiming the previous key's id but sealed under another key
	// fails authentication: the id only selects the key.
	forged, err := mustKeyring(t, otherKey).Seal(rand.Reader, b, p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := during.Open(b, before.ID(), forged); !errors.Is(err, ErrAuth) {
		t.Errorf("Open(row of another key, old id) = %v; want ErrAuth", err)
	}
	// Once the old key is dropped its rows are a wrong key: reported,
	// never opened.
	if _, err := after.Open(b, before.ID(), oldRow); !errors.Is(err, ErrWrongKey) {
		t.Errorf("Open(old row) after the old key is dropped = %v; want ErrWrongKey", err)
	}
	if _, ok := after.HashFor(before.ID(), b.Namespace, b.Name, p); ok {
		t.Error("HashFor(unknown id) ok; want false")
	}
	// A previous key repeated, or equal to the current one, is harmless.
	if r := mustKeyring(t, newKey, newKey, oldKey, oldKey); len(r.IDs()) != 2 {
		t.Errorf("IDs() = %q; want 2", r.IDs())
	}
	if _, err := NewKeyring(newKey, oldKey, oldKey[:31]); err == nil || !strings.Contains(err.Error(), "previous key 2") {
		t.Errorf("NewKeyring(bad second previous key) = %v; want an error naming previous key 2", err)
	}
}

func mustKeyring(t testing.TB, current string, previous ...string) *Keyring {
	t.Helper()
	r, err := NewKeyring(current, previous...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestGenerateKey(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		key, err := generateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := NewKeys(key); err != nil {
			t.Fatalf("generated key is not a valid ENCRYPTION_KEY: %v", err)
		}
		if strings.ContainsAny(key, ",'\"\\/ $") {
			t.Fatalf("generated key has a character that needs quoting: %q", key)
		}
		if seen[key] {
			t.Fatal("generateKey repeated a key")
		}
		seen[key] = true
	}
	// All of it comes from the random source.
	a, _ := generateKey(bytes.NewReader(bytes.Repeat([]byte{1}, keygenBytes)))
	b, _ := generateKey(bytes.NewReader(bytes.Repeat([]byte{2}, keygenBytes)))
	if a == b {
		t.Error("keys from different random bytes are equal")
	}
	if _, err := generateKey(bytes.NewReader(nil)); err == nil {
		t.Error("generateKey with an empty random source succeeded")
	}
}
