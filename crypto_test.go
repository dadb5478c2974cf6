package main

import (
	"bytes"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	cryptoTestKey  = "0123456789abcdef0123456789abcdef"
	cryptoOtherKey = "fedcba9876543210fedcba9876543210"
)

func mustKeys(tb testing.TB, key string) *Keys {
	tb.Helper()
	k, err := NewKeys(key)
	if err != nil {
		tb.Fatalf("NewKeys: %v", err)
	}
	return k
}

func mustSeal(tb testing.TB, k *Keys, b Binding, p *Payload) []byte {
	tb.Helper()
	ct, err := k.Seal(crand.Reader, b, p)
	if err != nil {
		tb.Fatalf("Seal(%+v): %v", b, err)
	}
	return ct
}

// zeroReader is a deterministic rand for golden outputs.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

type failingReader struct{ err error }

func (r failingReader) Read([]byte) (int, error) { return 0, r.err }

var cryptoTestBinding = Binding{Namespace: "default", Name: "tls", Version: 42, SourceCluster: "leader-eu"}

func cryptoTestPayload() *Payload {
	return &Payload{
		Type: "kubernetes.io/tls",
		Data: map[string][]byte{
			"tls.crt": []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
			"tls.key": {0x00, 0xff, 0x80, 0x7f},
		},
		Labels:      map[string]string{"kube-secret-sync": "true"},
		Annotations: map[string]string{"cert-manager.io/common-name": "example.com"},
		UpdatedAt:   time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.UTC),
	}
}

// diffPayload describes how got differs from want, "" if equal. nil and empty
// maps (and nil and empty data values) are equal, as they are to Kubernetes.
func diffPayload(got, want *Payload) string {
	var d []string
	if got.Deleted != want.Deleted {
		d = append(d, fmt.Sprintf("Deleted %v, want %v", got.Deleted, want.Deleted))
	}
	if got.Type != want.Type {
		d = append(d, fmt.Sprintf("Type %q, want %q", got.Type, want.Type))
	}
	if got.Immutable != want.Immutable {
		d = append(d, fmt.Sprintf("Immutable %v, want %v", got.Immutable, want.Immutable))
	}
	if !maps.EqualFunc(got.Data, want.Data, bytes.Equal) {
		d = append(d, fmt.Sprintf("Data %q, want %q", got.Data, want.Data))
	}
	if !maps.Equal(got.Labels, want.Labels) {
		d = append(d, fmt.Sprintf("Labels %q, want %q", got.Labels, want.Labels))
	}
	if !maps.Equal(got.Annotations, want.Annotations) {
		d = append(d, fmt.Sprintf("Annotations %q, want %q", got.Annotations, want.Annotations))
	}
	if !got.UpdatedAt.Equal(want.UpdatedAt) {
		d = append(d, fmt.Sprintf("UpdatedAt %v, want %v", got.UpdatedAt, want.UpdatedAt))
	}
	return strings.Join(d, "; ")
}

