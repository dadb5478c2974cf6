package main

// A second implementation of the wire format, written from crypto.go's
// documentation, pins the format between releases.

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// refAssociatedData re-implements the documented associated data layout
// independently of crypto.go, so an accidental change to the wire format
// fails here.
func refAssociatedData(b Binding, keyID string) []byte {
	var buf bytes.Buffer
	lp := func(s string) {
		binary.Write(&buf, binary.BigEndian, uint64(len(s)))
		buf.WriteString(s)
	}
	lp("kube-secret-sync row v1")
	buf.WriteByte(1)
	lp(b.Namespace)
	lp(b.Name)
	lp(keyID)
	binary.Write(&buf, binary.BigEndian, b.Version)
	lp(b.SourceCluster)
	return buf.Bytes()
}

func refSubkey(tb testing.TB, key, info string, n int) []byte {
	tb.Helper()
	sub, err := hkdf.Key(sha256.New, []byte(key), nil, info, n)
	if err != nil {
		tb.Fatal(err)
	}
	return sub
}

func refAEAD(tb testing.TB, key string) cipher.AEAD {
	tb.Helper()
	block, err := aes.NewCipher(refSubkey(tb, key, "kube-secret-sync v1 aes-256-gcm", 32))
	if err != nil {
		tb.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		tb.Fatal(err)
	}
	return aead
}

// refSeal seals arbitrary plaintext following the documented format.
func refSeal(tb testing.TB, key string, b Binding, plaintext []byte) []byte {
	tb.Helper()
	keyID := hex.EncodeToString(refSubkey(tb, key, "kube-secret-sync v1 key-id", 8))
	nonce := make([]byte, 12) // fixed: tests only, and the fuzz seeds must be deterministic
	out := append([]byte{1}, nonce...)
	return refAEAD(tb, key).Seal(out, nonce, plaintext, refAssociatedData(b, keyID))
}

// refHash re-implements the documented Hash encoding.
func refHash(tb testing.TB, key, namespace, name string, p *Payload) []byte {
	tb.Helper()
	var buf bytes.Buffer
	u64 := func(v int) { binary.Write(&buf, binary.BigEndian, uint64(v)) }
	lp := func(s string) { u64(len(s)); buf.WriteString(s) }
	flag := func(v bool) {
		if v {
			buf.WriteByte(1)
		} else {
			buf.WriteByte(0)
		}
	}
	lp("kube-secret-sync hash v1")
	lp(namespace)
	lp(name)
	flag(p.Deleted)
	lp(p.Type)
	flag(p.Immutable)
	u64(len(p.Data))
	for _, k := range slices.Sorted(maps.Keys(p.Data)) {
		lp(k)
		lp(string(p.Data[k]))
	}
	for _, m := range []map[string]string{p.Labels, p.Annotations} {
		u64(len(m))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			lp(k)
			lp(m[k])
		}
	}
	mac := hmac.New(sha256.New, refSubkey(tb, key, "kube-secret-sync v1 hmac-sha256", 32))
	mac.Write(buf.Bytes())
	return mac.Sum(nil)
}

func TestWireFormat(t *testing.T) {
	k := mustKeys(t, cryptoTestKey)
	p := cryptoTestPayload()

	t.Run("key id", func(t *testing.T) {
		want := hex.EncodeToString(refSubkey(t, cryptoTestKey, "kube-secret-sync v1 key-id", 8))
		if k.ID() != want {
			t.Errorf("ID() = %q; want %q", k.ID(), want)
		}
	})
	t.Run("reference open", func(t *testing.T) {
		ct := mustSeal(t, k, cryptoTestBinding, p)
		if ct[0] != 1 {
			t.Fatalf("format byte = %d; want 1", ct[0])
		}
		pt, err := refAEAD(t, cryptoTestKey).Open(nil, ct[1:13], ct[13:], refAssociatedData(cryptoTestBinding, k.ID()))
		if err != nil {
			t.Fatalf("reference Open = %v; want nil", err)
		}
		const want = `{"type":"kubernetes.io/tls","data":{"tls.crt":"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=","tls.key":"AP+Afw=="},"labels":{"kube-secret-sync":"true"},"annotations":{"cert-manager.io/common-name":"example.com"},"updatedAt":"2025-03-04T05:06:07.123456789Z"}`
		if string(pt) != want {
			t.Errorf("plaintext = %s; want %s", pt, want)
		}
	})
	t.Run("reference seal", func(t *testing.T) {
		ct := refSeal(t, cryptoTestKey, cryptoTestBinding, []byte(`{"deleted":true,"type":"Opaque","updatedAt":"2025-01-01T00:00:00Z"}`))
		got, err := k.Open(cryptoTestBinding, k.ID(), ct)
		if err != nil {
			t.Fatalf("Open(reference ciphertext) = %v; want nil", err)
		}
		want := &Payload{Deleted: true, Type: "Opaque", UpdatedAt: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
		if d := diffPayload(got, want); d != "" {
			t.Errorf("Open(reference ciphertext) differs: %s", d)
		}
	})
	t.Run("reference hash", func(t *testing.T) {
		for _, p := range []*Payload{{}, p, {Deleted: true, Immutable: true, Data: map[string][]byte{"big": bytes.Repeat([]byte("x"), 5000)}, Annotations: map[string]string{"big": strings.Repeat("y", 3000), "z": "1"}}} {
			if got, want := k.Hash("ns", "n", p), refHash(t, cryptoTestKey, "ns", "n", p); !bytes.Equal(got, want) {
				t.Errorf("Hash = %x; want %x", got, want)
			}
		}
	})
	// Golden values pin the format across releases: a leader and a follower
	// built from different commits must agree.
	t.Run("golden", func(t *testing.T) {
		const (
			wantID   = "ae015472db0866b5"
			wantCT   = "010000000000000000000000009ee5cab1259f079e3ebec1027dc5b507b28d9ca011baff48d2e692891a3e580285a762c91538879b1b29267f1db06f9fc4c8f969aad57c081953d23124263f9d35ceed3bd5b8ec15421e0cb612dc201549506e2d5dbc702b"
			wantHash = "bbd1f51b622db7ec280cc78c67abcde597b665a7af89c11eab96bc2b604756a8"
		)
		small := &Payload{Type: "Opaque", Data: map[string][]byte{"k": []byte("v")}, UpdatedAt: time.Unix(0, 0).UTC()}
		ct, err := k.Seal(zeroReader{}, cryptoTestBinding, small)
		if err != nil {
			t.Fatal(err)
		}
		if k.ID() != wantID {
			t.Errorf("ID() = %s; want %s", k.ID(), wantID)
		}
		if got := hex.EncodeToString(ct); got != wantCT {
			t.Errorf("Seal(zero nonce) = %s; want %s", got, wantCT)
		}
		if got := hex.EncodeToString(k.Hash("default", "tls", small)); got != wantHash {
			t.Errorf("Hash = %s; want %s", got, wantHash)
		}
	})
}