func TestNewKeys(t *testing.T) {
	tests := []struct {
		name string
		key  string
		want error
	}{
		{"empty", "", ErrKeyLength},
		{"31 bytes", cryptoTestKey[:31], ErrKeyLength},
		{"33 bytes", cryptoTestKey + "x", ErrKeyLength},
		{"trailing newline", cryptoTestKey + "\n", ErrKeyLength},
		// 32 characters but 64 bytes: refused, AES-256 takes the bytes.
		{"32 non-ASCII characters", strings.Repeat("é", 32), ErrKeyLength},
		{"32 ASCII characters", cryptoTestKey, nil},
		// 16 characters but 32 bytes: accepted, for compatibility with the
		// original, which used the string's bytes as the AES key.
		{"32 bytes of UTF-8 in 16 characters", strings.Repeat("é", 16), ErrKeyLength},
		{"31 characters in 32 bytes", "é" + strings.Repeat("a", 30), ErrKeyLength},
		{"32 bytes that are not UTF-8", string(bytes.Repeat([]byte{0xff, 0x00}, 16)), ErrKeyLength},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := NewKeys(tt.key)
			if !errors.Is(err, tt.want) {
				t.Fatalf("NewKeys(%d bytes) = %v; want %v", len(tt.key), err, tt.want)
			}
			if err != nil {
				if tt.key != "" && strings.Contains(err.Error(), tt.key) {
					t.Errorf("NewKeys error %q contains the key", err)
				}
				if k != nil {
					t.Errorf("NewKeys(%d bytes) returned keys with an error", len(tt.key))
				}
				return
			}
			if ok, _ := regexp.MatchString(`^[0-9a-f]{16}$`, k.ID()); !ok {
				t.Errorf("ID() = %q; want 16 lowercase hex characters", k.ID())
			}
		})
	}
	t.Run("error names non-ASCII", func(t *testing.T) {
		_, err := NewKeys(strings.Repeat("é", 32))
		if err == nil || !strings.Contains(err.Error(), "ASCII") {
			t.Errorf("NewKeys(32 x é) = %v; want an error that mentions ASCII", err)
		}
	})
	t.Run("id stable and per key", func(t *testing.T) {
		a1, a2, b := mustKeys(t, cryptoTestKey), mustKeys(t, cryptoTestKey), mustKeys(t, cryptoOtherKey)
		if a1.ID() != a2.ID() {
			t.Errorf("ID() = %q then %q for the same key; want equal", a1.ID(), a2.ID())
		}
		if a1.ID() == b.ID() {
			t.Errorf("ID() = %q for two different keys; want different", a1.ID())
		}
	})
}

func TestSealOpenRoundTrip(t *testing.T) {
	k := mustKeys(t, cryptoTestKey)
	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	tests := []struct {
		name string
		p    *Payload
	}{
		{"zero payload", &Payload{}},
		{"full", cryptoTestPayload()},
		{"tombstone", &Payload{Deleted: true, UpdatedAt: time.Unix(1700000000, 1).UTC()}},
		{"empty maps", &Payload{Type: "Opaque", Data: map[string][]byte{}, Labels: map[string]string{}, Annotations: map[string]string{}}},
		{"empty and nil values", &Payload{Data: map[string][]byte{"empty": {}, "nil": nil}, Labels: map[string]string{"": ""}}},
		{"binary value", &Payload{Data: map[string][]byte{"bin": allBytes}}},
		{"immutable", &Payload{Type: "Opaque", Immutable: true, Data: map[string][]byte{"a": []byte("b")}}},
		{"unicode and JSON metacharacters", &Payload{
			Type:        `we"ird\type`,
			Labels:      map[string]string{"k": "ü 日本 \u2028 </script>"},
			Annotations: map[string]string{"a\nb": "{\"json\": [1, 2]}", "z": strings.Repeat("x", 100000)},
		}},
		{"non-UTC time", &Payload{UpdatedAt: time.Date(2024, 2, 29, 23, 59, 59, 999999999, time.FixedZone("x", -7*3600))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct := mustSeal(t, k, cryptoTestBinding, tt.p)
			got, err := k.Open(cryptoTestBinding, k.ID(), ct)
			if err != nil {
				t.Fatalf("Open(Seal(p)) = %v; want nil", err)
			}
			if d := diffPayload(got, tt.p); d != "" {
				t.Errorf("Open(Seal(p)) differs: %s", d)
			}
			if !bytes.Equal(k.Hash("default", "tls", got), k.Hash("default", "tls", tt.p)) {
				t.Errorf("Hash(Open(Seal(p))) != Hash(p)")
			}
		})
	}
}

func TestSealDeterministic(t *testing.T) {
	k := mustKeys(t, cryptoTestKey)
	seed := bytes.Repeat([]byte{7}, 64)
	ct1, err1 := k.Seal(bytes.NewReader(seed), cryptoTestBinding, cryptoTestPayload())
	ct2, err2 := k.Seal(bytes.NewReader(seed), cryptoTestBinding, cryptoTestPayload())
	if err1 != nil || err2 != nil {
		t.Fatalf("Seal = %v, %v; want nil", err1, err2)
	}
	if !bytes.Equal(ct1, ct2) {
		t.Errorf("Seal with the same rand = %x and %x; want equal", ct1, ct2)
	}
	if !bytes.Equal(ct1[1:1+nonceSize], seed[:nonceSize]) {
		t.Errorf("nonce = %x; want the first %d bytes of rand %x", ct1[1:1+nonceSize], nonceSize, seed[:nonceSize])
	}
}

func TestSealFreshNonce(t *testing.T) {
	k := mustKeys(t, cryptoTestKey)
	ct1 := mustSeal(t, k, cryptoTestBinding, cryptoTestPayload())
	ct2 := mustSeal(t, k, cryptoTestBinding, cryptoTestPayload())
	if bytes.Equal(ct1[1:1+nonceSize], ct2[1:1+nonceSize]) {
		t.Errorf("two Seals used nonce %x; want distinct", ct1[1:1+nonceSize])
	}
	if bytes.Equal(ct1[1+nonceSize:], ct2[1+nonceSize:]) {
		t.Errorf("two Seals of the same payload gave the same ciphertext")
	}
}

func TestSealErrors(t *testing.T) {
	k := mustKeys(t, cryptoTestKey)
	errRand := errors.New("rand broke")
	big := &Payload{Data: map[string][]byte{"big": make([]byte, 3<<20)}} // base64 → 4 MiB
	tests := []struct {
		name string
		rand io.Reader
		p    *Payload
		want error
	}{
		{"nil payload", crand.Reader, nil, ErrInvalidPayload},
		{"invalid UTF-8 type", crand.Reader, &Payload{Type: "a\xffb"}, ErrInvalidPayload},
		{"invalid UTF-8 data key", crand.Reader, &Payload{Data: map[string][]byte{"\xc3": nil}}, ErrInvalidPayload},
		{"invalid UTF-8 label key", crand.Reader, &Payload{Labels: map[string]string{"\xc3": "v"}}, ErrInvalidPayload},
		{"invalid UTF-8 label value", crand.Reader, &Payload{Labels: map[string]string{"k": "\xc3"}}, ErrInvalidPayload},
		{"invalid UTF-8 annotation key", crand.Reader, &Payload{Annotations: map[string]string{"\xed\xa0\x80": "v"}}, ErrInvalidPayload},
		{"invalid UTF-8 annotation value", crand.Reader, &Payload{Annotations: map[string]string{"k": "\x80"}}, ErrInvalidPayload},
		{"too large", crand.Reader, big, ErrTooLarge},
		{"rand fails", failingReader{errRand}, cryptoTestPayload(), errRand},
		{"rand short", bytes.NewReader(make([]byte, nonceSize-1)), cryptoTestPayload(), io.ErrUnexpectedEOF},
		{"rand empty", bytes.NewReader(nil), cryptoTestPayload(), io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ct, err := k.Seal(tt.rand, cryptoTestBinding, tt.p)
			if !errors.Is(err, tt.want) {
				t.Errorf("Seal(...) = %v; want %v", err, tt.want)
			}
			if ct != nil {
				t.Errorf("Seal(...) returned %d bytes with an error", len(ct))
			}
		})
	}
	t.Run("largest accepted", func(t *testing.T) {
		// JSON `{"data":{"k":"<base64>"},"updatedAt":"0001-01-01T00:00:00Z"}`
		overhead := len(`{"data":{"k":""},"updatedAt":"0001-01-01T00:00:00Z"}`) + minCiphertextSize
		n := (MaxCiphertextSize - overhead) / 4 * 3
		p := &Payload{Data: map[string][]byte{"k": make([]byte, n)}}
		ct, err := k.Seal(crand.Reader, cryptoTestBinding, p)
		if err != nil {
			t.Fatalf("Seal(%d-byte value) = %v; want nil", n, err)
		}
		if len(ct) > MaxCiphertextSize {
			t.Fatalf("Seal produced %d bytes; want at most %d", len(ct), MaxCiphertextSize)
		}
		if _, err := k.Open(cryptoTestBinding, k.ID(), ct); err != nil {
			t.Errorf("Open(largest Seal) = %v; want nil", err)
		}
	})
}

func TestOpenTampered(t *testing.T) {
	k := mustKeys(t, cryptoTestKey)
	ct := mustSeal(t, k, cryptoTestBinding, &Payload{Type: "Opaque", Data: map[string][]byte{"k": []byte("v")}})
	for i := range ct {
		for bit := range 8 {
			t.Run(fmt.Sprintf("byte %d bit %d", i, bit), func(t *testing.T) {
				bad := slices.Clone(ct)
				bad[i] ^= 1 << bit
				want := ErrAuth
				if i == 0 {
					want = ErrUnsupportedFormat
				}
				if _, err := k.Open(cryptoTestBinding, k.ID(), bad); !errors.Is(err, want) {
					t.Errorf("Open(ct with byte %d bit %d flipped) = %v; want %v", i, bit, err, want)
				}
			})
		}
	}
	t.Run("appended byte", func(t *testing.T) {
		if _, err := k.Open(cryptoTestBinding, k.ID(), append(slices.Clone(ct), 0)); !errors.Is(err, ErrAuth) {
			t.Errorf("Open(ct || 0) = %v; want %v", err, ErrAuth)
		}
	})
	t.Run("ciphertext from another row", func(t *testing.T) {
		b2 := cryptoTestBinding
		b2.Version++
		other := mustSeal(t, k, b2, &Payload{Deleted: true})
		// Splice the other row's body behind this row's nonce.
		spliced := append(slices.Clone(ct[:1+nonceSize]), other[1+nonceSize:]...)
		if _, err := k.Open(cryptoTestBinding, k.ID(), spliced); !errors.Is(err, ErrAuth) {
			t.Errorf("Open(spliced) = %v; want %v", err, ErrAuth)
		}
	})
}

func TestOpenWrongKey(t *testing.T) {
	ours, theirs := mustKeys(t, cryptoTestKey), mustKeys(t, cryptoOtherKey)
	ct := mustSeal(t, theirs, cryptoTestBinding, cryptoTestPayload())
	tests := []struct {
		name  string
		keyID string
		want  error
	}{
		{"their key id", theirs.ID(), ErrWrongKey},
		{"forged key id", ours.ID(), ErrAuth},
		{"empty key id", "", ErrWrongKey},
		{"upper-case key id", strings.ToUpper(ours.ID()), ErrWrongKey},
		{"long key id", strings.Repeat("x", 1000), ErrWrongKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ours.Open(cryptoTestBinding, tt.keyID, ct); !errors.Is(err, tt.want) {
				t.Errorf("Open(row of another key, %q) = %v; want %v", tt.keyID, err, tt.want)
			}
		})
	}
	t.Run("key id checked first", func(t *testing.T) {
		for _, ct := range [][]byte{nil, {9}, make([]byte, MaxCiphertextSize+1)} {
			if _, err := ours.Open(cryptoTestBinding, theirs.ID(), ct); !errors.Is(err, ErrWrongKey) {
				t.Errorf("Open(%d bytes, their key id) = %v; want %v", len(ct), err, ErrWrongKey)
			}
		}
	})
}

func TestOpenWrongBinding(t *testing.T) {
	k := mustKeys(t, cryptoTestKey)
	b := Binding{Namespace: "ab", Name: "c", Version: 7, SourceCluster: "east"}
	ct := mustSeal(t, k, b, cryptoTestPayload())
	tests := []struct {
		name string
		edit func(*Binding)
	}{
		{"namespace", func(b *Binding) { b.Namespace = "other" }},
		{"name", func(b *Binding) { b.Name = "other" }},
		{"version rolled back", func(b *Binding) { b.Version-- }},
		{"version replayed forward", func(b *Binding) { b.Version++ }},
		{"version negated", func(b *Binding) { b.Version = -b.Version }},
		{"source cluster", func(b *Binding) { b.SourceCluster = "west" }},
		{"source cluster empty", func(b *Binding) { b.SourceCluster = "" }},
		{"namespace/name boundary", func(b *Binding) { b.Namespace, b.Name = "a", "bc" }},
		{"name/cluster boundary", func(b *Binding) { b.Name, b.SourceCluster = "ce", "ast" }},
		{"namespace and name swapped", func(b *Binding) { b.Namespace, b.Name = b.Name, b.Namespace }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wrong := b
			tt.edit(&wrong)
			if _, err := k.Open(wrong, k.ID(), ct); !errors.Is(err, ErrAuth) {
				t.Errorf("Open(%+v) of a row sealed for %+v = %v; want %v", wrong, b, err, ErrAuth)
			}
		})
	}
	if _, err := k.Open(b, k.ID(), ct); err != nil {
		t.Errorf("Open(%+v) = %v; want nil", b, err)
	}
}

func TestOpenMalformed(t *testing.T) {
	k := mustKeys(t, cryptoTestKey)
	ct := mustSeal(t, k, cryptoTestBinding, &Payload{})
	for n := range minCiphertextSize {
		t.Run(fmt.Sprintf("truncated to %d", n), func(t *testing.T) {
			if _, err := k.Open(cryptoTestBinding, k.ID(), ct[:n]); !errors.Is(err, ErrTruncated) {
				t.Errorf("Open(%d bytes) = %v; want %v", n, err, ErrTruncated)
			}
		})
	}
	t.Run("truncated nil", func(t *testing.T) {
		if _, err := k.Open(cryptoTestBinding, k.ID(), nil); !errors.Is(err, ErrTruncated) {
			t.Errorf("Open(nil) = %v; want %v", err, ErrTruncated)
		}
	})
	t.Run("bare minimum", func(t *testing.T) {
		// Well-formed length but not a valid tag.
		if _, err := k.Open(cryptoTestBinding, k.ID(), ct[:minCiphertextSize]); !errors.Is(err, ErrAuth) {
			t.Errorf("Open(%d bytes) = %v; want %v", minCiphertextSize, err, ErrAuth)
		}
	})
	for _, f := range []byte{0, 2, 0x7b /* '{' */, 0xff} {
		t.Run(fmt.Sprintf("format %d", f), func(t *testing.T) {
			bad := slices.Clone(ct)
			bad[0] = f
			if _, err := k.Open(cryptoTestBinding, k.ID(), bad); !errors.Is(err, ErrUnsupportedFormat) {
				t.Errorf("Open(format %d) = %v; want %v", f, err, ErrUnsupportedFormat)
			}
			if _, err := k.Open(cryptoTestBinding, k.ID(), bad[:1]); !errors.Is(err, ErrUnsupportedFormat) {
				t.Errorf("Open(format %d, 1 byte) = %v; want %v", f, err, ErrUnsupportedFormat)
			}
		})
	}
	t.Run("too large", func(t *testing.T) {
		big := make([]byte, MaxCiphertextSize+1)
		big[0] = formatV1
		if _, err := k.Open(cryptoTestBinding, k.ID(), big); !errors.Is(err, ErrTooLarge) {
			t.Errorf("Open(%d bytes) = %v; want %v", len(big), err, ErrTooLarge)
		}
		big[0] = 0xff // size is checked before format
		if _, err := k.Open(cryptoTestBinding, k.ID(), big); !errors.Is(err, ErrTooLarge) {
			t.Errorf("Open(%d bytes, format 0xff) = %v; want %v", len(big), err, ErrTooLarge)
		}
	})
	t.Run("authenticated but not JSON", func(t *testing.T) {
		bad := refSeal(t, cryptoTestKey, cryptoTestBinding, []byte("not json"))
		_, err := k.Open(cryptoTestBinding, k.ID(), bad)
		if err == nil || errors.Is(err, ErrAuth) {
			t.Errorf("Open(sealed non-JSON) = %v; want a decode error", err)
		}
	})
}

// TestKeysConcurrent is meant for -race: one Keys shared by many goroutines.
func TestKeysConcurrent(t *testing.T) {
	k := mustKeys(t, cryptoTestKey)
	p := tlsPayload()
	wantHash := k.Hash("ns", "n", p)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			b := cryptoTestBinding
			b.Version = int64(g)
			for range 50 {
				ct, err := k.Seal(crand.Reader, b, p)
				if err != nil {
					t.Errorf("Seal = %v", err)
					return
				}
				if _, err := k.Open(b, k.ID(), ct); err != nil {
					t.Errorf("Open = %v", err)
					return
				}
				if h := k.Hash("ns", "n", p); !bytes.Equal(h, wantHash) {
					t.Errorf("Hash = %x; want %x", h, wantHash)
					return
				}
			}
		})
	}
	wg.Wait()
}
